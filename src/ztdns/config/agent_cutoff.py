"""``[cutoff]`` of the agent's configuration: the optional detection hook (``ztdns.agent.cutoff``).

Its own module so that the agent's main config model gains one field only; docs/agent.md documents the keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ztdns.config.base import Section

Detector = Literal["tunnel", "dga"]


class CutoffConfig(Section):
    """Cut the host (or workload) off when the protective resolver answers one of its queries with a detection
    verdict about it: every later query is refused by the stub, so no new address opens, until the verdict's
    expiry."""

    enabled: bool = False
    # Verdicts about the asking identity: a tunnel through its queries, DGA names failing for it. Flood and
    # rate-limit verdicts are about a zone or an address prefix, not about this host, and never cut it off.
    detectors: list[Detector] = Field(default_factory=lambda: list[Detector](["tunnel", "dga"]))
    # The longest cut-off one verdict brings, whatever expiry its text states (seconds).
    max_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600.0
