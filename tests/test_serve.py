"""`ztdns serve` as a subprocess, queried with real clients (kdig, dig, dnspython) and a real upstream (Unbound)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.server import ServerProcess
from fixtures.tools import require_tool
from fixtures.unbound import UnboundFactory, free_port

pytestmark = pytest.mark.slow

UPSTREAM_DATA = [
    "example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60",
    "ads.test. 3600 IN SOA ns.ads.test. hostmaster.ads.test. 1 3600 600 86400 60",
    "www.example.test. 300 IN A 192.0.2.10",
    "www.example.test. 300 IN AAAA 2001:db8::10",
    "alias.example.test. 300 IN CNAME www.example.test.",
    "sneaky.example.test. 300 IN CNAME tracker.ads.test.",
    "tracker.ads.test. 300 IN A 192.0.2.66",
    "short.example.test. 1 IN A 192.0.2.11",
    "popular.example.test. 3 IN A 192.0.2.12",
    "big.example.test. 300 IN TXT " + " ".join(f'"{"x" * 200}-{i}"' for i in range(4)),
    *[f"big.example.test. 300 IN A 192.0.2.{i}" for i in range(100, 160)],
]


def config_text(port: int, upstream: str, extra: str = "") -> str:
    return f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[[listen]]
transport = "tcp"
address = "127.0.0.1:{port}"

[resolver]
upstreams = [{{ address = "{upstream}" }}]
timeout = 0.5
budget = 1.5

[cache]
min_ttl = 0

[identities.office]
networks = ["127.0.0.1/32"]
policies = ["web"]

[identities.lab]
networks = ["127.0.0.2/32"]
policies = ["strict"]

[unknown_clients]
action = "refuse"

[policies.web]
allow = ["**.example.test", "example.test", "**.ads.test"]
deny = ["**.ads.test"]

[policies.strict]
allow = ["www.example.test"]
blocked_response = "refused"
include_rule_text = false

[dnssec]
validation = false  # the upstream serves unsigned private names

[log.query_log]
output = "stdout"

[metrics]
enabled = false
{extra}
"""


@pytest.fixture
def upstream(unbound_upstream: UnboundFactory) -> str:
    return unbound_upstream(UPSTREAM_DATA, zones=("example.test.", "ads.test."))


@pytest.fixture
def server(tmp_path: Path, upstream: str) -> Iterator[ServerProcess]:
    port = free_port()
    process = ServerProcess(config_text(port, upstream), tmp_path, port=port)
    process.start()
    yield process
    assert process.stop() == 0, process.stderr


def ask(
    port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1", tcp: bool = False, **kwargs: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, **kwargs)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3, source=source)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3, source=source)


def ede(response: dns.message.Message) -> tuple[int, str] | None:
    for option in response.options:
        if isinstance(option, dns.edns.EDEOption):
            return int(option.code), option.text or ""
    return None


def test_allowed_name_is_forwarded_and_cached(server: ServerProcess) -> None:
    port = server.port
    first = ask(port, "www.example.test")
    assert first.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in first.answer[0]] == ["192.0.2.10"]
    second = ask(port, "WWW.Example.TEST")  # a replay: the client's spelling comes back (0x20-safe)
    assert second.question[0].name.to_text() == "WWW.Example.TEST."
    assert second.answer[0].ttl <= 300
    log = server.log_lines(2)
    assert log[0]["decision"] == "allow" and log[0]["kind"] == "resolved" and log[0]["answers"] == ["192.0.2.10"]
    assert log[0]["identity"] == "office" and log[0]["client"] == "127.0.0.1"
    assert log[1]["cache_hit"] is True


