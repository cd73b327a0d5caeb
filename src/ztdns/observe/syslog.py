"""The syslog sink: RFC 5424 messages over UDP (one datagram each), TCP (RFC 6587 octet counting) or TLS
(RFC 5425: octet counting over TLS, the collector's certificate verified), reconnecting at most once a second.

A message is ``<PRI>1 TIMESTAMP HOST ztdns PID MSGID - MSG`` with MSGID ``query``, ``detect`` or ``aggregate`` and
the record (in the sink's format, privacy applied) as MSG.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl

from ztdns.observe.formats import Formatter, stamp
from ztdns.observe.privacy import Aggregate
from ztdns.observe.sinks import TextSink

SEVERITY_INFO = 6
RECONNECT_INTERVAL = 1.0
SEND_TIMEOUT = 2.0
UDP_MAX = 65_000  # a datagram larger than this is cut (RFC 5426 allows the receiver to truncate anyway)


class SyslogSink(TextSink):
    kind = "syslog"

    def __init__(
        self,
        name: str,
        limit: int,
        formatter: Formatter,
        host: str,
        port: int,
        protocol: str,
        facility: int,
        hostname: str,
        context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        aggregate: Aggregate | None = None,
    ) -> None:
        super().__init__(name, limit, formatter, aggregate)
        self.host, self.port, self.protocol = host, port, protocol
        self.priority = facility * 8 + SEVERITY_INFO
        self.hostname = hostname or "-"
        self.context = context
        self.server_name = server_name or host
        self.connected = False
        self._sock: socket.socket | None = None
        self._last_attempt = float("-inf")
        self._pid = str(os.getpid())
        self.start()

    def header(self, msgid: str, now: float) -> str:
        return f"<{self.priority}>1 {stamp(now)} {self.hostname} ztdns {self._pid} {msgid} - "

    def _connect(self, now: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if now - self._last_attempt < RECONNECT_INTERVAL:
            raise OSError("collector unreachable (waiting to reconnect)")
        self._last_attempt = now
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        kind = socket.SOCK_DGRAM if self.protocol == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect((self.host, self.port))
            if self.protocol == "tls":
                assert self.context is not None
                sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.connected = True
        return sock

    def send(self, lines: list[tuple[str, str]], now: float) -> None:
        sock = self._connect(now)
        try:
            if self.protocol == "udp":
                for msgid, text in lines:
                    sock.send((self.header(msgid, now) + text).encode()[:UDP_MAX])
            else:
                out = []
                for msgid, text in lines:
                    data = (self.header(msgid, now) + text).encode()
                    out.append(b"%d %s" % (len(data), data))
                sock.sendall(b"".join(out))
        except OSError:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if isinstance(self._sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                self._sock.unwrap()  # close_notify: the collector sees a clean end, not an error
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self.connected = False

    def shutdown(self) -> None:
        self._disconnect()


def tls_context(ca: str | None) -> ssl.SSLContext:
    """The client context of a TLS syslog sink: the collector's certificate verified against ``ca`` (default: the
    system's CAs)."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
