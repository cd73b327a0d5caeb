"""The metrics endpoint: Prometheus text over HTTP, or HTTPS with a client certificate required when the config
names a client CA (``[metrics] cert``, ``key``, ``ca``). GET and HEAD are answered (HEAD: the headers of the GET,
no body); other methods get 405."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import CollectorRegistry

StartResponse = Callable[..., Any]


def head_aware(app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """The app with HEAD answered as a GET without its body (Content-Length says what GET would send)."""

    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured.extend((status, headers))

        body = b"".join(app({**environ, "REQUEST_METHOD": "GET"}, capture))
        status, headers = captured
        start_response(
            status, [*[h for h in headers if h[0].lower() != "content-length"], ("Content-Length", str(len(body)))]
        )
        return [b""]

    return wrapped


def tls_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    """The endpoint's server context; with ``ca`` a client certificate that chains to it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def serve_metrics(
    host: str, port: int, registry: CollectorRegistry, context: ssl.SSLContext | None = None
) -> WSGIServer:
    """Serve ``registry`` on a daemon thread; raises OSError when the address cannot be bound."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, head_aware(make_wsgi_app(registry)), Server, handler_class=_SilentHandler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="ztdns-metrics", daemon=True).start()
    return server
