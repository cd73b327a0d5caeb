"""Forwarder: query building and reply matching from bytes, then real exchanges with Unbound and hostile fakes."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fixtures.fake_upstream import FakeUpstream, FromOtherPort, Reply, Respond, black_hole, closed_port
from fixtures.unbound import UnboundFactory
from ztdns.config.resolver import ResolverConfig, UpstreamConfig
from ztdns.model import EDE, Question, Resolution, Resolver
from ztdns.resolver.forward import (
    Forwarder,
    Peer,
    ReplyFilter,
    UdpExchange,
    build_query,
    decode_reply,
    reply_matches,
)
from ztdns.resolver.health import UpstreamHealth

Run = Callable[[Coroutine[Any, Any, Any]], Any]
FAST = {"timeout": 0.25, "budget": 2.0}  # short timeouts keep black-hole tests quick


def question(name: str, rdtype: str = "A", **flags: bool) -> Question:
    return Question(dns.name.from_text(name), dns.rdatatype.from_text(rdtype), dns.rdataclass.IN, **flags)


def forwarder(*addresses: str, **settings: Any) -> Forwarder:
    upstreams = [UpstreamConfig(address=address) for address in addresses]
    return Forwarder(ResolverConfig(upstreams=upstreams, **settings))


def answer(query: dns.message.Message, address: str = "192.0.2.1", rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR:
        asked = query.question[0]
        response.answer.append(dns.rrset.from_text(asked.name, 300, "IN", "A", address))
    return response.to_wire()


def answering(query: dns.message.Message, transport: str) -> list[Reply]:
    """A well-behaved fake upstream: every question's answer is 192.0.2.1."""
    return [answer(query)]


def answering_rcode(rcode: dns.rcode.Rcode) -> Respond:
    return lambda query, _: [answer(query, rcode=rcode)]


def health_of(forward: Forwarder) -> dict[str, UpstreamHealth]:
    return {health.address: health for health in forward.health()}


def addresses(resolution: Resolution) -> list[str]:
    assert resolution.response is not None, resolution.reason
    return sorted(rdata.to_text() for rrset in resolution.response.answer for rdata in rrset)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Network tests run on both event loops the server may use."""
    runner: Run = uvloop.run if request.param == "uvloop" else asyncio.run
    return runner


# --- the query we send ---------------------------------------------------------------------------------------


def test_query_has_rd_edns_payload_and_random_ids() -> None:
    queries = [build_query(question("www.test."), 1232) for _ in range(64)]
    query = queries[0]
    assert query.flags & dns.flags.RD
    assert not query.flags & dns.flags.CD
    assert query.edns == 0 and query.payload == 1232
    assert not query.ednsflags & dns.flags.DO
    assert len({q.id for q in queries}) > 50  # 64 draws from 65536: a repeat or two at most


def test_query_carries_do_and_cd_when_asked() -> None:
    query = build_query(question("www.test.", "AAAA", dnssec_ok=True, checking_disabled=True), 1400)
    assert query.ednsflags & dns.flags.DO
    assert query.flags & dns.flags.CD
    assert query.payload == 1400
    assert query.question[0].rdtype == dns.rdatatype.AAAA


# --- which replies match -------------------------------------------------------------------------------------


def _other_question(query: dns.message.Message, name: str, rdtype: str = "A", rdclass: str = "IN") -> bytes:
    other = dns.message.make_query(name, rdtype, rdclass)
    other.id = query.id
    return answer(other) if rdclass == "IN" and rdtype == "A" else dns.message.make_response(other).to_wire()


def _mismatches(query: dns.message.Message) -> dict[str, bytes]:
    """Replies that look like answers but must be ignored, each carrying the attacker's address 6.6.6.6."""
    right = answer(query, "6.6.6.6")
    not_response = bytearray(right)
    not_response[2] &= 0x7F  # clear QR
    notify = dns.message.from_wire(right)
    notify.set_opcode(dns.opcode.NOTIFY)
    no_question = bytearray(right)
    no_question[4:6] = b"\x00\x00"
    return {
        "wrong id": struct.pack("!H", (query.id + 1) % 65536) + right[2:],
        "wrong name": _other_question(query, "evil.test."),
        "wrong type": _other_question(query, "www.test.", "AAAA"),
        "wrong class": _other_question(query, "www.test.", "A", "CH"),
        "qr=0": bytes(not_response),
        "opcode": notify.to_wire(),
        "qdcount=0": bytes(no_question),
        "short": right[:11],
        "cut question": right[:20],
        "garbage": b"\xff" * 40,
    }


