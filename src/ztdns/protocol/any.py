"""RFC 8482: ANY is answered truthfully, then minimally, denying amplification.

The stages inside this one (local zones, served zones, the cache and the resolver, which asks the upstream for
ANY) answer the question as asked, so existence is never made up: a name that does not exist gets NXDOMAIN with
its SOA, one with no data NODATA, a CNAME its CNAME (RFC 8482 §4.2 is about what is returned, not whether), and
local or served data keeps its AA. Only then is a name with data of several types answered with one synthesised
HINFO "RFC8482" (TTL: the smallest of the data it stands for; the records of one type are kept, signatures and
all: already minimal, as the served zones' own one-RRset answers are). The full upstream answer is what the cache
holds; each client gets the minimised one. When the upstream has nothing to say about ANY (NODATA, as Unbound
answers it from local data, or a refusal), A is asked for instead and its answer stands for ANY's.
"""

from __future__ import annotations

import dataclasses

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztdns.model import Kind
from ztdns.pipeline import Asked, AskedNext
from ztdns.wire.header import AD, rcode_of

_HINFO = dns.rdatatype.HINFO
_CNAME = dns.rdatatype.CNAME
_RRSIG = dns.rdatatype.RRSIG


class MinimalAnyStage:
    name = "any"

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        await call_next(ctx)
        if ctx.question.rdtype != dns.rdatatype.ANY or ctx.response is None:
            return
        if ctx.kind in (Kind.RESOLVED, Kind.CACHED) and _says_nothing(ctx.response, ctx.question.name):
            await self._probe(ctx, call_next)
        if ctx.response is not None:
            minimise(ctx.response, ctx.question.name)

    @staticmethod
    async def _probe(ctx: Asked, call_next: AskedNext) -> None:
        """The upstream had nothing to say about ANY (Unbound answers it from local data with NODATA; others
        refuse it): ask for A instead, and answer ANY with that (NXDOMAIN, a CNAME, the A RRset or NODATA)."""
        query = ctx.query
        probe = dataclasses.replace(ctx)
        probe.question = dataclasses.replace(ctx.question, rdtype=dns.rdatatype.A)
        probe.query = dns.message.QueryMessage(id=query.id)
        probe.query.flags = query.flags
        probe.query.question = [dns.rrset.RRset(ctx.question.name, dns.rdataclass.IN, dns.rdatatype.A)]
        probe.query.opt = query.opt
        probe.response = probe.reason = probe.store = None
        probe.kind = None
        await call_next(probe)
        if probe.response is None or probe.kind not in (Kind.RESOLVED, Kind.CACHED):
            return  # the ANY answer stands
        probe.response.question = list(query.question)
        for field in ("response", "kind", "reason", "decision", "decided_name", "store", "cache_hit", "upstream"):
            setattr(ctx, field, getattr(probe, field))


def _says_nothing(response: dns.message.Message, qname: dns.name.Name) -> bool:
    rcode = rcode_of(response)
    if rcode in (dns.rcode.NOTIMP, dns.rcode.REFUSED, dns.rcode.FORMERR):
        return True
    return rcode == dns.rcode.NOERROR and not any(rrset.name == qname for rrset in response.answer)


def minimise(response: dns.message.Message, qname: dns.name.Name) -> None:
    """Replace the answer to ANY at ``qname`` by its CNAME, its one RRset or one HINFO (RFC 8482 §4.2); negative
    answers are left as they are. The sections are replaced, never changed in place (the cache may hold them)."""
    owned = [rrset for rrset in response.answer if rrset.name == qname]
    types = {rrset.covers if rrset.rdtype == _RRSIG else rrset.rdtype for rrset in owned}
    if not types:
        return
    if _CNAME in types:  # an alias: the CNAME is its data, and no other type can be at the name (RFC 1034 §3.6.2)
        keep = _CNAME
    elif len(types) == 1:
        (keep,) = types
    else:
        ttl = min(rrset.ttl for rrset in owned)
        response.answer = [dns.rrset.from_text(qname, ttl, dns.rdataclass.IN, _HINFO, '"RFC8482" ""')]
        response.authority = []
        response.additional = []
        response.flags &= ~AD  # synthesised here: nothing signed it
        return
    response.answer = [rrset for rrset in owned if keep in (rrset.rdtype, rrset.covers)]
    response.additional = []
