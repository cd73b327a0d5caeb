"""Policy stages: decide on the question, then on every name the answer's CNAME/DNAME chain leads to.

Blocked answers are synthesised here: NXDOMAIN with an SOA by default (REFUSED breaks some stub resolvers),
NODATA or REFUSED per policy, local data (a sinkhole address or a CNAME) or no answer at all (RPZ DROP),
always with EDE 15 (Blocked) whose EXTRA-TEXT names the policy and rule unless the policy turns the text off.
"""

from __future__ import annotations

import copy
import ipaddress
import time

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztdns.model import EDE, Kind, Reason
from ztdns.pipeline import Asked, AskedNext
from ztdns.policy import Decision, View
from ztdns.policy.lists import LocalData
from ztdns.replay import StoreHint
from ztdns.wire.encode import name_forms
from ztdns.wire.grant_scope import GRANT_SCOPE, encode_scope
from ztdns.wire.query import name_key

# TTL of synthesised blocked answers and of their SOA (the negative-caching TTL clients apply).
BLOCKED_TTL = 60
# How long the fast path may replay a synthesised answer; reloads drop replays anyway.
SYNTHESISED_REPLAY_SECONDS = 300.0

# Browsers (Firefox) check this canary before switching to their own DoH: NXDOMAIN keeps them on us.
_CANARY = dns.name.from_text("use-application-dns.net.")
_CANARY_WIRE = _CANARY.to_wire()


def blocked_response(query: dns.message.Message, decision: Decision) -> dns.message.Message:
    response = dns.message.make_response(query)
    qname = query.question[0].name
    if decision.blocked_response == "refused":
        response.set_rcode(dns.rcode.REFUSED)
        return response
    if decision.blocked_response == "local" and decision.local is not None:
        if _local_data(response, decision.local):
            return response
    elif decision.blocked_response == "nxdomain":
        response.set_rcode(dns.rcode.NXDOMAIN)
    response.authority.append(_synthetic_soa(qname))
    return response


def local_response(query: dns.message.Message, local: LocalData) -> dns.message.Message:
    """The answer of a rewrite: its data, or NODATA (with the synthesised SOA) for other query types."""
    response = dns.message.make_response(query)
    if not _local_data(response, local):
        response.authority.append(_synthetic_soa(query.question[0].name))
    return response


def _local_data(response: dns.message.Message, local: LocalData) -> bool:
    """Add the local data that answers the response's question; False when none does (NODATA)."""
    question = response.question[0]
    if local.cname is not None:
        response.answer.append(dns.rrset.from_text(question.name, BLOCKED_TTL, "IN", "CNAME", f"{local.cname}."))
        return True
    version = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
    addresses = [a for a in local.addresses if ipaddress.ip_address(a).version == version]
    if not addresses:
        return False
    response.answer.append(dns.rrset.from_text_list(question.name, BLOCKED_TTL, "IN", question.rdtype, addresses))
    return True


def _synthetic_soa(owner: dns.name.Name) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        owner,
        BLOCKED_TTL,
        dns.rdataclass.IN,
        dns.rdatatype.SOA,
        f"blocked.ztdns. hostmaster.blocked.ztdns. 1 3600 600 86400 {BLOCKED_TTL}",
    )


def _block(ctx: Asked, decision: Decision, name: str) -> None:
    ctx.kind = Kind.BLOCKED
    ctx.decision = decision
    ctx.decided_name = name
    ctx.reason = Reason(EDE.BLOCKED, decision.ede_text() if decision.include_rule_text else "")
    if decision.blocked_response == "drop":
        ctx.drop = True  # RPZ DROP: the client times out, as with Unbound and BIND
        return
    ctx.response = blocked_response(ctx.query, decision)
    ctx.store = StoreHint(time.monotonic() + SYNTHESISED_REPLAY_SECONDS)


class SpecialNamesStage:
    """Names with fixed answers that no policy can change."""

    name = "special"

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        # Compared by lower-cased wire form (cached for the rendering): Name.__eq__ is a Python loop.
        if name_forms(ctx.question.name).lower == _CANARY_WIRE:
            response = dns.message.make_response(ctx.query)
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_synthetic_soa(_CANARY))
            ctx.response = response
            ctx.kind = Kind.SPECIAL
            ctx.store = StoreHint(time.monotonic() + SYNTHESISED_REPLAY_SECONDS)
            return
        await call_next(ctx)


