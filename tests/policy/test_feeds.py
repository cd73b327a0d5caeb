"""List feeds against a local HTTPS server the test starts: ETag/304, errors, timeouts, truncated and huge bodies,
a shrunken list, integrity pins and signatures, the last good copy, status and metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fixtures.tls import Pki, pki
from ztdns.config import Config, parse_config
from ztdns.feeds import FeedManager
from ztdns.feeds.cli import status_text
from ztdns.pki.pin import spki_pin
from ztdns.policy import compile_views

__all__ = ["pki"]

A = int(dns.rdatatype.A)
LIST = "".join(f"ads{i}.example\n" for i in range(100))


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    etag: str | None = None
    mode: str = "normal"  # normal | hang | truncate | huge | huge-unannounced


@dataclass
class FeedServer:
    """HTTPS/1.1 on 127.0.0.1, one request per connection, answers from ``routes``; records request headers."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            path = request_line.split()[1]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            self.requests.append({"path": path, **headers})
            route = self.routes.get(path, Route(b"not found", 404))
            if route.mode == "hang":
                await asyncio.sleep(3600)
            if route.etag is not None and headers.get("if-none-match") == route.etag:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")
            elif route.mode == "huge-unannounced":
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                for _ in range(64):
                    writer.write(b"x" * 65536)
                    await writer.drain()
            else:
                length = len(route.body) * (10 if route.mode == "truncate" else 1)
                if route.mode == "huge":
                    length = 1 << 40
                extra = f"ETag: {route.etag}\r\n" if route.etag else ""
                lines = f"HTTP/1.1 {route.status} X\r\nContent-Length: {length}\r\n{extra}Connection: close\r\n\r\n"
                writer.write(lines.encode() + (b"" if route.mode == "huge" else route.body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def with_server(pki: Pki, body: Callable[[FeedServer], Awaitable[None]]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert("server"), pki.key("server"))
    server = FeedServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        await body(server)
    finally:
        listener.close()


def make_config(tmp_path: Path, pki: Pki, url: str, feed: str = "", lists: str = "") -> Config:
    text = f"""
[server]
state_dir = "{tmp_path / "state"}"

[identities.x]
policies = ["p"]

[policies.p]
allow = ["**"]
deny_lists = ["{url}"]

[lists]
timeout = 2.0
max_bytes = 100000
{lists}

[[lists.feeds]]
url = "{url}"
ca = "{pki.ca}"
{feed}
"""
    return parse_config(text, "test.toml", tmp_path)


def blocked(config: Config, name: str) -> bool:
    return not compile_views(config)["x"].decide(name, A).allowed


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def feed_of(config: Config) -> FeedManager:
    async def nothing() -> None:
        return None

    return FeedManager(config, nothing)


def test_fetch_then_304_then_500_keeps_the_copy(tmp_path: Path, pki: Pki) -> None:
    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode(), etag='"v1"')
        config = make_config(tmp_path, pki, url)
        assert not blocked(config, "ads1.example")  # no copy yet: an empty list (with a warning)
        [feed] = feed_of(config).feeds.values()
        assert await feed.refresh() is True
        assert feed.status.entries == 100 and feed.status.etag == '"v1"' and feed.status.last_error is None
        assert blocked(config, "ads1.example")
        # Conditional: the server answers 304 and nothing changes.
        assert await feed.refresh() is False
        assert server.requests[-1]["if-none-match"] == '"v1"'
        assert feed.status.last_error is None
        # A server error keeps the copy in use: the policy never empties because a feed is down.
        server.routes["/ads.txt"] = Route(b"oops", 500)
        assert await feed.refresh() is False
        assert feed.status.last_error == "HTTP status 500" and feed.status.failures == 1
        assert blocked(config, "ads1.example")
        # A fresh manager (a restart) reads the status and the copy from disk.
        [again] = feed_of(config).feeds.values()
        assert again.status.entries == 100 and again.status.last_error == "HTTP status 500"

    run(with_server(pki, body))


@pytest.mark.parametrize(
    ("route", "error"),
    [
        (Route(mode="hang"), "timed out after 2 s"),
        (Route(LIST.encode(), mode="truncate"), "without sending complete message body"),
        (Route(LIST.encode(), mode="huge"), "over the limit of 100000"),
        (Route(mode="huge-unannounced"), "body is over the limit of 100000 bytes"),
        (Route(b"", status=404), "HTTP status 404"),
    ],
)
def test_failed_fetches_keep_the_last_good_copy(tmp_path: Path, pki: Pki, route: Route, error: str) -> None:
    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode())
        config = make_config(tmp_path, pki, url)
        [feed] = feed_of(config).feeds.values()
        assert await feed.refresh()
        server.routes["/ads.txt"] = route
        assert await feed.refresh() is False
        assert feed.status.last_error is not None and error in feed.status.last_error
        assert feed.status.entries == 100
        assert blocked(config, "ads99.example")

    run(with_server(pki, body))


def test_a_shrunken_list_is_held_back(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode())
        config = make_config(tmp_path, pki, url, lists="max_shrink = 0.5")
        [feed] = feed_of(config).feeds.values()
        assert await feed.refresh()
        server.routes["/ads.txt"] = Route(b"ads1.example\n")  # 1 of 100: a broken upstream list
        assert await feed.refresh() is False
        assert feed.status.last_error is not None and feed.status.last_error.startswith("held back: 1 entries")
        assert blocked(config, "ads50.example")
        server.routes["/ads.txt"] = Route("".join(f"ads{i}.example\n" for i in range(60)).encode())
        assert await feed.refresh() is True  # shrank by 40 %: accepted
        assert feed.status.entries == 60 and not blocked(config, "ads70.example")

    with caplog.at_level("WARNING", logger="ztdns.feeds"):
        run(with_server(pki, body))
    assert any("held back" in record.getMessage() for record in caplog.records)


