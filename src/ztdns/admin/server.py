"""The admin listener: HTTP/1.1 (h11) over asyncio TLS, one request at a time per connection, into AdminApi."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import h11

from ztdns.admin.api import MAX_BODY, AdminApi, Host, Request, Response, error
from ztdns.config import Config, located
from ztdns.identity.certificates import identity_from_certificate

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0
MAX_CONNECTIONS = 64


def tls_context(config: Config) -> ssl.SSLContext:
    """Server certificate; with ``ca``, client certificates are asked for and verified (tokens work without)."""
    settings = config.admin
    assert settings.cert and settings.key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(config.base_dir / settings.cert, config.base_dir / settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise located(config, ("admin", "cert"), f"cannot load the admin certificate and key: {exc}") from None
    if settings.ca:
        try:
            context.load_verify_locations(cafile=config.base_dir / settings.ca)
        except (OSError, ssl.SSLError) as exc:
            raise located(config, ("admin", "ca"), f"cannot load the admin client CA: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class AdminServer:
    def __init__(self, api: AdminApi, context: ssl.SSLContext) -> None:
        self.api = api
        self.context = context
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._connection, host, port, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, TimeoutError, h11.ProtocolError):
            pass  # the peer went away or spoke nonsense: nothing to answer
        except Exception:
            log.exception("admin connection failed")
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        identity = identity_from_certificate(der) if der else None  # verified by TLS when present
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                try:
                    event = connection.next_event()
                except h11.RemoteProtocolError:
                    with contextlib.suppress(h11.LocalProtocolError):  # h11 may not be in a state to answer
                        await self._send(writer, connection, error(400, "malformed HTTP/1.1 request"))
                    return
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), IDLE_SECONDS)
                    connection.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        await self._send(writer, connection, error(413, "request body too large"))
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            headers = {name.decode().lower(): value.decode("latin-1") for name, value in request.headers}
            response = await self.api.handle(
                Request(
                    method=request.method.decode(),
                    target=request.target.decode("latin-1"),
                    headers=headers,
                    body=bytes(body),
                    peer_address=address,
                    peer_identity=identity,
                )
            )
            await self._send(writer, connection, response)
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, connection: h11.Connection, response: Response) -> None:
        headers = [("content-length", str(len(response.body))), *response.headers]
        if response.body:
            headers.append(("content-type", response.content_type))
        writer.write(connection.send(h11.Response(status_code=response.status, headers=headers)) or b"")
        if response.body:
            writer.write(connection.send(h11.Data(data=response.body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()


async def start_admin(host: Host, config: Config) -> tuple[AdminServer, str]:
    """Start the listener for the server process ``host``; returns it and its URL."""
    server = AdminServer(AdminApi(host), tls_context(config))
    address, port = config.admin.hostport()
    try:
        bound = await server.start(address, port)
    except OSError as exc:
        message = f"cannot listen on {address}:{port}: {exc.strerror or exc}"
        raise located(config, ("admin", "address"), message) from None
    shown = f"[{address}]" if ":" in address else address
    return server, f"https://{shown}:{bound}/"
