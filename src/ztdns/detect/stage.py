"""The detect stages: one after identify (limits, verdicts in force, and the observation on the way back) and
one just before the resolver (the per-zone upstream fetch quota of a flooded zone)."""

from __future__ import annotations

import asyncio
import time

import dns.edns
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztdns.detect.engine import Detector, split_name
from ztdns.detect.verdict import Verdict
from ztdns.model import EDE, Kind, Reason
from ztdns.pipeline import Asked, AskedNext
from ztdns.wire.header import TC, rcode_of

# TTL of the SOA in synthesised NXDOMAIN answers: how long clients cache the refusal.
DETECT_NEGATIVE_TTL = 30


def _answer(ctx: Asked, detector: Detector, verdict: Verdict, action: str, now: float) -> None:
    """Answer the query as ``action`` says: nxdomain (EDE 15), refuse (EDE 17), slip (TC=1) or drop."""
    query = ctx.query
    detector.count_answer(verdict, action)
    ctx.kind = Kind.BLOCKED
    ctx.detection = verdict.text(now)
    if action == "drop":
        ctx.drop = True
        return
    response = dns.message.make_response(query)
    if action == "slip":
        response.flags |= TC
    elif action == "nxdomain":
        response.set_rcode(dns.rcode.NXDOMAIN)
        soa = f"detect.ztdns. hostmaster.detect.ztdns. 1 3600 600 86400 {DETECT_NEGATIVE_TTL}"
        owner = query.question[0].name
        response.authority.append(dns.rrset.from_text(owner, DETECT_NEGATIVE_TTL, "IN", "SOA", soa))
    else:
        response.set_rcode(dns.rcode.REFUSED)
    ctx.response = response
    ctx.reason = Reason(EDE.BLOCKED if action == "nxdomain" else EDE.FILTERED, verdict.text(now))
    ctx.store = None  # never replayed: verdicts expire, and their text names the expiry


def _rcode(ctx: Asked) -> int:
    response = ctx.response
    if response is None:
        return dns.rcode.SERVFAIL
    return rcode_of(response)


class DetectStage:
    name = "detect"

    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        detector = self.detector
        if not detector.enabled:
            await call_next(ctx)
            return
        now = detector.clock()
        if detector.due(now):
            asyncio.get_running_loop().call_soon(detector.tick)  # after this query's answer is on its way
        client = ctx.client
        exempt = client.certificate_identity is not None
        cookies = detector.cookies
        cookie = None
        if cookies is not None and ctx.query.options:
            cookie = next((o for o in ctx.query.options if isinstance(o, dns.edns.CookieOption)), None)
            if cookie is not None:
                wall = time.time()
                exempt = exempt or cookies.valid(cookie.client, cookie.server, client.address, wall)
                server = cookies.make(cookie.client, client.address, wall)
                ctx.edns_options = (*ctx.edns_options, dns.edns.CookieOption(cookie.client, server))
        try:
            if detector.limits_on:
                limited = detector.admit(ctx.identity, client.address, exempt, now)
                if limited is not None and limited[1].enforced:
                    key, verdict = limited
                    if client.stream:
                        _answer(ctx, detector, verdict, "refuse", now)
                    else:
                        _answer(ctx, detector, verdict, "slip" if detector.slip(key) else "drop", now)
                    return
            if not detector.analyse:
                await call_next(ctx)
                return
            question = ctx.question
            name = split_name(question.name.labels)
            detector.last_name = (question.name, name)
            if detector.allowed(name):
                await call_next(ctx)
                return
            subject = client.certificate_identity or client.address  # who a per-client verdict is about
            blocking = detector.blocked(ctx.identity, subject, name, now)
            if blocking is not None and blocking.enforced:
                _answer(ctx, detector, blocking, blocking.action, now)
            else:
                if blocking is not None:  # observe mode: answered as usual, the record names the verdict
                    ctx.detection = blocking.text(now)
                await call_next(ctx)
            detector.record(ctx.identity, subject, name, question.rdtype, _rcode(ctx), ctx.cache_hit, now)
        finally:
            if cookie is not None:
                ctx.store = None  # the server cookie is this client's: never replayed to another


class FloodQuotaStage:
    """Just before the resolver, after the cache: only fetches are rationed; cached names keep answering, and
    a fetch over quota fails so the cache stage serves stale data where it has it (RFC 8767)."""

    name = "detect-quota"

    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        detector = self.detector
        if not detector.floods:
            await call_next(ctx)
            return
        asked = ctx.question.name
        last, name = detector.last_name
        if last is not asked:  # another query's, or this one was not analysed (allow-listed names are)
            name = split_name(asked.labels)
        now = detector.clock()
        verdict = detector.flood_quota(name, now)
        if verdict is None:
            await call_next(ctx)
            return
        ctx.kind = Kind.FAILED
        ctx.reason = Reason(EDE.FILTERED, verdict.text(now))
