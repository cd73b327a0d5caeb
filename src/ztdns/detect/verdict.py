"""Verdicts: what a detector concluded about a key, the action it implies, and how it is explained.

A verdict's text is the EDE EXTRA-TEXT the client sees and the ``explain`` line an operator reads::

    detect=tunnel identity=lab domain=ex.com rate=812B/s limit=50B/s until=2026-12-07T15:30:00Z

Every part that came from a client (names, identities) is escaped first (:mod:`ztdns.detect.names`), so a
verdict can be printed into logs, JSON, HTML or a terminal as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Detectors and actions are the only labels of the verdict counter: a handful of values, no client data.
DETECTORS = ("tunnel", "dga", "flood", "ratelimit")
ACTIONS = ("log", "nxdomain", "refuse", "quota", "slip", "drop")


@dataclass(slots=True)
class Verdict:
    detector: str  # one of DETECTORS
    key: str  # escaped, "identity=lab domain=ex.com"
    measured: str  # "812B/s"
    limit: str  # "50B/s"
    until: float  # time.monotonic() deadline
    action: str  # what enforce mode does: one of ACTIONS
    enforced: bool  # False in observe mode: logged and counted only
    details: dict[str, object] = field(default_factory=dict)  # extra figures for the event (escaped strings, numbers)
    logged_at: float = float("-inf")  # when its event was last written (at most one a log interval)
    # The last text made, and the (expiry second, measured value) it was made for: every query meeting the verdict
    # carries its text (EDE, query log), and the expiry moves by whole seconds only.
    made_text: str = field(default="", repr=False, compare=False)
    made_for: tuple[int, str] = field(default=(0, ""), repr=False, compare=False)

    def expiry_text(self, now: float) -> str:
        return _utc_text(int(time.time() + (self.until - now)))

    def text(self, now: float) -> str:
        second = int(time.time() + (self.until - now))
        made_for = (second, self.measured)
        if made_for != self.made_for:
            self.made_text = (
                f"detect={self.detector} {self.key} rate={self.measured} limit={self.limit} until={_utc_text(second)}"
            )
            self.made_for = made_for
        return self.made_text

    def event(self, now: float) -> dict[str, object]:
        """The structured event the observe stage writes (``"event": "detect"``)."""
        return {
            "detector": self.detector,
            "key": self.key,
            "measured": self.measured,
            "limit": self.limit,
            "until": self.expiry_text(now),
            "action": self.action if self.enforced else "log",
            "mode": "enforce" if self.enforced else "observe",
            "text": self.text(now),
            **self.details,
        }


def _utc_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def bytes_rate(value: float) -> str:
    return f"{value:.0f}B/s"


def query_rate(value: float) -> str:
    return f"{value:.0f}q/s"
