"""Rate limits through `ztdns serve` over real sockets: UDP slips or drops, TCP and DoT are refused, and a valid
server cookie or a verified client certificate exempts a client from the address limits."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from fixtures.server import ServerProcess
from fixtures.tls import PROD_ID, Pki, pki
from fixtures.unbound import free_port

__all__ = ["pki"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

CONFIG = """
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[[listen]]
transport = "tcp"
address = "127.0.0.1:{port}"

[[listen]]
transport = "dot"
address = "127.0.0.1:{dot}"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
client_auth = "optional"

[resolver]
mode = "none"

[identities.lab]
networks = ["127.0.0.0/8"]
certificates = ["{prod}"]
policies = ["open"]

[policies.open]
allow = ["**"]

[[local_zones]]
name = "lab.test"
records = ["lab.test. 3600 IN SOA ns.lab.test. h.lab.test. 1 3600 600 86400 60", "www.lab.test. 300 IN A 192.0.2.1"]

[metrics]
address = "127.0.0.1:{metrics}"

[detect]
mode = "enforce"

[detect.rate_limit]
per_prefix = 20
burst_seconds = 1
slip = 2
"""


@dataclass
class Served:
    process: ServerProcess
    port: int  # Do53 UDP and TCP
    dot: int
    metrics: int


@pytest.fixture
def served(pki: Pki, tmp_path: Path) -> Served:
    port, dot, metrics = free_port(), free_port(), free_port()
    text = CONFIG.format(
        port=port, dot=dot, metrics=metrics, cert=pki.cert("server"), key=pki.key("server"), ca=pki.ca, prod=PROD_ID
    )
    return Served(ServerProcess(text, tmp_path, port=port), port, dot, metrics)


def _ede_text(message: dns.message.Message) -> str:
    return next((o.text or "" for o in message.options if isinstance(o, dns.edns.EDEOption)), "")


class Burst(NamedTuple):
    answers: list[dns.message.Message]
    span: float  # seconds from the first query sent to the last answer received


def _udp_burst(port: int, count: int, options: list[dns.edns.Option] | None = None) -> Burst:
    """Send ``count`` queries at once, then collect what comes back within a second."""
    wires = []
    for index in range(count):
        query = dns.message.make_query("www.lab.test.", "A", use_edns=0, options=options)
        query.id = index
        wires.append(query.to_wire())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    started = last = time.monotonic()
    for wire in wires:
        sock.sendto(wire, ("127.0.0.1", port))
    answers = []
    try:
        while True:
            answers.append(dns.message.from_wire(sock.recv(4096)))
            last = time.monotonic()
    except TimeoutError:
        pass
    sock.close()
    return Burst(answers, last - started)


def _stream_exchange(sock: socket.socket, count: int) -> list[dns.message.Message]:
    """Pipeline ``count`` queries in one write, then read the answers: the server sees them as one burst however
    slow the machine is (one round trip each would let the bucket refill between them)."""
    wire = dns.message.make_query("www.lab.test.", "A", use_edns=0).to_wire()
    sock.sendall((struct.pack("!H", len(wire)) + wire) * count)
    answers = []
    for _ in range(count):
        (length,) = struct.unpack("!H", _read(sock, 2))
        answers.append(dns.message.from_wire(_read(sock, length)))
    return answers


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _dot(pki: Pki, port: int, certificate: bool) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["dot"])
    if certificate:
        context.load_cert_chain(pki.cert("prod"), pki.key("prod"))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="dns.test")


def test_udp_over_the_limit_slips_or_drops(served: Served) -> None:
    with served.process:
        answers, span = _udp_burst(served.port, 100)
        full = [a for a in answers if not a.flags & dns.flags.TC and a.rcode() == dns.rcode.NOERROR and a.answer]
        truncated = [a for a in answers if a.flags & dns.flags.TC]
        # 20 q/s with a burst of 20: about 20 answered, plus what the bucket refilled while a loaded machine spread
        # the burst out in time.
        assert 15 <= len(full) <= 30 + 20 * span, (len(full), span)
        limited = 100 - len(full)
        assert abs(len(truncated) - limited / 2) <= 3, (len(truncated), limited)  # every second one; the rest dropped
        assert _ede_text(truncated[0]).startswith("detect=ratelimit prefix=127.0.0.1/32 rate=>20q/s limit=20q/s")
        time.sleep(1.5)  # the bucket refills
        assert _udp_burst(served.port, 1).answers[0].answer


def test_tcp_and_dot_over_the_limit_are_refused_but_a_certificate_is_exempt(served: Served, pki: Pki) -> None:
    with served.process:
        dot_port = served.dot
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as tcp:
            answers = _stream_exchange(tcp, 60)
        refused = [a for a in answers if a.rcode() == dns.rcode.REFUSED]
        assert len(refused) >= 30 and "detect=ratelimit" in _ede_text(refused[0])
        time.sleep(1.5)
        with _dot(pki, dot_port, certificate=False) as anonymous:
            answers = _stream_exchange(anonymous, 60)
        assert sum(a.rcode() == dns.rcode.REFUSED for a in answers) >= 30
        with _dot(pki, dot_port, certificate=True) as verified:
            answers = _stream_exchange(verified, 100)
        assert all(a.rcode() == dns.rcode.NOERROR for a in answers)
        with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics}/metrics", timeout=5) as page:
            exposition = page.read().decode()
        counted = re.search(
            r'^ztdns_detect_answers_total\{action="refuse",detector="ratelimit"\} (\S+)$', exposition, re.M
        )
        assert counted is not None and float(counted.group(1)) >= 60
        assert 'ztdns_detect_verdicts_total{action="refuse",detector="ratelimit"}' in exposition


def test_a_valid_server_cookie_exempts_from_the_address_limit(served: Served) -> None:
    with served.process:
        client_cookie = b"\x11" * 8
        first = _udp_burst(served.port, 1, [dns.edns.CookieOption(client_cookie, b"")]).answers[0]
        cookie = next(o for o in first.options if isinstance(o, dns.edns.CookieOption))
        assert cookie.client == client_cookie and len(cookie.server) == 16
        answers = _udp_burst(served.port, 100, [dns.edns.CookieOption(client_cookie, cookie.server)]).answers
        assert len(answers) == 100 and all(a.answer and not a.flags & dns.flags.TC for a in answers)
