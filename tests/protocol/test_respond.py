"""The respond stage writes the bytes dnspython's own EDNS handling gives (``use_edns`` + ``set_rcode`` +
``to_wire``), though it computes flags and rcodes as ints and renders the OPT record from its fields."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from ztdns.client import ClientInfo, Transport
from ztdns.model import EDE, Reason
from ztdns.pipeline import QueryContext
from ztdns.protocol.respond import RespondStage, response_to
from ztdns.replay import StoreHint
from ztdns.wire.header import UDP_PAYLOAD, rcode_of, udp_limit
from ztdns.wire.parse import parse_message

QNAME = "Www.Example.com."


def dnspython_respond(
    query: dns.message.Message, response: dns.message.Message | None, reason: Reason | None, stream: bool
) -> tuple[bytes, bytes]:
    """(sent, full): what the stage did with dnspython's EDNS calls before it rendered the OPT record itself."""
    if response is None:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
    response.id = query.id
    if query.flags & dns.flags.RD:
        response.flags |= dns.flags.RD | dns.flags.RA
    else:
        response.flags = (response.flags & ~dns.flags.RD) | dns.flags.RA
    response.flags = (response.flags & ~dns.flags.CD) | (query.flags & dns.flags.CD)  # RFC 4035 §3.2.2
    rcode = response.rcode()
    if query.edns >= 0:
        options: list[dns.edns.Option] = []
        if reason is not None:
            options.append(dns.edns.EDEOption(dns.edns.EDECode.make(int(reason.ede)), reason.text or None))
        response.use_edns(0, dns.flags.DO if query.ednsflags & dns.flags.DO else 0, UDP_PAYLOAD, options=options)
    else:
        response.use_edns(False)
    response.set_rcode(rcode)
    full = response.to_wire(max_size=65535)
    if len(full) <= (65535 if stream else udp_limit(query.payload)):
        return full, full
    truncated = dns.message.make_response(query)
    truncated.set_rcode(response.rcode())
    truncated.flags = response.flags | dns.flags.TC
    if query.edns >= 0:
        truncated.use_edns(0, response.ednsflags, UDP_PAYLOAD, options=list(response.options))
    else:
        truncated.use_edns(False)
    return truncated.to_wire(), full


def stage_respond(
    query: dns.message.Message, response: dns.message.Message | None, reason: Reason | None, stream: bool
) -> tuple[bytes, bytes]:
    transport = Transport.TCP if stream else Transport.UDP
    ctx = QueryContext(client=ClientInfo(transport, "192.0.2.1", 5353, stream=stream), wire=query.to_wire())
    ctx.query, ctx.response, ctx.reason = query, response, reason
    ctx.store = StoreHint(float("inf"))  # a replayable answer: the respond stage keeps the full rendering

    async def nothing(ctx: QueryContext) -> None:
        pass

    asyncio.run(RespondStage()(ctx, nothing))
    assert ctx.wire_response is not None and ctx.store.wire is not None
    return ctx.wire_response, ctx.store.wire


def answer(query: dns.message.Message) -> dns.message.Message:
    response = response_to(query)
    response.flags |= dns.flags.AD
    response.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "A", "192.0.2.1"))
    return response


def big_answer(query: dns.message.Message) -> dns.message.Message:
    """Over 512 and over 1232 bytes in one record (dnspython shuffles records within an RRset, we do not)."""
    response = response_to(query)
    response.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "TXT", " ".join(['"' + "x" * 250 + '"'] * 6)))
    return response


def nxdomain(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)  # with the OPT record make_response adds
    response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(
        dns.rrset.from_text(QNAME, 60, "IN", "SOA", "blocked.ztdns. hostmaster.blocked.ztdns. 1 3600 600 86400 60")
    )
    return response


def extended_rcode(rcode: dns.rcode.Rcode) -> Callable[[dns.message.Message], dns.message.Message]:
    def make(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)  # without EDNS, dnspython adds an OPT record for the extended bits
        return response

    return make


def chaos_a(query: dns.message.Message) -> dns.message.Message:
    """A type the fast encoder leaves to dnspython: the whole message is rendered by dnspython."""
    response = response_to(query)
    response.answer.append(dns.rrset.from_text(QNAME, 300, "CH", "A", "host.example.com. 1"))
    return response


def servfail(query: dns.message.Message) -> None:
    return None


QUERIES: list[Callable[[], dns.message.Message]] = [
    lambda: dns.message.make_query(QNAME, "A", use_edns=False),
    lambda: dns.message.make_query(QNAME, "A", use_edns=0),
    lambda: dns.message.make_query(QNAME, "A", want_dnssec=True),
    lambda: dns.message.make_query(QNAME, "A", use_edns=0, payload=512),
    lambda: dns.message.make_query(QNAME, "A", use_edns=0, payload=4096, flags=0),  # RD clear
    lambda: dns.message.make_query(QNAME, "A", want_dnssec=True, flags=dns.flags.RD | dns.flags.CD),  # CD copied
]
RESPONSES: list[Callable[[dns.message.Message], dns.message.Message | None]] = [
    answer,
    big_answer,
    nxdomain,
    extended_rcode(dns.rcode.BADVERS),
    extended_rcode(dns.rcode.BADCOOKIE),
    chaos_a,
    servfail,
]
REASONS = [None, Reason(EDE.BLOCKED, "policy p rule Ünï"), Reason(EDE.STALE_ANSWER, "")]


@pytest.mark.parametrize(
    ("make_query", "make_response", "reason", "stream"),
    list(itertools.product(QUERIES, RESPONSES, REASONS, [False, True])),
)
def test_same_bytes_as_dnspython_edns_handling(
    make_query: Callable[[], dns.message.Message],
    make_response: Callable[[dns.message.Message], dns.message.Message | None],
    reason: Reason | None,
    stream: bool,
) -> None:
    query = parse_message(make_query().to_wire())  # as the guard hands it on: flags are ints
    expected = dnspython_respond(query, make_response(query), reason, stream)
    assert stage_respond(query, make_response(query), reason, stream) == expected


def test_truncated_answer_keeps_rcode_and_ede() -> None:
    query = parse_message(dns.message.make_query(QNAME, "A", use_edns=0, payload=512).to_wire())
    sent, full = stage_respond(query, big_answer(query), Reason(EDE.BLOCKED, "x"), stream=False)
    assert len(full) > 512 and len(sent) < 512
    truncated = dns.message.from_wire(sent)
    assert truncated.flags & dns.flags.TC and not truncated.answer
    assert truncated.extended_errors()[0].code == dns.edns.EDECode.BLOCKED


def test_rcode_of_reads_the_extended_bits() -> None:
    query = dns.message.make_query(QNAME, "A", use_edns=0)
    for rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.BADVERS, dns.rcode.BADCOOKIE):
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        assert rcode_of(response) == response.rcode() == rcode


def test_cd_bit_is_copied_into_the_response() -> None:
    """RFC 4035 §3.2.2, whatever the resolver's response carried."""
    query = parse_message(
        dns.message.make_query(QNAME, "A", want_dnssec=True, flags=dns.flags.RD | dns.flags.CD).to_wire()
    )
    sent, _ = stage_respond(query, answer(query), None, stream=False)
    assert dns.message.from_wire(sent).flags & dns.flags.CD
    plain = parse_message(dns.message.make_query(QNAME, "A").to_wire())
    response = answer(plain)
    response.flags |= dns.flags.CD
    sent, _ = stage_respond(plain, response, None, stream=False)
    assert not dns.message.from_wire(sent).flags & dns.flags.CD