class PolicyStage:
    """Default deny: the question's name must be allowed by the client's policies."""

    name = "policy"

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        view = ctx.view
        assert view is not None  # the identify stage before this one refuses clients without a view
        name = name_key(ctx.question.name)
        decision = view.decide(name, ctx.question.rdtype)
        ctx.decision = decision
        ctx.decided_name = name
        if not decision.allowed:
            _block(ctx, decision, name)
            return
        if decision.ports and _asks_scope(ctx.query):
            # An agent that enforces scopes asked: the answer says which ports its addresses open (docs/agent.md).
            scope = dns.edns.GenericOption(dns.edns.OptionType.make(GRANT_SCOPE), encode_scope(decision.ports))
            ctx.edns_options = (*ctx.edns_options, scope)
        if decision.local is not None:  # a rewrite: answered here, allowed, no EDE
            ctx.response = local_response(ctx.query, decision.local)
            ctx.kind = Kind.LOCAL
            ctx.store = StoreHint(time.monotonic() + SYNTHESISED_REPLAY_SECONDS)
            return
        await call_next(ctx)


def _asks_scope(query: dns.message.Message) -> bool:
    return any(option.otype == GRANT_SCOPE for option in query.options)


_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class ChainCheckStage:
    """An allowed name must not lead into a disallowed one: every CNAME/DNAME target is decided too, and
    an answer holding an address an RPZ-IP trigger lists is blocked like a denied name (with its EDE).

    An allowed answer relays no other name's data: answer-section records whose owner is not on the question's
    chain (the name, the CNAME targets followed from it, the DNAMEs above them) are removed, and so are address
    records anywhere in the response for names the client's policy denies (an ``A`` for a denied name in the
    additional section would otherwise reach the client, and an agent or cache might use it).

    It sits before local zones and the cache so that it sees their answers as well as fresh ones.
    """

    name = "chain"

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        await call_next(ctx)
        response = ctx.response
        if response is None or ctx.view is None:
            return
        view = ctx.view
        rdtype = ctx.question.rdtype
        for rrset in response.answer:
            if rrset.rdtype not in (dns.rdatatype.CNAME, dns.rdatatype.DNAME):
                continue
            for rdata in rrset:
                target = name_key(rdata.target)
                decision = view.decide(target, rdtype)
                if not decision.allowed:
                    _block(ctx, decision, target)
                    return
        if view.addresses is not None and response.rcode() == dns.rcode.NOERROR:
            listed = view.decide_addresses(
                rdata.address for rrset in response.answer if rrset.rdtype in _ADDRESS_TYPES for rdata in rrset
            )
            if listed is not None:  # RPZ-IP: an address the answer holds is listed
                _block(ctx, listed, name_key(ctx.question.name))
                return
        if len(response.answer) > 1 or response.additional or response.authority:
            stripped = _strip(response, ctx.question.name, view)
            if stripped is not None:
                ctx.response = stripped


def _chain(question: dns.name.Name, answer: list[dns.rrset.RRset]) -> set[dns.name.Name]:
    """The question's name and every CNAME target reached from it (in any section order, loops bounded)."""
    chain = {question}
    for _ in range(len(answer)):
        grown = False
        for rrset in answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name in chain:
                for rdata in rrset:
                    if rdata.target not in chain:
                        chain.add(rdata.target)
                        grown = True
        if not grown:
            break
    return chain


def _strip(response: dns.message.Message, question: dns.name.Name, view: View) -> dns.message.Message | None:
    """A copy of ``response`` without out-of-chain answer records and denied names' addresses; None when
    nothing needs to go (the common case: no copy)."""
    chain = _chain(question, response.answer)

    def on_chain(rrset: dns.rrset.RRset) -> bool:
        if rrset.name in chain:
            return True
        # A DNAME (and its signature) above a chain name: the synthesised CNAME's source.
        return rrset.rdtype in (dns.rdatatype.DNAME, dns.rdatatype.RRSIG) and any(
            name.is_subdomain(rrset.name) for name in chain
        )

    def allowed(rrset: dns.rrset.RRset) -> bool:
        kind = rrset.covers if rrset.rdtype == dns.rdatatype.RRSIG else rrset.rdtype
        return kind not in _ADDRESS_TYPES or view.decide(name_key(rrset.name), kind).allowed

    answer = [rrset for rrset in response.answer if on_chain(rrset)]
    authority = [rrset for rrset in response.authority if allowed(rrset)]
    additional = [rrset for rrset in response.additional if allowed(rrset)]
    if (len(answer), len(authority), len(additional)) == tuple(map(len, response.sections[1:])):
        return None
    stripped = copy.copy(response)
    stripped.sections = [list(response.question), answer, authority, additional]
    return stripped
