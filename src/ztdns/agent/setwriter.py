"""Writes :class:`SetUpdate`s to the kernel, coalescing all answers that arrive in one event-loop turn into one
nftables transaction. The caller awaits its update: the answer is released only after the commit, and a failed
commit fails every answer in the batch (the stub then sends SERVFAIL — fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ztdns.agent.allowstate import SetUpdate
from ztdns.agent.nft import Nft, NftError
from ztdns.agent.ruleset import element_script


class SetWriter:
    def __init__(self, nft: Nft, on_commit: Callable[[SetUpdate], None]) -> None:
        self._nft = nft
        self._on_commit = on_commit
        self._pending: SetUpdate | None = None
        self._waiters: list[asyncio.Future[None]] = []

    async def apply(self, update: SetUpdate) -> None:
        """Returns once ``update`` is in the kernel; raises NftError if the transaction failed."""
        if not update:
            return
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = SetUpdate()
            # Runs after every callback already queued in this turn: concurrent answers share the commit.
            loop.call_soon(self._flush)
        self._pending.merge(update)
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        await future

    def _flush(self) -> None:
        batch, waiters = self._pending, self._waiters
        self._pending, self._waiters = None, []
        assert batch is not None
        try:
            self._nft.run(element_script(batch.timeouts, batch.removals))
        except NftError as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self._on_commit(batch)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
