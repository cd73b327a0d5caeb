"""Server-side TLS driven by ourselves: an ``ssl.SSLObject`` with memory BIOs between a plain TCP transport and
the connection protocol (DoT, DoH).

Why not the event loop's SSL transport (``connect_accepted_socket(ssl=...)``):

- memory: under uvloop 0.23 the server's RSS grows with TLS connection churn when clients leave abruptly
  (issue 12; ``bench/tls_churn.py`` measures it), and asyncio's does not; here every TLS object is a plain
  Python object freed with its connection;
- refusals: when the handshake fails (no, revoked or foreign client certificate) OpenSSL writes an alert
  (``certificate_required``, ``bad_certificate``, ...) to the outgoing BIO; we send it before closing, so the
  client learns why. asyncio drops it (CPython gh-98078), uvloop too.

:class:`TlsBioProtocol` is the TCP protocol; to the connection protocol it is the transport (``write``,
``writelines``, ``close``, ``abort``, ``pause_reading``, ``get_extra_info("ssl_object")``...), and it passes
write back-pressure (``pause_writing``/``resume_writing``) through. ``handshake`` resolves when the handshake is
done, or fails with its reason; a handshake that does not finish within ``handshake_timeout`` fails with
TimeoutError.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, cast

_READ_SIZE = 65536


_DETACHED = asyncio.Protocol()  # what a closed connection's TLS layer talks to: nothing


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class TlsBioProtocol(asyncio.Protocol):
    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, handshake_timeout: float) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # The C object whose read, write and pending ssl.SSLObject's Python methods only pass on: called directly,
        # a frame less per TLS record both ways (there is one record per DoH request and per answer).
        self._tls: Any = getattr(self._ssl, "_sslobj", self._ssl)
        self._app = app
        self._handshake_timeout = handshake_timeout
        self._transport: asyncio.Transport | None = None
        self._socket: Any = None  # the TCP socket (uvloop's stand-in), for TCP_QUICKACK
        self._timer: asyncio.TimerHandle | None = None
        self._open = False  # handshake done, application data flows
        self._closing = False
        self._read_paused = False
        self._delivering = False  # inside the connection protocol's data_received: writes go out together after
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshake.add_done_callback(_seen)  # a failure nobody awaits (the listener closing) is no warning

    # asyncio.Protocol, facing the TCP transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._socket = transport.get_extra_info("socket")
        self._timer = asyncio.get_running_loop().call_later(self._handshake_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self._open:
            if self.handshake.done():
                return  # failed: only the alert still goes out
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._fail(exc)
                return
            self._flush()
            self._open = True
            self._cancel_timer()
            self._app.connection_made(cast(asyncio.BaseTransport, self))
            self.handshake.set_result(None)
        self._deliver()

    def eof_received(self) -> bool | None:
        self._incoming.write_eof()
        if self._open:
            self._deliver()
        return False  # close: half-open TLS is not worth keeping

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None
        if self._open:
            self._open = False
            self._app.connection_lost(exc)
            # The connection protocol holds us as its transport: without this cycle, the connection (its SSL
            # object and OpenSSL buffers, ~50 KB) is freed now, not at the next full collection, which the
            # server's gc thresholds make rare (issue 12: RSS grew with every TLS connection until then).
            self._app = _DETACHED
        elif not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("connection closed during the handshake"))

    def pause_writing(self) -> None:
        if self._open:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._open:
            self._app.resume_writing()

    # asyncio.Transport, facing the connection protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._open or self._closing:
            return
        try:
            self._tls.write(data)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        if not self._delivering:
            self._flush()

    def writelines(self, chunks: Any) -> None:
        """One TLS record per chunk, one send for all of them."""
        if not self._open or self._closing:
            return
        write = self._tls.write
        try:
            for chunk in chunks:
                write(chunk)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        if not self._delivering:
            self._flush()

    def close(self) -> None:
        if self._transport is None or self._closing:
            return
        self._closing = True
        if self._open:
            with contextlib.suppress(ssl.SSLError, OSError):
                self._ssl.unwrap()  # close_notify; we do not wait for the client's
            self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    def pause_reading(self) -> None:
        self._read_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._read_paused:
            return
        self._read_paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            # Plaintext decrypted before the pause is still in the BIO: hand it over now, not at the next read.
            asyncio.get_running_loop().call_soon(self._deliver)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "sslcontext":
            return self._ssl.context
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    # Inside

    def _deliver(self) -> None:
        """Decrypt what has arrived and hand it to the connection protocol, the records of a read together (up to
        64 KiB a call), until it pauses us. What it writes meanwhile (answers to pipelined queries) goes out in one
        send at the end, each write (DoT: the answers to a read; DoH: one answer) its own TLS record."""
        self._delivering = True
        try:
            self._deliver_records()
        finally:
            self._delivering = False
        if not self._flush():  # answers, and what reading produced (TLS 1.3 key updates)
            self._ack_now()

    def _ack_now(self) -> None:
        """Nothing to send back yet (a request's first part, or an answer still being made): acknowledge at once.
        A client sends an HTTP/2 POST's DATA only when its HEADERS are acknowledged (Nagle), and Linux delays a
        bare ACK by up to 40 ms: a client with one connection waited that long for every request."""
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def _deliver_records(self) -> None:
        # SSLObject.read returns one TLS record at a time, and clients send a request's parts in records of their
        # own (an HTTP/2 POST: HEADERS, then DATA): the records of a read go to the connection protocol together,
        # up to _READ_SIZE bytes a call, so its HTTP engine runs once per read, not once per record.
        read, buffered, incoming = self._tls.read, self._tls.pending, self._incoming
        while self._open and not self._read_paused:
            chunks: list[bytes] = []
            size = 0
            ended = False
            while size < _READ_SIZE:
                # Nothing left to decrypt (a partial record is inside OpenSSL once a read took it): stop without the
                # read that would raise SSLWantReadError, which costs more than a request's HTTP/2 handling.
                if not (incoming.pending or buffered() or incoming.eof):
                    break
                try:
                    chunk = read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLError, OSError):
                    self.abort()
                    return
                if not chunk:  # the client's close_notify (the ssl module reads it as b"")
                    ended = True
                    break
                chunks.append(chunk)
                size += len(chunk)
            if chunks:
                self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if ended:
                self.close()
                return
            if size < _READ_SIZE:  # all that arrived was read
                return

    def _flush(self) -> bool:
        """Send what TLS wrote; False if there was nothing."""
        if self._outgoing.pending and self._transport is not None:
            self._transport.write(self._outgoing.read())
            return True
        return False

    def _fail(self, exc: BaseException) -> None:
        """The handshake failed: send what OpenSSL wrote (the alert saying why), then close."""
        self._cancel_timer()
        self._flush()
        self.handshake.set_exception(exc)
        if self._transport is not None:
            self._closing = True
            self._transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if not self._open and not self.handshake.done():
            self.handshake.set_exception(TimeoutError("TLS handshake timed out"))
            self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
