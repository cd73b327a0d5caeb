"""Protocol conformance of `ztdns serve` as outside tools probe it (issue 13): ANY (RFC 8482), FORMERR/NOTIMP
headers, RD=0. ISC's genreport is not packaged: its probes are replayed with dig flags and raw messages."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fixtures.hostile import server_config
from fixtures.server import ServerProcess
from fixtures.tools import require_tool
from fixtures.unbound import UnboundFactory, free_port

pytestmark = pytest.mark.slow

UPSTREAM_DATA = [
    "fwd.test. 3600 IN SOA ns.fwd.test. hostmaster.fwd.test. 1 3600 600 86400 60",
    "www.fwd.test. 300 IN A 192.0.2.10",
    "www.fwd.test. 300 IN AAAA 2001:db8::10",
    'www.fwd.test. 300 IN TXT "hello"',
    "one.fwd.test. 300 IN A 192.0.2.11",
    "alias.fwd.test. 300 IN CNAME www.fwd.test.",
    "sub.empty.fwd.test. 300 IN A 192.0.2.12",
]

LOCAL_ZONE = """
[[local_zones]]
name = "corp.example"
records = [
    "corp.example. 3600 IN SOA ns.corp.example. hostmaster.corp.example. 1 3600 600 86400 60",
    "corp.example. 3600 IN NS ns.corp.example.",
    "ns.corp.example. 3600 IN A 192.0.2.53",
    "host.corp.example. 600 IN A 192.0.2.1",
    "host.corp.example. 300 IN AAAA 2001:db8::1",
    "www.corp.example. 600 IN CNAME host.corp.example.",
]
"""


def config_text(port: int, upstream: str, resolver: str = "") -> str:
    return server_config(port, upstream, resolver="timeout = 0.5\nbudget = 1.5\n" + resolver, extra=LOCAL_ZONE)


@pytest.fixture
def upstream(unbound_upstream: UnboundFactory) -> str:
    return unbound_upstream(UPSTREAM_DATA, zones=("fwd.test.",))


@pytest.fixture
def server(tmp_path: Path, upstream: str) -> Iterator[ServerProcess]:
    port = free_port()
    process = ServerProcess(config_text(port, upstream), tmp_path, port=port)
    process.start()
    yield process
    assert process.stop() == 0, process.stderr


def dig_text(port: int, *args: str) -> str:
    binary = require_tool("dig")
    command = [binary, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout


def dig(port: int, *args: str) -> dns.message.Message:
    """Ask with dig, and read its printed response back with dnspython."""
    return _from_dig(dig_text(port, *args))


def _from_dig(text: str) -> dns.message.Message:
    """dig's presentation of a response as a dnspython message (header flags, rcode, sections, EDE)."""
    lines = text.splitlines()
    header = next(line for line in lines if "->>HEADER<<-" in line)
    flags_line = next(line for line in lines if line.startswith(";; flags:"))
    status = header.split("status: ")[1].split(",")[0]
    flags = flags_line.split(";; flags:")[1].split(";")[0].split()
    sections: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current = None
    for line in lines:
        if line.startswith(";; ") and line.rstrip().endswith("SECTION:"):
            current = line[3:].split()[0]
            continue
        if current in sections and line.strip() and not line.startswith(";"):
            sections[current].append(line)
    return dns.message.from_text(
        "id 1\nopcode QUERY\n"
        f"rcode {status}\nflags {' '.join(flags).upper()}\n"
        + "".join(f";{name}\n" + "\n".join(rows) + "\n" for name, rows in sections.items() if rows)
    )


def rdtypes(message: dns.message.Message) -> list[str]:
    return [dns.rdatatype.to_text(rrset.rdtype) for rrset in message.answer]


# -- item 2: ANY (RFC 8482) --------------------------------------------------------------------------------------


def test_any_for_local_names_is_truthful_then_minimal(server: ServerProcess) -> None:
    port = server.port
    missing = dig(port, "nx.corp.example", "ANY")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]
    assert missing.flags & dns.flags.AA
    alias = dig(port, "www.corp.example", "ANY")
    assert (alias.rcode(), rdtypes(alias)) == (dns.rcode.NOERROR, ["CNAME"])
    assert alias.flags & dns.flags.AA
    several = dig(port, "host.corp.example", "ANY")
    assert rdtypes(several) == ["HINFO"]
    assert several.answer[0].ttl == 300  # the smallest TTL of the data it stands for
    assert several.flags & dns.flags.AA
    single = dig(port, "ns.corp.example", "ANY")
    assert rdtypes(single) == ["A"]  # one RRset is already minimal
    empty = dig(port, "corp.example", "ANY", "+norec")
    assert rdtypes(empty) == ["HINFO"]  # SOA and NS at the apex