def test_matching_reply_is_accepted_and_name_case_is_ignored() -> None:
    query = build_query(question("www.test."), 1232)
    assert reply_matches(query, answer(query))
    mixed = dns.message.make_query("WwW.TeSt.", "A")
    mixed.id = query.id
    assert reply_matches(query, answer(mixed))
    reply = decode_reply(query, answer(mixed))
    assert reply is not None and reply.answer[0][0].to_text() == "192.0.2.1"


@pytest.mark.parametrize("kind", list(_mismatches(dns.message.make_query("x.", "A"))))
def test_mismatched_reply_is_rejected(kind: str) -> None:
    query = build_query(question("www.test."), 1232)
    wire = _mismatches(query)[kind]
    assert not reply_matches(query, wire)
    assert decode_reply(query, wire) is None


def test_matching_header_with_garbage_body_does_not_decode() -> None:
    query = build_query(question("www.test."), 1232)
    header_and_question = answer(query)[:26]  # 12 header + www.test. (10) + type/class, answer count still 1
    assert reply_matches(query, header_and_question + b"\xc0\xff\x00")
    assert decode_reply(query, header_and_question + b"\xc0\xff\x00") is None


@given(body=st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    query = dns.message.make_query("www.test.", "A")
    query.id = 0x1234
    for wire in (body, b"\x12\x34\x81\x80\x00\x01" + body):
        reply_matches(query, wire)
        decode_reply(query, wire)


def test_udp_exchange_ignores_other_peers_and_keeps_waiting() -> None:
    async def main() -> None:
        query = build_query(question("www.test."), 1232)
        exchange = UdpExchange(ReplyFilter(query.to_wire()), Peer("127.0.0.1", 5300))
        exchange.datagram_received(answer(query, "6.6.6.6"), ("127.0.0.2", 5300))
        exchange.datagram_received(answer(query, "6.6.6.6"), ("127.0.0.1", 5301))
        for wire in _mismatches(query).values():
            exchange.datagram_received(wire, ("127.0.0.1", 5300))
        assert not exchange.reply.done()
        exchange.datagram_received(answer(query), ("127.0.0.1", 5300))
        exchange.datagram_received(answer(query, "6.6.6.6"), ("127.0.0.1", 5300))  # late duplicates change nothing
        reply = exchange.reply.result()
        assert reply is not None and reply.answer[0][0].to_text() == "192.0.2.1"

    asyncio.run(main())


def test_udp_exchange_reports_truncation() -> None:
    async def main() -> None:
        query = build_query(question("big.test.", "TXT"), 1232)
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.TC
        exchange = UdpExchange(ReplyFilter(query.to_wire()), Peer("::1", 53))
        exchange.datagram_received(truncated.to_wire(), ("::1", 53, 0, 0))
        assert exchange.reply.result() is None

    asyncio.run(main())


# --- real exchanges with Unbound ----------------------------------------------------------------------------

ZONE = [
    "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300",
    "www.test. 300 IN A 192.0.2.1",
    "www.test. 300 IN A 192.0.2.2",
    "www.test. 300 IN AAAA 2001:db8::1",
    "mail.test. 300 IN MX 10 mx.test.",
    *(f'big.test. 300 IN TXT "{i:03d}{"x" * 200}"' for i in range(20)),  # ~4 KB: truncated over UDP
]


@pytest.mark.slow
def test_forward_through_unbound(unbound_upstream: UnboundFactory) -> None:
    upstream = unbound_upstream(ZONE)

    async def main() -> None:
        resolver: Resolver = forwarder(upstream)
        a = await resolver.resolve(question("www.test."))
        assert addresses(a) == ["192.0.2.1", "192.0.2.2"] and a.upstream == upstream and a.reason is None
        aaaa = await resolver.resolve(question("WWW.test.", "AAAA"))
        assert addresses(aaaa) == ["2001:db8::1"]
        nx = await resolver.resolve(question("nope.test."))
        assert nx.response is not None and nx.response.rcode() == dns.rcode.NXDOMAIN
        assert nx.response.authority[0].rdtype == dns.rdatatype.SOA
        nodata = await resolver.resolve(question("mail.test.", "AAAA"))
        assert nodata.response is not None and nodata.response.rcode() == dns.rcode.NOERROR
        assert not nodata.response.answer and nodata.response.authority[0].rdtype == dns.rdatatype.SOA
        await resolver.close()

    asyncio.run(main())


@pytest.mark.slow
def test_truncated_udp_answer_is_fetched_over_tcp(unbound_upstream: UnboundFactory) -> None:
    upstream = unbound_upstream(ZONE)
    host, port = UpstreamConfig(address=upstream).hostport()
    direct = dns.query.udp(build_query(question("big.test.", "TXT"), 1232), host, port=port, timeout=2)
    assert direct.flags & dns.flags.TC  # the precondition: Unbound really truncates this over UDP

    async def main() -> None:
        forward = forwarder(upstream)
        resolution = await forward.resolve(question("big.test.", "TXT"))
        assert resolution.response is not None
        assert not resolution.response.flags & dns.flags.TC
        assert len(resolution.response.answer[0]) == 20
        await forward.close()

    asyncio.run(main())


# --- hostile and broken upstreams ----------------------------------------------------------------------------


def test_mismatched_replies_are_ignored_until_the_real_answer(run: Run) -> None:
    def respond(query: dns.message.Message, transport: str) -> list[Reply]:
        spoofs: list[Reply] = [FromOtherPort(answer(query, "6.6.6.6"))]
        spoofs += _mismatches(query).values()
        mixed_case = dns.message.make_query(query.question[0].name.to_text().upper(), "A")
        mixed_case.id = query.id
        return [*spoofs, answer(mixed_case, "192.0.2.1")]

    async def main() -> None:
        async with FakeUpstream(respond) as fake:
            forward = forwarder(fake.address, **FAST)
            resolution = await forward.resolve(question("www.test."))
            assert addresses(resolution) == ["192.0.2.1"]
            assert forward.health()[0].failures == 0
            await forward.close()

    run(main())


def test_only_mismatched_replies_mean_timeout(run: Run) -> None:
    async def main() -> None:
        async with FakeUpstream(lambda query, _: list(_mismatches(query).values())) as fake:
            forward = forwarder(fake.address, attempts=1, **FAST)
            resolution = await forward.resolve(question("www.test."))
            assert resolution.response is None and resolution.reason is not None
            assert resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
            assert resolution.reason.text == f"upstreams {fake.address} timeout"
            await forward.close()

    run(main())


def test_tcp_ignores_mismatched_frames(run: Run) -> None:
    def respond(query: dns.message.Message, transport: str) -> list[Reply]:
        if transport == "udp":
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC
            return [truncated.to_wire()]
        return [*_mismatches(query).values(), answer(query, "192.0.2.9")]

    async def main() -> None:
        async with FakeUpstream(respond) as fake:
            forward = forwarder(fake.address, **FAST)
            assert addresses(await forward.resolve(question("www.test."))) == ["192.0.2.9"]
            assert [transport for _, transport in fake.queries] == ["udp", "tcp"]
            await forward.close()

    run(main())


def test_query_flags_fresh_ids_and_source_ports_reach_the_upstream(run: Run) -> None:
    async def main() -> None:
        async with FakeUpstream(answering) as fake:
            forward = forwarder(fake.address, **FAST)
            await forward.resolve(question("www.test.", dnssec_ok=True, checking_disabled=True))
            sent, _ = fake.queries[0]
            assert sent.flags & dns.flags.RD and sent.flags & dns.flags.CD
            assert sent.ednsflags & dns.flags.DO and sent.payload == 1232
            for _ in range(4):
                await forward.resolve(question("www.test."))
            assert len({q.id for q, _ in fake.queries}) >= 4
            assert len(set(fake.udp_sources)) >= 4  # a new socket, so a new random port, per query
            await forward.close()

    run(main())


def test_failover_from_closed_port_and_black_hole(run: Run) -> None:
    async def main() -> None:
        refused = closed_port()
        async with FakeUpstream(answering) as fake:
            with black_hole() as silent:
                forward = forwarder(refused, silent, fake.address, attempts=3, **FAST)
                resolution = await forward.resolve(question("www.test."))
                assert addresses(resolution) == ["192.0.2.1"]
                assert resolution.upstream == fake.address
                health = health_of(forward)
                assert health[refused].errors == 1 and health[silent].errors == 1
                assert health[fake.address].queries == 1 and health[fake.address].srtt is not None
                await forward.close()

    run(main())


def test_dead_upstream_is_skipped_while_held_down(run: Run) -> None:
    async def main() -> None:
        async with FakeUpstream(answering) as fake:
            with black_hole() as silent:
                forward = forwarder(silent, fake.address, failures_before_down=1, backoff_initial=0.3, **FAST)
                await forward.resolve(question("a.test."))  # silent first (untried, config order), then fake
                assert not health_of(forward)[silent].up and 0 < health_of(forward)[silent].down_for <= 0.3
                assert addresses(await forward.resolve(question("b.test."))) == ["192.0.2.1"]
                assert health_of(forward)[silent].queries == 1  # straight to the healthy one
                await asyncio.sleep(0.35)
                assert health_of(forward)[silent].up  # the hold expired
                await forward.close()

    run(main())


def test_hold_down_doubles_while_the_upstream_stays_dead(run: Run) -> None:
    async def main() -> None:
        with black_hole() as silent:
            forward = forwarder(silent, attempts=1, failures_before_down=1, backoff_initial=0.3, timeout=0.1)
            await forward.resolve(question("a.test."))
            assert 0 < forward.health()[0].down_for <= 0.3
            # Held down but the only upstream: still tried (a total outage probes), without stacking holds.
            await forward.resolve(question("b.test."))
            assert forward.health()[0].queries == 2 and forward.health()[0].down_for <= 0.3
            await asyncio.sleep(0.25)
            await forward.resolve(question("c.test."))  # fails again once the hold is over: twice as long
            assert 0.3 < forward.health()[0].down_for <= 0.6
            await forward.close()

    run(main())


def test_all_black_holes_give_ede_22_and_all_refusals_ede_23(run: Run) -> None:
    async def main() -> None:
        with black_hole() as first, black_hole() as second:
            forward = forwarder(first, second, attempts=2, **FAST)
            resolution = await forward.resolve(question("www.test."))
            assert resolution.response is None and resolution.reason is not None
            assert resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
            assert resolution.reason.text == f"upstreams {first} timeout; {second} timeout"
            await forward.close()
        first_closed, second_closed = closed_port(), closed_port()
        forward = forwarder(first_closed, second_closed, attempts=3, **FAST)
        resolution = await forward.resolve(question("www.test."))
        assert resolution.reason is not None and resolution.reason.ede is EDE.NETWORK_ERROR
        assert resolution.reason.text == (
            f"upstreams {first_closed} connection refused; {second_closed} connection refused"
        )
        await forward.close()

    run(main())


def test_timeout_and_refusal_together_name_both_and_give_ede_22(run: Run) -> None:
    async def main() -> None:
        refused = closed_port()
        with black_hole() as silent:
            forward = forwarder(silent, refused, attempts=2, **FAST)
            resolution = await forward.resolve(question("www.test."))
            assert resolution.reason is not None and resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
            assert resolution.reason.text == f"upstreams {silent} timeout; {refused} connection refused"
            await forward.close()

    run(main())


def test_servfail_is_returned_only_after_the_others_were_tried(run: Run) -> None:
    async def main() -> None:
        async with FakeUpstream(answering_rcode(dns.rcode.SERVFAIL)) as failing, FakeUpstream(answering) as working:
            forward = forwarder(failing.address, working.address, **FAST)
            resolution = await forward.resolve(question("www.test."))
            assert addresses(resolution) == ["192.0.2.1"] and resolution.upstream == working.address
            with black_hole() as silent:
                forward = forwarder(failing.address, silent, attempts=2, **FAST)
                resolution = await forward.resolve(question("www.test."))
                assert resolution.response is not None and resolution.response.rcode() == dns.rcode.SERVFAIL
                assert resolution.upstream == failing.address
                assert health_of(forward)[silent].queries == 1  # the other upstream was tried before giving up
                assert health_of(forward)[failing.address].errors == 0  # SERVFAIL is an answer, not a fault

    run(main())


def test_refused_from_upstream_fails_over_and_counts_against_it(run: Run) -> None:
    async def main() -> None:
        async with FakeUpstream(answering_rcode(dns.rcode.REFUSED)) as refusing, FakeUpstream(answering) as working:
            forward = forwarder(refusing.address, working.address, **FAST)
            assert addresses(await forward.resolve(question("www.test."))) == ["192.0.2.1"]
            assert health_of(forward)[refusing.address].errors == 1
            alone = forwarder(refusing.address, attempts=2, **FAST)
            resolution = await alone.resolve(question("www.test."))
            assert resolution.reason is not None and resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
            assert resolution.reason.text == f"upstreams {refusing.address} refused"

    run(main())


def test_budget_bounds_the_whole_resolution(run: Run) -> None:
    async def main() -> None:
        with black_hole() as silent:
            forward = forwarder(silent, attempts=5, timeout=0.2, budget=0.3)
            started = time.monotonic()
            resolution = await forward.resolve(question("www.test."))
            assert time.monotonic() - started < 0.9  # not 5 tries × 0.2 s
            assert resolution.reason is not None and resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
            assert forward.health()[0].queries == 2  # 0.2 s, then the 0.1 s left
            await forward.close()

    run(main())


def test_close_ends_queries_in_flight_and_later_ones(run: Run) -> None:
    async def main() -> None:
        with black_hole() as silent:
            forward = forwarder(silent, attempts=1, timeout=5, budget=5)
            pending = asyncio.ensure_future(forward.resolve(question("www.test.")))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await forward.close()
            resolution = await pending
            assert time.monotonic() - started < 0.5
            assert resolution.reason is not None and resolution.reason.ede is EDE.NETWORK_ERROR
            assert resolution.reason.text == f"upstreams {silent} socket closed"
            after = await forward.resolve(question("www.test."))
            assert after.reason is not None and after.reason.text == "forwarder closed"

    run(main())


def test_no_upstreams_is_an_answer_not_an_exception() -> None:
    resolution = asyncio.run(forwarder().resolve(question("www.test.")))
    assert resolution.reason is not None and resolution.reason.ede is EDE.NO_REACHABLE_AUTHORITY
    assert resolution.reason.text == "no upstreams configured"


def test_ipv6_upstream_over_loopback(run: Run) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")

    async def main() -> None:
        forward = forwarder(f"[::1]:{closed_port().rsplit(':', 1)[1]}", attempts=1, **FAST)
        resolution = await forward.resolve(question("www.test."))
        assert resolution.reason is not None and resolution.reason.text.startswith("upstreams [::1]:")
        await forward.close()

    run(main())


def test_backoff_initial_above_max_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="backoff_initial"):
        ResolverConfig(backoff_initial=90, backoff_max=60)
