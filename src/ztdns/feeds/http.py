"""A small HTTPS GET client for list feeds: asyncio streams for TLS, h11 for HTTP/1.1.

No new dependency: h11 is already used by the DoH listener. One request per connection (``Connection:
close``); redirects to HTTPS URLs are followed (at most :data:`MAX_REDIRECTS`); bodies are compressed by nobody
(``Accept-Encoding: identity``) and refused beyond ``max_bytes``, whether announced by Content-Length or not. A
body cut short (fewer octets than Content-Length, a broken chunked encoding) is an error, never a short list.
The caller bounds the whole exchange with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import h11

from ztdns.pki.pin import spki_pin

MAX_REDIRECTS = 5
_READ_SIZE = 65536


class FetchError(Exception):
    """A fetch that gave no usable body; ``str()`` says why, short enough for a status line."""


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int  # 200, or 304 (not modified: body empty)
    body: bytes
    etag: str | None
    last_modified: str | None


def tls_context(ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


async def fetch(
    url: str,
    context: ssl.SSLContext,
    *,
    pin: str | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    max_bytes: int,
) -> Fetched:
    """GET ``url`` (conditionally when ``etag``/``last_modified`` are given). Raises FetchError or OSError."""
    for _ in range(MAX_REDIRECTS + 1):
        response, body = await _get(url, context, pin, etag, last_modified, max_bytes)
        status = response.status_code
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in response.headers}
        if status in (301, 302, 303, 307, 308) and "location" in headers:
            url = urllib.parse.urljoin(url, headers["location"])
            if not url.startswith("https://"):
                raise FetchError(f"redirected to a URL that is not HTTPS: {url}")
            continue
        if status == 304:
            return Fetched(304, b"", etag, last_modified)
        if status != 200:
            raise FetchError(f"HTTP status {status}")
        return Fetched(200, body, headers.get("etag"), headers.get("last-modified"))
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


async def _get(
    url: str, context: ssl.SSLContext, pin: str | None, etag: str | None, last_modified: str | None, max_bytes: int
) -> tuple[h11.Response, bytes]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise FetchError(f"not an HTTPS URL: {url}")
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port or 443, ssl=context, server_hostname=parts.hostname
    )
    try:
        if pin is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
            if der is None or spki_pin(der) != pin:
                raise FetchError("server certificate does not match the SPKI pin")
        connection = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", parts.netloc),
            ("User-Agent", "ztdns-list-feed"),
            ("Accept-Encoding", "identity"),
            ("Connection", "close"),
        ]
        if etag is not None:
            headers.append(("If-None-Match", etag))
        if last_modified is not None:
            headers.append(("If-Modified-Since", last_modified))
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        writer.write(connection.send(h11.Request(method="GET", target=target, headers=headers)))
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()
        return await _read_response(connection, reader, max_bytes)
    finally:
        writer.close()
        # The server may cut TLS short after the body; the body was already judged.
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _read_response(
    connection: h11.Connection, reader: asyncio.StreamReader, max_bytes: int
) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise FetchError(f"bad or truncated HTTP response: {exc}") from None
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(_READ_SIZE))
            continue
        if isinstance(event, h11.Response):
            response = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"body of {int(length)} bytes is over the limit of {max_bytes}")
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_bytes:
                raise FetchError(f"body is over the limit of {max_bytes} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError("connection closed before the response was complete")