def test_any_for_forwarded_names_asks_the_upstream(server: ServerProcess) -> None:
    port = server.port
    for _ in range(2):  # fresh, then from the cache and the replay
        missing = dig(port, "nx.fwd.test", "ANY")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]
        assert not missing.flags & dns.flags.AA
        # Unbound answers ANY for its local data with NODATA: the A probe says what exists.
        several = dig(port, "www.fwd.test", "ANY")
        assert (several.rcode(), rdtypes(several)) == (dns.rcode.NOERROR, ["A"])
        alias = dig(port, "alias.fwd.test", "ANY")
        assert rdtypes(alias) == ["CNAME"]
        one = dig(port, "one.fwd.test", "ANY")
        assert rdtypes(one) == ["A"]
        nodata = dig(port, "empty.fwd.test", "ANY")  # an empty non-terminal: exists, no data
        assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])


# -- item 4: FORMERR keeps OPT, malformed options, NOTIMP flags ------------------------------------------------


def exchange(port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(wire, ("127.0.0.1", port))
        return sock.recv(65535)


def test_formerr_for_no_question_keeps_opt(server: ServerProcess) -> None:
    query = dns.message.make_query("www.fwd.test", "A", use_edns=0)
    query.question = []
    response = dns.message.from_wire(exchange(server.port, query.to_wire()))
    assert response.rcode() == dns.rcode.FORMERR
    assert response.edns == 0  # RFC 6891 §6.1.1: the OPT is in every response to a query with one
    assert response.id == query.id


def test_malformed_edns_option_length_is_formerr(server: ServerProcess) -> None:
    port = server.port
    good = dns.message.make_query("one.fwd.test", "A", use_edns=0)
    assert dns.message.from_wire(exchange(port, good.to_wire())).rcode() == dns.rcode.NOERROR  # now replayed
    # The same question, its OPT carrying an option whose length runs past the record's data.
    wire = good.to_wire()[:-2]
    bad_option = struct.pack("!HH", 10, 12) + b"12345678"
    wire += struct.pack("!H", len(bad_option)) + bad_option
    response = exchange(port, wire)
    assert response[3] & 0xF == dns.rcode.FORMERR
    assert struct.unpack("!H", response[6:8])[0] == 0  # no answer


@pytest.mark.parametrize("rd", [True, False])
def test_notimp_for_an_unknown_opcode_copies_no_flags(server: ServerProcess, rd: bool) -> None:
    """genreport's opcode/opcodeflg probes: dig +opcode=15 +noedns (+rec / +norec)."""
    out = dig_text(server.port, "+opcode=15", "+noedns", "+noad", "+rec" if rd else "+norec", "+header-only", ".")
    assert "status: NOTIMP" in out
    flags = next(line for line in out.splitlines() if line.startswith(";; flags:")).split(";")[2]
    assert flags.split(":")[1].split() == ["qr"]


# -- item 5: RD=0 ------------------------------------------------------------------------------------------------


def test_rd0_is_answered_from_cache_and_local_data_only(server: ServerProcess) -> None:
    port = server.port
    refused = dig_text(port, "+norec", "one.fwd.test", "A")
    assert "status: REFUSED" in refused
    assert "EDE: 20 (Not Authoritative)" in refused
    assert "status: NOERROR" in dig_text(port, "+norec", "host.corp.example", "A")  # local data
    assert "192.0.2.11" in dig_text(port, "one.fwd.test", "A")  # RD=1: resolved, and now cached
    cached = dig(port, "+norec", "one.fwd.test", "A")
    assert (cached.rcode(), rdtypes(cached)) == (dns.rcode.NOERROR, ["A"])
    assert not cached.flags & dns.flags.RD


def test_rd0_recursed_when_configured(tmp_path: Path, upstream: str) -> None:
    port = free_port()
    config = config_text(port, upstream, resolver='answer_rd0 = "recurse"')
    with ServerProcess(config, tmp_path, port=port) as process:
        answer = dig(process.port, "+norec", "one.fwd.test", "A")
        assert (answer.rcode(), rdtypes(answer)) == (dns.rcode.NOERROR, ["A"])
