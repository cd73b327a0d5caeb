"""The resolver's view of the served zones: a pipeline stage answering names in them from the authority.

Its position in ``ztdns.handler.build_stages`` is like local zones: after policy (a denied name never reaches
zone data) and inside the chain check (a CNAME in a zone pointing at a denied name is blocked), before the cache
(zone data is never cached, so an update or key event is visible to the next query).

AA and AD: the answer keeps AA (this server is authoritative for the data, as for local zones). AD is set when
the zone is signed and the client showed it understands AD (DO or AD in the query, RFC 6840 §5.8), for
positive and negative answers alike: the records were signed in this process, so they are authentic by local
policy (RFC 4035 §3.1.6) without a validation round trip. With DO the RRSIGs and NSEC3/compact-denial proofs
are included, exactly as the authoritative listeners send them, so a validating stub can check them itself.
Answers are replayed by the fast path only while the zone still publishes the version they came from.
A referral (a name delegated below a served zone) is not an answer: the query goes on to the cache and the
resolver, which follow the delegation.
"""

from __future__ import annotations

import time

import dns.flags
import dns.rcode

from ztdns.authority.answer import answer
from ztdns.authority.handler import Authority
from ztdns.model import Kind
from ztdns.pipeline import Asked, AskedNext
from ztdns.replay import StoreHint
from ztdns.resolver.stage import wants_ad

# A bound on how long an unchanged zone's answer is replayed (signatures are refreshed days before they expire).
VIEW_REPLAY_SECONDS = 300.0


class AuthorityViewStage:
    name = "authority"

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        query = ctx.query
        question = query.question[0]
        served = self.authority.zone_for(question.name, question.rdtype)
        if served is None:
            await call_next(ctx)
            return
        version = served.version  # read once: the UDP lane of the authority's listeners may publish
        response = answer(query, version.zone, version.view)
        if not response.flags & dns.flags.AA:
            await call_next(ctx)
            return
        if version.view is not None and wants_ad(query) and response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            response.flags |= dns.flags.AD
        ctx.response = response
        ctx.kind = Kind.AUTHORITATIVE
        # Replayed while the zone still publishes the version this answer came from: an update or key event
        # publishes a new one, and the next query is answered afresh.
        ctx.store = StoreHint(time.monotonic() + VIEW_REPLAY_SECONDS, guard=lambda: served.version is version)
