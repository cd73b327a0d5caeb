"""The optional detection hook of the agent: a host whose identity tunnels (or fails DGA names) is cut off.

The protective resolver in ``enforce`` mode answers a query under a detection verdict with an EDE 15/17 whose text
names the verdict (``detect=tunnel identity=lab domain=ex.com rate=812B/s limit=50B/s until=…Z``; see
docs/detect.md). The answer came back over the host's own mTLS connection, so the verdict is about the host (or
the workload whose identity asked). With ``[cutoff] enabled``, the stub then refuses every query of that identity
— EDE 17 whose text names the verdict — without asking upstream, so the tunnel stops at once and no new address
opens, until the verdict's expiry (at most ``max_seconds``). Addresses already open stay open until their grants
expire; established connections go on.

Config: ``[cutoff]`` (:class:`~ztdns.config.agent_cutoff.CutoffConfig`). Client data: none leaves the host; the
log line names the detector and the expiry only.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.message
import dns.rcode

from ztdns.config.agent_cutoff import CutoffConfig
from ztdns.wire.header import error_response

log = logging.getLogger(__name__)

_EDE_FILTERED = 17


@dataclass(slots=True)
class Notice:
    """A detection verdict read from an answer: its detector, the resolver's text, when it ends (wall clock)."""

    detector: str
    text: str
    until: float


def notice_of(text: str, now: float, longest: float) -> Notice | None:
    """The verdict in an EDE text (``detect=… until=YYYY-MM-DDTHH:MM:SSZ``), None for any other text; an
    expiry missing, unreadable or further than ``longest`` seconds away counts as ``longest``."""
    fields = dict(part.partition("=")[::2] for part in text.split(" ") if "=" in part)
    detector = fields.get("detect")
    if not detector:
        return None
    try:
        until = float(calendar.timegm(time.strptime(fields.get("until", ""), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        until = now + longest
    return Notice(detector, text, min(until, now + longest))


class Cutoff:
    """Identities cut off, until when; fed with the blocking EDE of upstream answers, asked before each query."""

    def __init__(self, config: CutoffConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.detectors = frozenset(config.detectors)
        self.active: dict[str, Notice] = {}  # identity → the verdict that cut it off
        self.started = 0  # cut-offs begun (a renewal while one is in force is not counted)
        self.refused = 0  # queries refused while cut off

    def observe(self, identity: str, code: int, text: str) -> None:
        """An upstream answer for ``identity`` carried EDE ``code`` with ``text``."""
        if code not in (15, _EDE_FILTERED):
            return
        now = self.clock()
        notice = notice_of(text, now, self.config.max_seconds)
        if notice is None or notice.detector not in self.detectors or notice.until <= now:
            return
        current = self.active.get(identity)
        if current is None or current.until <= now:
            self.started += 1
            expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice.until))
            log.warning("cut off by a detection verdict (detect=%s) until %s", notice.detector, expiry)
        elif current.until > notice.until:
            return
        self.active[identity] = notice

    def refusal(self, identity: str, query: bytes) -> bytes | None:
        """REFUSED with EDE 17 naming the verdict when ``identity`` is cut off, else None (and an expired
        cut-off is forgotten)."""
        notice = self.active.get(identity)
        if notice is None:
            return None
        if notice.until <= self.clock():
            del self.active[identity]
            return None
        self.refused += 1
        return _refused(query, f"cut off by the agent: {notice.text}")


def _refused(query: bytes, text: str) -> bytes:
    try:
        message = dns.message.from_wire(query, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError):
        return error_response(query, dns.rcode.REFUSED)
    response = dns.message.make_response(message)
    response.set_rcode(dns.rcode.REFUSED)
    if message.edns >= 0:
        response.use_edns(0, options=[dns.edns.EDEOption(dns.edns.EDECode.FILTERED, text[:400])])
    return response.to_wire()
