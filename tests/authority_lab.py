"""Shared helpers for authority tests: a zone, a served authority on a loopback port, free ports, tool
checks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.name
import dns.query
import dns.tsigkeyring
import pytest

from fixtures.unbound import free_port
from ztdns.authority.daemon import AuthorityService
from ztdns.authority.handler import Authority, ServedZone, ZoneSettings
from ztdns.authority.kasp import KeyManager, Policy
from ztdns.authority.zone import Zone

T = TypeVar("T")
ORIGIN = dns.name.from_text("corp.internal.")
ZONE_TEXT = """
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 60
@        NS  ns1
@        MX  10 mail
ns1      A   127.0.0.1
mail     A   192.0.2.25
www      A   192.0.2.10
www      AAAA 2001:db8::10
alias    CNAME www
chain    CNAME alias
outside  CNAME www.example.net.
*.wild   A   192.0.2.20
a.b.c    TXT "deep"
sub      NS  ns.sub
sub      NS  ns.elsewhere.example.
ns.sub   A   192.0.2.53
"""
TSIG_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages in scripts/dev.sh)")


def keyring() -> dict[dns.name.Name, Any]:
    ring: dict[dns.name.Name, Any] = dns.tsigkeyring.from_text(
        {"xfr.": ("hmac-sha256", TSIG_SECRET), "web-key.": ("hmac-sha256", TSIG_SECRET)}
    )
    return ring


def signed_zone(
    state: Path,
    text: str = ZONE_TEXT,
    origin: dns.name.Name = ORIGIN,
    policy: Policy | None = None,
    **settings: Any,
) -> ServedZone:
    zone = Zone.from_text(text, origin)
    return ServedZone(ZoneSettings(origin, **settings), zone, KeyManager(origin, policy or Policy(), state))


class Loop:
    """An event loop in a thread, so blocking tools (subprocess) can query our server from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(make(), self.loop)
        return future.result(timeout=30)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        result: T = self.run(wrapper)
        return result

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def serving(authority: Authority, tick_seconds: float = 0.2) -> Iterator[tuple[Loop, AuthorityService]]:
    loop = Loop()
    server = AuthorityService(authority, ["127.0.0.1:0"], tick_seconds=tick_seconds)
    try:
        loop.run(server.start)
        yield loop, server
    finally:
        loop.run(server.stop)
        loop.close()


def unbound(
    tmp_path: Path, port: int, anchor: str, stub: str = "corp.internal."
) -> tuple[subprocess.Popen[bytes], int]:
    listen = free_port()
    conf = tmp_path / "unbound.conf"
    conf.write_text(
        textwrap.dedent(f"""
        server:
          interface: 127.0.0.1@{listen}
          port: {listen}
          username: ""
          chroot: ""
          directory: "{tmp_path}"
          pidfile: ""
          use-syslog: no
          logfile: "{tmp_path}/unbound.log"
          verbosity: 1
          do-not-query-localhost: no
          domain-insecure: ""
          val-log-level: 2
          trust-anchor: "{anchor}"
          module-config: "validator iterator"
          cache-max-ttl: 1
          cache-max-negative-ttl: 1
          val-bogus-ttl: 1
          infra-cache-min-rtt: 20
        stub-zone:
          name: "{stub}"
          stub-addr: 127.0.0.1@{port}
        remote-control:
          control-enable: no
        """)
    )
    process = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query("corp.internal.", "SOA"), "127.0.0.1", port=listen, timeout=0.5)
            return process, listen
        except Exception:
            time.sleep(0.1)
    process.kill()
    raise AssertionError((tmp_path / "unbound.log").read_text())


def knot_conf_head(tmp_path: Path, port: int) -> str:
    """The start of a knotd config: listening on ``port``, state under ``tmp_path``, the ``xfr`` TSIG key."""
    return textwrap.dedent(f"""
        server:
          listen: 127.0.0.1@{port}
          rundir: {tmp_path}
        database:
          storage: {tmp_path}/knotdb
        key:
          - id: xfr
            algorithm: hmac-sha256
            secret: {TSIG_SECRET}
        """)


@contextmanager
def knot_secondary(
    tmp_path: Path,
    knot_port: int,
    primary_port: int,
    origin: str = "corp.internal",
    extra: str = "",
    notify_key: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """knotd as a secondary of ``origin`` from our server on ``primary_port``: transfers with the ``xfr`` TSIG
    key and accepts our NOTIFY (only signed with ``xfr`` when ``notify_key``); ``extra`` is added to the
    zone's settings (Knot's defaults otherwise)."""
    need("knotd")
    notify_acl_key = "\n" + " " * 12 + "key: xfr" if notify_key else ""
    extra_lines = textwrap.indent(textwrap.dedent(extra).strip(), " " * 4) if extra else ""
    (tmp_path / "knot.conf").write_text(
        knot_conf_head(tmp_path, knot_port)
        + textwrap.dedent(f"""
        remote:
          - id: primary
            address: 127.0.0.1@{primary_port}
            key: xfr
        acl:
          - id: notify_from_primary
            address: 127.0.0.1
            action: notify{notify_acl_key}
        log:
          - target: {tmp_path}/knot.log
            any: info
        zone:
          - domain: {origin}
            storage: {tmp_path}
            file: secondary.zone
            master: primary
            acl: notify_from_primary
        """)
        + extra_lines
        + "\n"
    )
    # knotd does not make its database directory: without it the journal and timer databases fail to open ("not
    # exists"), and every IXFR falls back to AXFR because its changes cannot be stored.
    (tmp_path / "knotdb").mkdir(exist_ok=True)
    knot = subprocess.Popen(
        ["knotd", "-c", str(tmp_path / "knot.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield knot
    finally:
        knot.terminate()
        knot.wait()


def soa_serial(port: int, origin: dns.name.Name = ORIGIN) -> int | None:
    """The SOA serial a server on ``port`` answers, None when it does not answer for the zone (yet)."""
    try:
        response = dns.query.udp(dns.message.make_query(origin, "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except Exception:
        return None
    if response.rcode() != 0 or not response.answer:
        return None
    serial: int = response.answer[0][0].serial
    return serial


def wait_serial(port: int, serial: int, seconds: float = 15, origin: dns.name.Name = ORIGIN) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if soa_serial(port, origin) == serial:
            return
        time.sleep(0.2)
    raise AssertionError(f"secondary never reached serial {serial} (has {soa_serial(port, origin)})")
