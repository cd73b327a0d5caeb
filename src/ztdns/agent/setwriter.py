"""Writes the allow sets: every answer of one event-loop turn goes into one shared :class:`SetUpdate`, committed
as one nf_tables transaction over raw netlink when the turn ends. Each answer registers a callback that the
commit calls: the answer is released only after the commit, and a failed commit fails every answer in the batch
(the stub then sends SERVFAIL — fail closed). The commit's bookkeeping (``on_commit``: metrics, the journal) runs
after the answers are released.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Mapping

from ztdns.agent.allowstate import SetUpdate
from ztdns.agent.nfnetlink import ElementWriter
from ztdns.agent.nft import NftError
from ztdns.agent.ruleset import SCOPED4, SCOPED6, SET4, SET6
from ztdns.wire.grant_scope import parse_port

log = logging.getLogger("ztdns.agent.setwriter")

# Addresses per transaction when (re)loading every grant: keeps each netlink message far below socket limits.
_CHUNK = 4096

Sets = dict[str, tuple[dict[bytes, int], list[bytes]]]


def packed_sets(
    timeouts: Mapping[str, int],
    removals: Iterable[str],
    set4: str = SET4,
    set6: str = SET6,
    scoped4: str = SCOPED4,
    scoped6: str = SCOPED6,
) -> Sets:
    """Text keys → packed keys per set, as the kernel takes them. A key is an address (canonical form; a colon
    marks IPv6), or an address, a space and ``tcp/443`` for the port-scoped sets."""
    sets: Sets = {set4: ({}, []), set6: ({}, [])}
    for address, seconds in timeouts.items():
        if " " in address:
            set_name, key = _scoped(address, scoped4, scoped6)
            sets.setdefault(set_name, ({}, []))[0][key] = seconds
            continue
        v6 = ":" in address
        sets[set6 if v6 else set4][0][socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, address)] = seconds
    for address in removals:
        if " " in address:
            set_name, key = _scoped(address, scoped4, scoped6)
            sets.setdefault(set_name, ({}, []))[1].append(key)
            continue
        v6 = ":" in address
        sets[set6 if v6 else set4][1].append(socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, address))
    return sets


def _scoped(key: str, scoped4: str, scoped6: str) -> tuple[str, bytes]:
    """A port-scoped key's set and its concatenation ``address . inet_proto . inet_service``, each field padded
    to 4 octets as nftables lays out concatenated keys."""
    address, _, port_text = key.partition(" ")
    protocol, port = parse_port(port_text)
    v6 = ":" in address
    packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, address)
    return scoped6 if v6 else scoped4, packed + bytes((protocol, 0, 0, 0)) + port.to_bytes(2, "big") + b"\0\0"


Settle = Callable[[NftError | None], None]


class SetWriter:
    def __init__(
        self,
        elements: ElementWriter,
        on_commit: Callable[[SetUpdate], None],
        on_failure: Callable[[SetUpdate], None] = lambda batch: None,
        sets: tuple[str, str, str, str] = (SET4, SET6, SCOPED4, SCOPED6),
    ) -> None:
        """``on_failure``: the kernel did not take ``batch``, which the allow state already holds. ``sets``: the
        IPv4 and IPv6 sets written, address-only and port-scoped (a workload's own)."""
        self.sets = sets
        self._elements = elements
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._pending: SetUpdate | None = None
        self._waiting: list[Settle] = []

    def pending(self) -> SetUpdate:
        """The update committed when this event-loop turn ends."""
        if self._pending is None:
            self._pending = SetUpdate()
            # Runs after every callback already queued in this turn: concurrent answers share the commit.
            asyncio.get_running_loop().call_soon(self._flush)
        return self._pending

    def after_commit(self, settle: Settle) -> None:
        """Call ``settle`` once the pending update is committed: with None, or with the reason it failed."""
        self._waiting.append(settle)

    def _flush(self) -> None:
        batch, waiting = self._pending, self._waiting
        assert batch is not None
        self._pending, self._waiting = None, []
        failure: NftError | None = None
        try:
            if batch:
                self._elements.write(packed_sets(batch.timeouts, batch.removals, *self.sets))
        except Exception as exc:  # whatever went wrong, the waiting answers must fail, not hang
            failure = exc if isinstance(exc, NftError) else NftError(f"set update: {exc!r}")
            self._on_failure(batch)
        for settle in waiting:
            try:
                settle(failure)
            except Exception:  # one broken waiter must not keep the others' answers from their applications
                log.exception("releasing an answer failed")
        if failure is None:
            # After the answers are out: the journal write (≈ 25 µs) is not on their path. The kernel holds the
            # grants already; a kill in between loses them from the journal, not from the table.
            self._on_commit(batch)

    def load(self, timeouts: Mapping[str, int]) -> None:
        """Write every grant (after the table was (re)built), in chunks of a few thousand addresses."""
        items = list(timeouts.items())
        for start in range(0, len(items), _CHUNK):
            self._elements.write(packed_sets(dict(items[start : start + _CHUNK]), (), *self.sets))
