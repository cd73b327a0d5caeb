"""``ztdns explain``: run one question through the real pipeline for a client and say why it got its answer."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import Config
from ztdns.detect import Detector, split_name
from ztdns.handler import Frontend, make_resolver
from ztdns.model import EDE, Kind, Question, Reason, Resolution, Resolver
from ztdns.pipeline import QueryContext
from ztdns.policy import explain as explain_rule
from ztdns.policy import schedule
from ztdns.wire.query import name_key


def client_for(config: Config, text: str) -> ClientInfo:
    """CLIENT may be an IP address, a configured identity name, or a certificate identity (SPIFFE ID …)."""
    try:
        return ClientInfo(Transport.UDP, str(ipaddress.ip_address(text)), 0)
    except ValueError:
        pass
    if text in config.identities:
        identity = config.identities[text]
        for network in identity.networks:
            return ClientInfo(Transport.UDP, str(ipaddress.ip_network(network, strict=False).network_address), 0)
        for pattern in identity.certificates:
            return ClientInfo(Transport.DOT, "0.0.0.0", 0, certificate_identity=pattern.rstrip("*") + "explain")
    return ClientInfo(Transport.DOT, "0.0.0.0", 0, certificate_identity=text)


class NotResolving:
    """Stands in for the resolver when explain must not send anything: says where the question would go."""

    def __init__(self, config: Config) -> None:
        mode = config.resolver.mode
        if mode == "forward":
            where = ", ".join(upstream.address for upstream in config.resolver.upstreams) or "no upstream"
            self.text = f"not resolved: would be forwarded to {where} (--resolve asks)"
        else:
            self.text = f"not resolved: would be resolved {mode}ly from the root (--resolve asks)"

    async def resolve(self, question: Question) -> Resolution:
        return Resolution(None, Reason(EDE.OTHER, self.text))

    async def close(self) -> None:
        return None

    def collect(self) -> Iterable[Metric]:
        return ()


async def explain(
    config: Config, client_text: str, name: str, rdtype: str, resolve: bool = False, at: float | None = None
) -> str:
    """Without ``resolve`` nothing leaves the machine: answers that need an upstream are described, not fetched.
    ``at`` (Unix time) decides scheduled rules as at that moment."""
    if at is not None:
        schedule.now = lambda: at
    factory: Callable[[Config], Resolver | None] = make_resolver if resolve else NotResolving
    quiet = config.log.model_copy(update={"query_log": config.log.query_log.model_copy(update={"output": "off"})})
    frontend = Frontend(config.model_copy(update={"log": quiet}), resolver_factory=factory)
    client = client_for(config, client_text)
    query = dns.message.make_query(name, rdtype, use_edns=0)
    ctx = QueryContext(client=client, wire=query.to_wire())
    try:
        assert frontend.runtime.handler is not None
        await frontend.runtime.handler(ctx)
    finally:
        await frontend.close()
    return _describe(client_text, ctx, frontend.detector)


def _describe(client_text: str, ctx: QueryContext, detector: Detector) -> str:
    lines = []
    who = f"{ctx.identity} ({ctx.identity_how})" if ctx.identity else "none: unknown client"
    lines.append(f"client:    {client_text} -> identity {who}")
    if ctx.question is not None:
        lines.append(
            f"question:  {ctx.question.name} {dns.rdatatype.to_text(dns.rdatatype.RdataType.make(ctx.question.rdtype))}"
        )
    decision = ctx.decision
    if decision is not None and ctx.view is not None and ctx.question is not None:
        # The decision that stands may be on a CNAME target rather than the question: explain that name.
        name = ctx.decided_name or name_key(ctx.question.name)
        explanation = explain_rule(ctx.view, name, ctx.question.rdtype)
        verdict = "allow" if decision.allowed and ctx.kind is not Kind.BLOCKED else "deny"
        lines.append(
            f"decision:  {verdict}" + ("" if name == name_key(ctx.question.name) else f" (at CNAME target {name})")
        )
        lines.append(f"policy:    {decision.policy}")
        lines.append(f"rule:      {decision.rule}")
        lines.append(f"from:      {explanation.origin()}")
        lines.extend(f"chain:     {step}" for step in explanation.chain)
    else:
        lines.append("decision:  refuse (no identity)" if ctx.identity is None else "decision:  none")
    if ctx.question is not None and detector.enabled:
        subject = ctx.client.certificate_identity or ctx.client.address
        lines += detector.describe(ctx.identity, subject, split_name(ctx.question.name.labels))
    lines.append(f"outcome:   {ctx.kind.value if ctx.kind else 'none'}")
    if ctx.wire_response is None:
        lines.append("response:  (none: dropped)")
        return "\n".join(lines)
    response = dns.message.from_wire(ctx.wire_response)
    summary = dns.rcode.to_text(response.rcode())
    for option in response.options:
        if isinstance(option, dns.edns.EDEOption):
            code = EDE(option.code).name if option.code in EDE._value2member_map_ else str(option.code)
            summary += f", EDE {option.code} ({code})" + (f' "{option.text}"' if option.text else "")
    lines.append(f"response:  {summary}")
    lines.append("")
    lines.append(response.to_text())
    return "\n".join(lines)


def run(
    config: Config, client_text: str, name: str, rdtype: str, resolve: bool = False, at: float | None = None
) -> str:
    return asyncio.run(explain(config, client_text, name, rdtype, resolve, at))
