"""DNS over TLS (RFC 7858): length-framed messages on a TLS connection, pipelined, answered out of order.

Each query is answered as soon as it can be: the handler's synchronous fast path answers inline, anything else
runs as its own task, so one slow upstream answer never holds back the ones behind it. At most
``max_pipelined`` queries are in flight per connection; beyond that we stop reading until answers go out.
Responses are padded to 468-octet blocks when the query was padded (RFC 7830, RFC 8467). The fast-path answers
to the queries of one read go out in one TLS record (sealing a record costs about as much as the rest of a cached
answer's transport work, and with many connections a read carries only one to three queries).
"""

from __future__ import annotations

import asyncio
import logging

from ztdns.client import Transport
from ztdns.config.listen import ListenConfig
from ztdns.transport import Handler
from ztdns.transport.framing import FramingError, LengthPrefixedFramer, frame
from ztdns.transport.stream import TlsConnection, TlsStreamListener
from ztdns.transport.tls import TlsMaterial
from ztdns.wire.records import pad_response, wants_padding

log = logging.getLogger(__name__)


def finish_response(query: bytes, response: bytes) -> bytes:
    """What every encrypted transport does to a response before sending it: pad it if the query was padded."""
    return pad_response(response) if wants_padding(query) else response


class DotConnection(TlsConnection):
    kind = Transport.DOT

    def __init__(self, listener: TlsStreamListener) -> None:
        super().__init__(listener)
        self.framer = LengthPrefixedFramer()
        self.tasks: set[asyncio.Task[None]] = set()
        self.read_paused = False

    def received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except FramingError:
            self.abort()
            return
        # Whole queries are activity; bytes of one that never completes are not (slowloris).
        now = self.loop.time()
        self.progress.fed(now, len(messages), self.framer.buffered)
        if messages:
            self.last_activity = now
        # The answers to this read's queries (fast-path ones) go out together, in one TLS record: a TLS record
        # costs about 1.5 µs to seal whatever its size, as much as the rest of a cached answer's transport work.
        answers: list[bytes] = []
        for wire in messages:
            self.query(wire, answers)
        if answers and self.transport is not None and not self.transport.is_closing():
            self.transport.write(answers[0] if len(answers) == 1 else b"".join(answers))
        if len(self.tasks) >= self.config.max_pipelined and not self.read_paused:
            self.read_paused = True
            self.pause_reading_for_writes()

    data_received = received  # called by the TLS layer directly, not through TlsConnection.data_received

    def query(self, wire: bytes, answers: list[bytes]) -> None:
        """Answer WIRE: from the handler's fast path into ANSWERS (the caller sends them), else in a task."""
        try:
            response = self.handler.fast(wire, self.client)
        except Exception:
            log.exception("handler fast path failed")
            return
        if response is not None:
            answers.append(frame(finish_response(wire, response)))
            return
        task = self.loop.create_task(self.slow(wire))
        self.tasks.add(task)
        task.add_done_callback(self.done)

    async def slow(self, wire: bytes) -> None:
        response = await self.handler.handle(wire, self.client)
        if response is not None:
            self.send(wire, response)

    def send(self, query: bytes, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(finish_response(query, response)))
            self.touch()

    def done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler failed", exc_info=task.exception())
        if self.draining:
            if not self.tasks:
                self.close()
        elif self.read_paused and len(self.tasks) < self.config.max_pipelined and not self.write_paused:
            self.read_paused = False
            self.resume_reading_if_possible()

    def resume_reading_if_possible(self) -> None:
        if not self.read_paused:
            super().resume_reading_if_possible()

    def busy(self) -> bool:
        return bool(self.tasks)

    def drain(self) -> None:
        self.draining = True
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.tasks:
            self.close()

    def stopped(self) -> None:
        for task in self.tasks:
            task.cancel()


async def start_dot_listener(
    config: ListenConfig, handler: Handler, tls: TlsMaterial, *, reuse_port: bool = False
) -> TlsStreamListener:
    """Listen for DoT on ``config.address``. Close with ``await listener.close(drain_seconds)``."""
    listener = TlsStreamListener(config, handler, tls, DotConnection)
    await listener.start(reuse_port=reuse_port)
    return listener
