"""Upstream health and selection, without sockets or clocks: callers pass ``now`` (seconds, monotonic).

Each upstream has a smoothed round-trip time, a consecutive-failure count, and counters for metrics. After
``failures_before_down`` consecutive failures it is held down for a backoff that doubles on every further failure
(``backoff_initial`` → ``backoff_max``); when the hold expires it is tried again, and one more failure holds it down
for twice as long, while one success clears everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Weight of a new sample in the smoothed RTT: high enough that a server turning slow loses its rank in a few
# queries.
SRTT_WEIGHT = 0.3
# Each time another upstream answers, the srtt of the others shrinks a little, so a server that was slow once is
# tried again eventually instead of never (BIND does the same).
SRTT_DECAY = 0.98


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    """A point-in-time view of one upstream, for metrics and ``ztdns`` status."""

    address: str
    up: bool
    srtt: float | None  # seconds; None until the first answer or failure
    failures: int  # consecutive failures
    queries: int  # attempts sent
    errors: int  # attempts that failed (timeout, network error, REFUSED/FORMERR/NOTIMP)
    down_for: float  # seconds until it is tried again; 0 when up


@dataclass(slots=True)
class _State:
    address: str
    srtt: float | None = None
    failures: int = 0
    queries: int = 0
    errors: int = 0
    down_until: float = 0.0
    holds: int = 0  # hold-downs in a row, for the doubling backoff

    def blend(self, sample: float) -> None:
        self.srtt = sample if self.srtt is None else (1 - SRTT_WEIGHT) * self.srtt + SRTT_WEIGHT * sample


class HealthBook:
    """Tracks every upstream of one forwarder and decides the order to try them in."""

    def __init__(
        self,
        addresses: Sequence[str],
        failures_before_down: int,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        self._states = [_State(address) for address in addresses]
        self._failures_before_down = failures_before_down
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

    def order(self, now: float) -> list[int]:
        """Indexes to try, best first: upstreams that are up, by smoothed RTT (untried ones first, config order
        breaking ties). Held-down upstreams are used only when none is up, soonest-to-expire first, so a total
        outage still probes rather than failing without trying."""
        up = [i for i, s in enumerate(self._states) if s.down_until <= now]
        if up:
            return sorted(up, key=lambda i: (self._states[i].srtt or 0.0, i))
        return sorted(range(len(self._states)), key=lambda i: (self._states[i].down_until, i))

    def succeeded(self, index: int, rtt: float) -> None:
        """The upstream answered (any rcode that is not a failure) after ``rtt`` seconds."""
        state = self._states[index]
        state.queries += 1
        state.blend(rtt)
        state.failures = 0
        state.holds = 0
        state.down_until = 0.0
        for other in self._states:
            if other is not state and other.srtt is not None:
                other.srtt *= SRTT_DECAY

    def failed(self, index: int, now: float, penalty: float) -> None:
        """The upstream failed; ``penalty`` (the time the attempt was allowed) is blended into its RTT so it
        ranks below upstreams that answer."""
        state = self._states[index]
        state.queries += 1
        state.errors += 1
        state.failures += 1
        state.blend(penalty)
        # Concurrent queries that were already in flight when it went down must not stack extra doublings.
        if state.failures >= self._failures_before_down and state.down_until <= now:
            # The exponent is bounded so a days-long outage cannot overflow the float.
            hold = min(self._backoff_initial * 2 ** min(state.holds, 32), self._backoff_max)
            state.down_until = now + hold
            state.holds += 1

    def snapshot(self, now: float) -> list[UpstreamHealth]:
        return [
            UpstreamHealth(
                address=s.address,
                up=s.down_until <= now,
                srtt=s.srtt,
                failures=s.failures,
                queries=s.queries,
                errors=s.errors,
                down_for=max(0.0, s.down_until - now),
            )
            for s in self._states
        ]
