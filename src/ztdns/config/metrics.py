"""``[metrics]``: the Prometheus endpoint; docs/configuration.md."""

from __future__ import annotations

from ztdns.config.base import HostPort, Section, parse_hostport


class MetricsConfig(Section):
    enabled: bool = True
    address: HostPort = "127.0.0.1:9153"

    def hostport(self) -> tuple[str, int]:
        return parse_hostport(self.address, 9153)
