"""The identify stage: the client becomes a named identity with a policy view — or is refused (EDE 18)."""

from __future__ import annotations

import time

import dns.message
import dns.rcode

from ztdns.identity import IdentityMap
from ztdns.model import EDE, Kind, Reason
from ztdns.pipeline import Asked, AskedNext
from ztdns.policy import View
from ztdns.replay import StoreHint

REFUSAL_REPLAY_SECONDS = 300.0


class IdentifyStage:
    name = "identify"

    def __init__(self, identities: IdentityMap, views: dict[str, View]) -> None:
        self.identities = identities
        self.views = views

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        client = ctx.client
        match = self.identities.match(client)
        if match is None:
            response = dns.message.make_response(ctx.query)
            response.set_rcode(dns.rcode.REFUSED)
            ctx.response = response
            ctx.kind = Kind.PROHIBITED
            if client.certificate_required and client.certificate_identity is None:
                # Not replayed: replays are shared by all unknown clients, and this text is for this one only.
                ctx.reason = Reason(EDE.PROHIBITED, "no client certificate (this listener identifies by certificate)")
                return
            ctx.reason = Reason(EDE.PROHIBITED, "client is not a known identity")
            ctx.store = StoreHint(time.monotonic() + REFUSAL_REPLAY_SECONDS)
            return
        ctx.identity = match.identity
        ctx.identity_how = match.how
        ctx.view = self.views[match.identity]
        await call_next(ctx)
