"""``[metrics]``: the Prometheus endpoint; docs/configuration.md."""

from __future__ import annotations

from pydantic import model_validator

from ztdns.config.base import HostPort, Section, parse_hostport


class MetricsConfig(Section):
    enabled: bool = True
    address: HostPort = "127.0.0.1:9153"
    # HTTPS: the endpoint's certificate and key (relative to the config file); with ``ca``, scrapers must present a
    # client certificate that chains to it.
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @model_validator(mode="after")
    def _tls(self) -> MetricsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (HTTPS for the metrics endpoint)")
        if self.ca is not None and self.cert is None:
            raise ValueError("ca (client certificates) needs cert and key: client certificates need HTTPS")
        return self

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, 9153)
