"""The admin listener over real TLS: mTLS admin identities, tokens, and the ``ztdns api`` client."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.admin import TOKENS, Setup
from ztdns.admin.server import AdminServer, start_admin
from ztdns.cli import main
from ztdns.config import load_config
from ztdns.daemon import Service


@pytest.fixture
def admin_url(admin_setup: Setup) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    started: list[tuple[AdminServer, str]] = []
    ready = threading.Event()

    async def start() -> None:
        service = Service(load_config(admin_setup.config), admin_setup.config)
        await service._start_attestation()
        assert service.measuring is not None
        await service.measuring
        started.append(await start_admin(service, service.config))
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(30)
    server, url = started[0]
    yield url
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def api(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    code = main(["api", *args, "--url", url])
    return code, capsys.readouterr().out


def test_mtls_identity_and_token_through_ztdns_api(
    admin_setup: Setup, admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = admin_setup.directory / "pki"
    ca = ["--ca", str(pki / "ca.crt")]
    code, out = api(
        capsys, admin_url, "GET", "/v1/session", *ca, "--cert", str(pki / "alice.crt"), "--key", str(pki / "alice.key")
    )
    assert code == 0 and json.loads(out) == {
        "name": "spiffe://corp.example/admin/alice",
        "role": "admin",
        "via": "mtls",
        "csrf": None,
    }
    code, out = api(
        capsys,
        admin_url,
        "GET",
        "/v1/stats",
        *ca,
        "--cert",
        str(pki / "mallory.crt"),
        "--key",
        str(pki / "mallory.key"),
    )
    assert code == 1 and "no admin role" in out
    code, out = api(capsys, admin_url, "GET", "/v1/policies", *ca, "--token", TOKENS["viewer"])
    assert code == 0 and json.loads(out)["policies"][0]["name"] == "web"
    code, out = api(capsys, admin_url, "GET", "/v1/config", *ca, "--token", TOKENS["viewer"])
    etag = json.loads(out)["etag"]
    new = admin_setup.directory / "new.toml"
    new.write_text(admin_setup.config.read_text().replace('deny = ["blocked.example.com"]', "deny = []"))
    put = ["PUT", "/v1/config", *ca, "--data", str(new), "--if-match", etag]
    code, out = api(capsys, admin_url, *put, "--token", TOKENS["viewer"])
    assert code == 1 and "operator" in out
    code, out = api(capsys, admin_url, *put, "--token", TOKENS["operator"])
    assert code == 0 and json.loads(out)["applied"]
    empty = admin_setup.directory / "empty.json"
    empty.write_text("{}")
    code, out = api(capsys, admin_url, "POST", "/v1/explain", *ca, "--token", TOKENS["viewer"], "--data", str(empty))
    assert code == 1 and "client" in out  # a 400 naming the missing field, not a crash


def test_without_a_trusted_ca_the_client_refuses_the_server(admin_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["api", "GET", "/v1/stats", "--url", admin_url, "--token", TOKENS["viewer"]])
    assert code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err


def test_token_makes_a_config_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["api", "token"]) == 0
    out = capsys.readouterr().out
    token = out.split()[1]
    assert token.startswith("ztd_") and 'hash = "sha256:' in out


def test_bad_http_and_big_bodies_do_not_hurt_the_listener(admin_setup: Setup, admin_url: str) -> None:
    import socket
    import ssl
    from urllib.parse import urlsplit

    url = urlsplit(admin_url)
    context = ssl.create_default_context(cafile=str(admin_setup.directory / "pki" / "ca.crt"))

    def exchange(data: bytes) -> bytes:
        assert url.hostname is not None and url.port is not None
        with (
            socket.create_connection((url.hostname, url.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=url.hostname) as tls,
        ):
            tls.sendall(data)
            received = b""
            while chunk := tls.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and (b" 413 " in received or b" 400 " in received):
                    break
            return received

    assert exchange(b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"PUT /v1/config HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n" + b"a" * 1_100_000
    assert exchange(big).startswith(b"HTTP/1.1 413")
    ok = exchange(b"GET /v1/openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