def test_sha256_pin_and_spki_pin(tmp_path: Path, pki: Pki) -> None:
    good = hashlib.sha256(LIST.encode()).hexdigest()
    first_pem = pki.cert("server").read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    server_pin = spki_pin(ssl.PEM_cert_to_DER_cert(first_pem))

    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode())
        for feed_keys, error in (
            (f'sha256 = "{"0" * 64}"', "body does not match the configured sha256"),
            (f'sha256 = "{good}"', None),
            (f'spki_pin = "{base64.b64encode(bytes(32)).decode()}"', "does not match the SPKI pin"),
            (f'spki_pin = "{server_pin}"', None),
        ):
            config = make_config(tmp_path / feed_keys[:6], pki, url, feed=feed_keys)
            [feed] = feed_of(config).feeds.values()
            changed = await feed.refresh()
            assert changed is (error is None), feed.status.last_error
            if error is not None:
                assert feed.status.last_error is not None and error in feed.status.last_error

    run(with_server(pki, body))


def test_signed_feeds(tmp_path: Path, pki: Pki) -> None:
    key = Ed25519PrivateKey.generate()
    public = tmp_path / "feed.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode())
        server.routes["/ads.txt.sig"] = Route(base64.b64encode(key.sign(LIST.encode())))
        config = make_config(tmp_path, pki, url, feed=f'signing_key = "{public}"')
        [feed] = feed_of(config).feeds.values()
        assert await feed.refresh(), feed.status.last_error
        server.routes["/ads.txt"] = Route((LIST + "evil.example\n").encode())  # the old signature: no longer valid
        assert await feed.refresh() is False
        assert feed.status.last_error == "Ed25519 signature does not verify"
        server.routes["/ads.txt.sig"] = Route(key.sign((LIST + "evil.example\n").encode()))  # raw 64 bytes
        assert await feed.refresh() is True

    run(with_server(pki, body))


def test_manager_recompiles_once_and_reports(tmp_path: Path, pki: Pki) -> None:
    async def body(server: FeedServer) -> None:
        url = server.url("/ads.txt")
        server.routes["/ads.txt"] = Route(LIST.encode(), etag='"a"')
        config = make_config(tmp_path, pki, url)
        changes: list[int] = []

        async def changed() -> None:
            changes.append(len(changes))

        manager = FeedManager(config, changed)
        manager.start()
        for _ in range(200):
            if changes:
                break
            await asyncio.sleep(0.02)
        await manager.close()
        assert changes == [0]
        metrics = {metric.name: metric for metric in manager.collect()}
        [sample] = metrics["ztdns_list_entries"].samples
        assert sample.labels == {"list": url} and sample.value == 100
        assert {s.name for s in metrics["ztdns_list_fetch_failures"].samples} == {"ztdns_list_fetch_failures_total"}
        text = status_text(config)
        assert url in text and "entries:      100" in text and "last error:   none" in text

    run(with_server(pki, body))


def test_only_https_feeds(tmp_path: Path) -> None:
    from ztdns.config import ConfigError

    with pytest.raises(ConfigError, match="HTTPS only"):
        parse_config('[policies.p]\ndeny_lists = ["http://lists.example/ads.txt"]', "t.toml", tmp_path)


@pytest.mark.slow
def test_lists_status_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "local.txt").write_text("a.example\n||b.example^$third-party\n")
    config = tmp_path / "ztdns.toml"
    config.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\n'
        '[policies.p]\ndeny_lists = ["local.txt", "https://lists.example/ads.txt"]\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "ztdns", "lists", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "local.txt\n  used by:      policies.p.deny_lists[0]" in out
    assert "entries:      1" in out and "adblock-modifier:third-party=1" in out
    assert "https://lists.example/ads.txt" in out and "copy:         none yet" in out
    assert "last success: never" in out


@pytest.mark.slow
def test_serve_fetches_a_feed_and_recompiles_without_restart(tmp_path: Path, pki: Pki) -> None:
    """`ztdns serve` starts with no copy (the list is empty), fetches the feed, and blocks its names at once."""
    import threading

    import dns.rcode

    from fixtures.server import ServerProcess, udp_query
    from fixtures.unbound import free_port

    ready = threading.Event()
    stop: list[Callable[[], object]] = []
    server = FeedServer()
    server.routes["/ads.txt"] = Route(LIST.encode())

    def serve_feeds() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(pki.cert("server"), pki.key("server"))
            listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
            server.port = listener.sockets[0].getsockname()[1]
            done = asyncio.Event()
            stop.append(lambda: loop.call_soon_threadsafe(done.set))
            ready.set()
            await done.wait()
            listener.close()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=serve_feeds, daemon=True)
    thread.start()
    assert ready.wait(10)
    port = free_port()
    url = server.url("/ads.txt")
    text = f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[server]
state_dir = "{tmp_path / "state"}"

[metrics]
enabled = false

[log.query_log]
output = "off"

[resolver]
mode = "none"

[identities.lo]
networks = ["127.0.0.0/8"]
policies = ["p"]

[policies.p]
allow = ["**"]
deny_lists = ["{url}"]

[[lists.feeds]]
url = "{url}"
ca = "{pki.ca}"
"""
    try:
        with ServerProcess(text, tmp_path, port=port) as ztdns:
            assert ztdns.wait_stderr("policies recompiled with the new copies", timeout=20), ztdns.stderr
            response = udp_query(port, "ads7.example")
            assert response.rcode() == dns.rcode.NXDOMAIN
    finally:
        for call in stop:
            call()
        thread.join(10)