def test_denied_name_gets_nxdomain_soa_and_ede_15_with_rule(server: ServerProcess) -> None:
    kdig = require_tool("kdig")
    port = server.port
    response = ask(port, "tracker.ads.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority and response.authority[0].rdtype == 6  # SOA
    assert ede(response) == (15, "policy=web rule=deny:**.ads.test")
    out = subprocess.run(
        [kdig, "+edns", "@127.0.0.1", "-p", str(port), "tracker.ads.test"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "NXDOMAIN" in out and "15 (Blocked)" in out and "policy=web rule=deny:**.ads.test" in out


def test_default_deny_and_per_identity_policy(server: ServerProcess) -> None:
    port = server.port
    denied = ask(port, "other.test")
    assert denied.rcode() == dns.rcode.NXDOMAIN
    assert ede(denied) == (15, "policy=web rule=default-deny")
    # 127.0.0.2 is the "lab" identity: only www.example.test, blocked answers are REFUSED without text.
    assert ask(port, "www.example.test", source="127.0.0.2").rcode() == dns.rcode.NOERROR
    strict = ask(port, "alias.example.test", source="127.0.0.2")
    assert strict.rcode() == dns.rcode.REFUSED
    assert ede(strict) == (15, "")


def test_unknown_client_refused_with_ede_18(server: ServerProcess) -> None:
    response = ask(server.port, "www.example.test", source="127.0.0.3")
    assert response.rcode() == dns.rcode.REFUSED
    assert ede(response) is not None and ede(response)[0] == 18  # type: ignore[index]


def test_cname_into_denied_name_is_blocked(server: ServerProcess) -> None:
    port = server.port
    allowed = ask(port, "alias.example.test")  # CNAME to an allowed name (Unbound's local-data does not chase it)
    assert allowed.rcode() == dns.rcode.NOERROR and allowed.answer[0].rdtype == 5
    for _ in range(2):  # the second time from cache/replay: still checked
        response = ask(port, "sneaky.example.test")
        assert response.rcode() == dns.rcode.NXDOMAIN
        assert ede(response) == (15, "policy=web rule=deny:**.ads.test")
        assert not response.answer


def test_canary_and_any(server: ServerProcess) -> None:
    port = server.port
    assert ask(port, "use-application-dns.net").rcode() == dns.rcode.NXDOMAIN
    any_answer = ask(port, "www.example.test", "ANY")
    # RFC 8482, minimal: Unbound answers ANY for its local data with NODATA, so the A probe's RRset stands for it.
    assert [rrset.rdtype for rrset in any_answer.answer] == [dns.rdatatype.A]


def test_truncation_over_udp_and_full_answer_over_tcp(server: ServerProcess) -> None:
    dig = require_tool("dig")
    port = server.port
    udp = ask(port, "big.example.test", "A", payload=512)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(port, "big.example.test", "A", tcp=True)
    assert len(tcp.answer[0]) == 60
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(port), "big.example.test", "+bufsize=512", "+short"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert len(out.split()) == 60  # dig retried over TCP by itself


def test_tcp_pipelining_answers_every_query(server: ServerProcess) -> None:
    port = server.port
    names = ["www.example.test", "alias.example.test", "nope.example.test", "tracker.ads.test"] * 5
    queries = [dns.message.make_query(name, "A", use_edns=0) for name in names]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
        answers: dict[int, dns.message.Message] = {}
        buffer = b""
        while len(answers) < len(queries):
            buffer += sock.recv(65535)
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                message = dns.message.from_wire(buffer[2 : 2 + size])
                answers[message.id] = message
                buffer = buffer[2 + size :]
    for query in queries:
        assert answers[query.id].question[0].name == query.question[0].name


def test_negative_answers_are_cached_and_stale_data_served_when_upstream_dies(
    server: ServerProcess, unbound_upstream: UnboundFactory, upstream: str
) -> None:
    port = server.port
    assert ask(port, "missing.example.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, "short.example.test").answer[0].ttl <= 1
    unbound_upstream.stop(upstream)
    cached = ask(port, "missing.example.test")
    assert cached.rcode() == dns.rcode.NXDOMAIN and ede(cached) is None  # from the negative cache
    time.sleep(2.1)  # short.example.test expires
    stale = ask(port, "short.example.test")
    assert stale.rcode() == dns.rcode.NOERROR
    assert stale.answer[0].to_text().endswith("192.0.2.11") and stale.answer[0].ttl == 30
    code = ede(stale)
    assert code is not None and code[0] == 3
    failed = ask(port, "never.example.test")
    assert failed.rcode() == dns.rcode.SERVFAIL
    code = ede(failed)
    assert code is not None and code[0] in (22, 23)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5))
def test_malformed_packets_never_stop_the_server(server: ServerProcess, junk: list[bytes]) -> None:
    port = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in junk:
            sock.sendto(packet, ("127.0.0.1", port))
    # Over TCP the server may close a stream whose framing is broken (a zero length): that is a fine answer too.
    with socket.create_connection(("127.0.0.1", port), timeout=3) as tcp, contextlib.suppress(ConnectionError):
        for packet in junk:
            tcp.sendall(len(packet).to_bytes(2, "big") + packet)
    assert ask(port, "www.example.test").rcode() == dns.rcode.NOERROR


def test_protocol_errors(server: ServerProcess) -> None:
    port = server.port
    query = dns.message.make_query("www.example.test", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    assert dns.query.udp(query, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.NOTIMP
    two = dns.message.make_query("www.example.test", "A")
    two.question.append(two.question[0])
    assert dns.query.udp(two, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.FORMERR
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    assert dns.query.udp(chaos, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.REFUSED
    badvers = dns.message.make_query("www.example.test", "A", use_edns=1)
    assert dns.query.udp(badvers, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.BADVERS
    response = dns.message.make_response(dns.message.make_query("www.example.test", "A"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(response.to_wire(), ("127.0.0.1", port))  # QR=1: ignored, never answered
        with pytest.raises(TimeoutError):
            sock.recvfrom(512)


def test_sighup_reload_keeps_old_config_on_error_and_applies_a_good_one(server: ServerProcess) -> None:
    port = server.port
    assert ask(port, "www.example.test").rcode() == dns.rcode.NOERROR
    good = server.config_path.read_text()
    server.config_path.write_text(good.replace('allow = ["**.example.test"', 'allow = ["*.*.x", "**.example.test"'))
    server.signal(signal.SIGHUP)
    assert server.wait_stderr("reload rejected")
    assert "policies.web.allow[0]: '*.*.x' is not a valid pattern" in server.stderr
    assert ask(port, "www.example.test").rcode() == dns.rcode.NOERROR  # old config still serving
    server.config_path.write_text(good.replace('deny = ["**.ads.test"]', 'deny = ["**.ads.test", "www.example.test"]'))
    server.signal(signal.SIGHUP)
    assert server.wait_stderr("reloaded")
    blocked = ask(port, "www.example.test")  # the replay from before the reload must not be served
    assert blocked.rcode() == dns.rcode.NXDOMAIN
    assert ede(blocked) == (15, "policy=web rule=deny:www.example.test")


def test_query_log_file_is_reopened_on_every_sighup(tmp_path: Path, upstream: str) -> None:
    port, log = free_port(), tmp_path / "queries.log"
    text = config_text(port, upstream).replace('output = "stdout"', f'output = "{log}"')
    server = ServerProcess(text, tmp_path, port=port)
    server.start()

    def logged(path: Path, name: str) -> bool:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if path.exists() and name in path.read_text():
                return True
            time.sleep(0.02)
        return False

    try:
        ask(port, "www.example.test")
        assert logged(log, "www.example.test")
        log.rename(tmp_path / "queries.log.1")  # what logrotate does before its postrotate signal
        server.config_path.write_text(text.replace("[metrics]", "[metrics]\nbroken = 1"))
        server.signal(signal.SIGHUP)  # a rejected config: the log is reopened all the same
        assert server.wait_stderr("reload rejected")
        ask(port, "ftp.example.test")
        assert logged(log, "ftp.example.test")
        assert "ftp.example.test" not in (tmp_path / "queries.log.1").read_text()
    finally:
        assert server.stop() == 0, server.stderr


def test_metrics_endpoint(tmp_path: Path, upstream: str) -> None:
    port, metrics_port = free_port(), free_port()
    text = config_text(port, upstream).replace(
        "[metrics]\nenabled = false", f'[metrics]\nenabled = true\naddress = "127.0.0.1:{metrics_port}"'
    )
    with ServerProcess(text, tmp_path):
        ask(port, "www.example.test")
        ask(port, "www.example.test")
        ask(port, "tracker.ads.test")
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'ztdns_queries_total{kind="blocked",rcode="NXDOMAIN",transport="udp"} 1.0' in body
    assert 'ztdns_queries_total{kind="cached",rcode="NOERROR",transport="udp"} 1.0' in body
    assert "ztdns_query_latency_seconds_bucket" in body
    assert "ztdns_cache_entries" in body


def test_sigterm_drains_and_exits_zero(tmp_path: Path, upstream: str) -> None:
    port = free_port()
    process = ServerProcess(config_text(port, upstream), tmp_path).start()
    ask(port, "www.example.test")
    assert process.stop() == 0
    assert "draining" in process.stderr


def test_workers_share_the_port_and_all_answer(tmp_path: Path, upstream: str) -> None:
    port = free_port()
    text = config_text(port, upstream).replace("[cache]", "[server]\nworkers = 2\n\n[cache]")
    process = ServerProcess(text, tmp_path, port=port).start()
    try:
        # Many source ports spread over both workers (SO_REUSEPORT hashes the 4-tuple): every query is answered.
        for _ in range(40):
            assert ask(port, "www.example.test").rcode() == dns.rcode.NOERROR
        children = subprocess.run(
            ["pgrep", "-P", str(process.proc.pid if process.proc else 0)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 2
    finally:
        assert process.stop() == 0, process.stderr


def test_built_in_default_config(tmp_path: Path) -> None:
    """`ztdns serve` without --config: Do53 on 127.0.0.1:5353 and the local zone ztdns.test, default deny."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ztdns", "serve"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        banner = ""
        while "listening on doq" not in banner:
            line = process.stderr.readline()
            assert line, banner
            banner += line
        assert "ztdns: serving config <built-in default>" in banner
        assert "ztdns: listening on udp 127.0.0.1:5353" in banner and "ztdns: listening on tcp 127.0.0.1:5353" in banner
        assert ask(5353, "www.ztdns.test").answer[0].to_text().endswith("127.0.0.1")
        blocked = ask(5353, "www.blocked.ztdns.test")
        assert blocked.rcode() == dns.rcode.NXDOMAIN and ede(blocked) == (
            15,
            "policy=default rule=deny:**.blocked.ztdns.test",
        )
        assert ask(5353, "example.com").rcode() == dns.rcode.NXDOMAIN
        assert (tmp_path / "state" / "pki" / "ca.crt").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_tcp_idle_timeout_and_connection_limit(tmp_path: Path, upstream: str) -> None:
    port = free_port()
    text = config_text(port, upstream).replace(
        f'transport = "tcp"\naddress = "127.0.0.1:{port}"',
        f'transport = "tcp"\naddress = "127.0.0.1:{port}"\nidle_timeout = 0.5\nmax_connections = 2',
    )
    with ServerProcess(text, tmp_path, port=port):
        first = socket.create_connection(("127.0.0.1", port), timeout=3)
        second = socket.create_connection(("127.0.0.1", port), timeout=3)
        time.sleep(0.1)
        third = socket.create_connection(("127.0.0.1", port), timeout=3)
        assert third.recv(1) == b""  # over the limit: closed at once
        third.close()
        time.sleep(1.0)  # idle past the timeout: the server closes both
        assert first.recv(1) == b"" and second.recv(1) == b""
        first.close()
        second.close()
        assert ask(port, "www.example.test", tcp=True).rcode() == dns.rcode.NOERROR  # room again


def test_popular_entries_are_prefetched_before_they_expire(
    tmp_path: Path, unbound_upstream: UnboundFactory, upstream: str
) -> None:
    port = free_port()
    text = config_text(port, upstream).replace(
        "[cache]\nmin_ttl = 0", "[cache]\nmin_ttl = 0\nprefetch_min_hits = 2\nprefetch_window = 0.5"
    )
    with ServerProcess(text, tmp_path, port=port):
        for _ in range(3):
            assert ask(port, "popular.example.test").rcode() == dns.rcode.NOERROR
        time.sleep(1.8)  # inside the last half of the 3 s TTL: this hit triggers a background refresh
        assert ask(port, "popular.example.test").rcode() == dns.rcode.NOERROR
        time.sleep(0.5)
        unbound_upstream.stop(upstream)
        time.sleep(1.2)  # past the first answer's expiry: only the prefetched copy can answer fresh
        fresh = ask(port, "popular.example.test")
        assert fresh.rcode() == dns.rcode.NOERROR and ede(fresh) is None
        assert fresh.answer[0].ttl > 0
