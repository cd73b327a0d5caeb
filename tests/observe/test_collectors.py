"""Sinks against real collectors: dnstap frames read back by Debian's ``fstrm_capture`` and decoded by
``dnstap-ldns`` (an independent reader), over a unix socket and TCP, with reconnection; syslog received by a real
rsyslog (RFC 5424 over UDP, TCP and TLS; a collector whose certificate does not verify receives nothing)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
import pytest
from prometheus_client.metrics_core import Metric

from fixtures.tls import Pki
from fixtures.unbound import free_port
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution
from ztdns.observe.dnstap import DnstapSink
from ztdns.observe.events import Answered, QueryEvent
from ztdns.observe.formats import Formatter
from ztdns.observe.syslog import SyslogSink, tls_context

pytestmark = pytest.mark.slow

needs_fstrm = pytest.mark.skipif(
    shutil.which("fstrm_capture") is None or shutil.which("dnstap-ldns") is None,
    reason="needs Debian's fstrm_capture (fstrm-bin) and dnstap-ldns",
)
# rsyslog's TLS driver (Debian rsyslog-openssl), which the fixture's config loads.
OSSL_DRIVERS = list(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so")) + list(
    Path("/usr/lib/rsyslog").glob("lmnsd_ossl.so")
)
needs_rsyslog = pytest.mark.skipif(
    shutil.which("rsyslogd") is None or not OSSL_DRIVERS,
    reason="needs rsyslogd and its TLS driver (Debian rsyslog, rsyslog-openssl)",
)


def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class Capture:
    """fstrm_capture writing what it receives to a file; ``frames()`` stops it and decodes them with dnstap-ldns."""

    def __init__(self, directory: Path, *where: str) -> None:
        self.output = directory / f"capture-{time.monotonic_ns()}.fstrm"
        self.process = subprocess.Popen(
            ["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", *where, "-w", str(self.output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=10)

    def frames(self) -> str:
        self.stop()
        result = subprocess.run(
            ["dnstap-ldns", "-y", "-r", str(self.output)], capture_output=True, text=True, timeout=30, check=True
        )
        return result.stdout


def _event(name: str = "www.example.com", qid: int = 4242) -> QueryEvent:
    query = dns.message.make_query(name, "A", id=qid)
    response = dns.message.make_response(query)
    response.answer = [dns.rrset.from_text(name + ".", 60, "IN", "A", "192.0.2.10")]
    client = ClientInfo(Transport.UDP, "192.0.2.9", 40123)
    answer = Answered("resolved", "NOERROR", "lab", name + ".", "A", "allow")
    return QueryEvent(time.time(), client, answer, 0.0005, query.to_wire(), response.to_wire())


@needs_fstrm
def test_dnstap_over_a_unix_socket_is_read_by_dnstap_ldns(tmp_path: Path) -> None:
    path = tmp_path / "dnstap.sock"
    capture = Capture(tmp_path, "-u", str(path))
    try:
        wait_for(path.exists)
        sink = DnstapSink("dnstap0", 1000, "resolver-1", "ztdns test", unix=str(path))
        sink.put(_event())
        wait_for(lambda: sink.written == 1)
        sink.close()
        text = capture.frames()
    finally:
        capture.stop()
    assert text.count("type: CLIENT_QUERY") == 1 and text.count("type: CLIENT_RESPONSE") == 1
    assert 'identity: "resolver-1"' in text and 'version: "ztdns test"' in text
    assert 'query_address: "192.0.2.9"' in text and "query_port: 40123" in text
    assert "socket_protocol: UDP" in text and "id: 4242" in text
    assert "www.example.com.\tIN\tA" in text and "192.0.2.10" in text  # the query and the answer, decoded


@needs_fstrm
def test_dnstap_over_tcp_reconnects_when_the_collector_comes_back(tmp_path: Path) -> None:
    port = free_port()
    sink = DnstapSink("dnstap0", 1000, "resolver-1", "ztdns test", tcp=("127.0.0.1", port))
    try:
        sink.put(_event("before.example"))  # no collector yet: dropped and counted, never waited for
        wait_for(lambda: sink.dropped == 1)
        capture = Capture(tmp_path, "-a", "127.0.0.1", "-p", str(port))
        try:
            time.sleep(0.3)

            def delivered() -> bool:
                sink.put(_event("after.example"))
                time.sleep(0.2)
                return sink.written > 0

            wait_for(delivered, timeout=10)
            sink.close()
            text = capture.frames()
        finally:
            capture.stop()
    finally:
        sink.close()
    assert "after.example." in text and "before.example." not in text
    assert sink.connects == 1


@needs_fstrm
def test_frontend_queries_reach_dnstap_pseudonymised(tmp_path: Path) -> None:
    capture = Capture(tmp_path, "-u", str(tmp_path / "dnstap.sock"))

    class Upstream:
        async def resolve(self, question: Question) -> Resolution:
            response = dns.message.Message(id=0)
            response.flags = dns.flags.QR | dns.flags.RA
            response.answer = [dns.rrset.from_text(question.name, 60, "IN", "A", "192.0.2.10")]
            return Resolution(response)

        async def close(self) -> None:
            pass

        def collect(self) -> Iterable[Metric]:
            return ()

    config = parse_config(
        '[identities.lab]\nnetworks = ["127.0.0.0/8"]\npolicies = ["all"]\n[policies.all]\nallow = ["**"]\n'
        '[log.query_log]\noutput = "off"\n[[log.sinks]]\ntype = "dnstap"\nsocket = "dnstap.sock"\n'
        'privacy = "pseudonymised"\n',
        "test",
        tmp_path,
    )
    try:
        wait_for((tmp_path / "dnstap.sock").exists)

        async def run() -> None:
            frontend = Frontend(config, resolver_factory=lambda _: Upstream())
            frontend.bind_loop(asyncio.get_running_loop())
            wire = dns.message.make_query("siem.example", "A", id=99).to_wire()
            client = ClientInfo(Transport.UDP, "127.0.0.9", 40123)
            await frontend.handle(wire, client)
            await asyncio.sleep(0.3)
            await frontend.close()

        asyncio.run(run())
        text = capture.frames()
    finally:
        capture.stop()
    assert text.count("type: CLIENT_QUERY") == 1 and "siem.example." in text
    assert "127.0.0.9" not in text and "query_port: 40123" not in text and "socket_family: INET6" in text


RSYSLOG = """
global(workDirectory="{dir}" DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}" name="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" name="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls}" name="tls" streamDriver.name="ossl" streamDriver.mode="1"
      streamDriver.authMode="anon")
template(name="fields" type="string" string="%inputname%|%protocol-version%|%msgid%|%hostname%|%app-name%|%msg%\\n")
action(type="omfile" file="{dir}/received.log" template="fields")
"""


@pytest.fixture
def rsyslog(tmp_path: Path, pki: Pki) -> Iterator[tuple[dict[str, int], Path]]:
    ports = {"udp": free_port(), "tcp": free_port(), "tls": free_port()}
    config = tmp_path / "rsyslog.conf"
    config.write_text(RSYSLOG.format(dir=tmp_path, ca=pki.ca, cert=pki.cert("server"), key=pki.key("server"), **ports))
    process = subprocess.Popen(
        ["rsyslogd", "-n", "-f", str(config), "-i", str(tmp_path / "rsyslog.pid")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # rsyslog has no readiness signal in the foreground; its listeners are up by then
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield ports, tmp_path / "received.log"
    finally:
        process.terminate()
        process.wait(timeout=10)


@needs_rsyslog
@pytest.mark.parametrize("protocol", ["udp", "tcp", "tls"])
def test_rsyslog_receives_rfc5424_records(rsyslog: tuple[dict[str, int], Path], pki: Pki, protocol: str) -> None:
    ports, received = rsyslog
    context = tls_context(str(pki.ca)) if protocol == "tls" else None
    formatter = Formatter("ecs", None, "resolver-1")
    sink = SyslogSink(
        "syslog0", 100, formatter, "127.0.0.1", ports[protocol], protocol, 16, "resolver-1", context, "localhost"
    )
    sink.put(_event("syslog.example"))
    wait_for(lambda: sink.written == 1)
    sink.close()
    wait_for(lambda: received.exists() and "syslog.example" in received.read_text())
    [line] = received.read_text().splitlines()
    inputname, version, msgid, hostname, app, message = line.split("|", 5)
    assert (inputname, version, msgid, hostname, app) == (protocol, "1", "query", "resolver-1", "ztdns")
    assert '"dns": {"type": "answer", "id": "4242"' in message and '"name": "syslog.example"' in message


@needs_rsyslog
def test_syslog_over_tls_refuses_a_collector_it_cannot_verify(rsyslog: tuple[dict[str, int], Path], pki: Pki) -> None:
    ports, received = rsyslog
    context = tls_context(str(pki.other_ca))
    sink = SyslogSink(
        "syslog0", 100, Formatter("native", None, "x"), "127.0.0.1", ports["tls"], "tls", 16, "x", context, "localhost"
    )
    sink.put(_event("secret.example"))
    wait_for(lambda: sink.dropped == 1)
    sink.close()
    time.sleep(0.3)
    assert not received.exists() or "secret.example" not in received.read_text()
    assert sink.failures >= 1 and not sink.connected


async def ask_frontend(directory: Path, settings: str, name: str) -> bytes:
    """One A query for NAME from 127.0.0.9 through a Frontend allowing everything, without validation or query log,
    with SETTINGS (resolver and sinks); closed when the sinks had time to write."""
    config = parse_config(
        '[identities.lab]\nnetworks = ["127.0.0.0/8"]\npolicies = ["all"]\n[policies.all]\nallow = ["**"]\n'
        f'[dnssec]\nvalidation = false\n[log.query_log]\noutput = "off"\n{settings}',
        "test",
        directory,
    )
    frontend = Frontend(config)
    frontend.bind_loop(asyncio.get_running_loop())
    wire = dns.message.make_query(name, "A", id=5).to_wire()
    answer = await frontend.handle(wire, ClientInfo(Transport.UDP, "127.0.0.9", 40123))
    await asyncio.sleep(0.3)
    await frontend.close()
    assert answer is not None
    return answer


@needs_fstrm
def test_upstream_traffic_reaches_dnstap_as_resolver_messages(tmp_path: Path) -> None:
    from fixtures.fake_upstream import FakeUpstream, Reply

    def respond(query: dns.message.Message, transport: str) -> list[Reply]:
        response = dns.message.make_response(query)
        response.answer = [dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.77")]
        return [response.to_wire()]

    capture = Capture(tmp_path, "-u", str(tmp_path / "dnstap.sock"))
    try:
        wait_for((tmp_path / "dnstap.sock").exists)

        async def run() -> str:
            async with FakeUpstream(respond) as upstream:
                resolver = f'[[resolver.upstreams]]\naddress = "{upstream.address}"\n'
                sinks = '[[log.sinks]]\ntype = "dnstap"\nsocket = "dnstap.sock"\n'
                answer = await ask_frontend(tmp_path, resolver + sinks, "up.example")
                assert b"\xc0\x00\x02\x4d" in answer  # 192.0.2.77
                return upstream.address

        address = asyncio.run(run())
        text = capture.frames()
    finally:
        capture.stop()
    host, _, port = address.rpartition(":")
    kinds = re.findall(r"type: (\w+_(?:QUERY|RESPONSE))", text)
    assert sorted(kinds) == ["CLIENT_QUERY", "CLIENT_RESPONSE", "RESOLVER_QUERY", "RESOLVER_RESPONSE"]
    assert f'response_address: "{host}"' in text and f"response_port: {port}" in text
    assert "192.0.2.77" in text


@needs_fstrm
def test_recursion_traffic_reaches_dnstap_as_resolver_messages(tmp_path: Path) -> None:
    """Recursion's exchanges with authoritative servers (issue 18): RESOLVER_QUERY/RESPONSE with the server's
    address and port and both messages as sent and received; a sink with ``messages = ["client"]`` gets none."""
    from fixtures.fake_upstream import FakeUpstream, Reply

    def respond(query: dns.message.Message, transport: str) -> list[Reply]:
        # One server authoritative for everything, the root included: the answer at the first question.
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.answer = [dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.78")]
        return [response.to_wire()]

    everything = Capture(tmp_path, "-u", str(tmp_path / "all.sock"))
    clients = Capture(tmp_path, "-u", str(tmp_path / "clients.sock"))
    try:
        wait_for(lambda: (tmp_path / "all.sock").exists() and (tmp_path / "clients.sock").exists())
        (tmp_path / "hints.zone").write_text(". 3600 IN NS a.root.\na.root. 3600 IN A 127.0.0.1\n")

        async def run() -> int:
            async with FakeUpstream(respond) as upstream:
                resolver = (
                    '[resolver]\nmode = "recursive"\n[resolver.recursion]\nroot_hints = "hints.zone"\n'
                    f"allow_query_localhost = true\nqname_minimisation = false\nquery_port = {upstream.port}\n"
                )
                sinks = (
                    '[[log.sinks]]\ntype = "dnstap"\nsocket = "all.sock"\n'
                    '[[log.sinks]]\ntype = "dnstap"\nsocket = "clients.sock"\nmessages = ["client"]\n'
                )
                answer = await ask_frontend(tmp_path, resolver + sinks, "deep.example")
                assert b"\xc0\x00\x02\x4e" in answer  # 192.0.2.78
                assert len(upstream.queries) == 1
                return upstream.port

        port = asyncio.run(run())
        text = everything.frames()
        client_text = clients.frames()
    finally:
        everything.stop()
        clients.stop()
    kinds = re.findall(r"type: (\w+_(?:QUERY|RESPONSE))", text)
    assert sorted(kinds) == ["CLIENT_QUERY", "CLIENT_RESPONSE", "RESOLVER_QUERY", "RESOLVER_RESPONSE"]
    assert 'response_address: "127.0.0.1"' in text and f"response_port: {port}" in text
    assert "socket_protocol: UDP" in text
    # The upstream query as sent: RD clear, the name in its 0x20 case; the response as received, AA set.
    resolver_query = text.split("type: RESOLVER_QUERY")[1].split("type:")[0]
    assert "deep.example." in resolver_query.lower() and "flags: rd" not in resolver_query
    resolver_response = text.split("type: RESOLVER_RESPONSE")[1].split("type:")[0]
    assert "flags: qr aa" in resolver_response and "192.0.2.78" in resolver_response
    assert sorted(re.findall(r"type: (\w+_(?:QUERY|RESPONSE))", client_text)) == ["CLIENT_QUERY", "CLIENT_RESPONSE"]
