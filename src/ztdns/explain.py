"""``ztdns explain``: run one question through the real pipeline for a client and say why it got its answer."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Explained:
    """The facts ``ztdns explain`` prints (the admin API returns them as JSON)."""

    client: str
    identity: str | None
    identity_how: str | None
    question: str | None
    qtype: str | None
    decision: str  # allow, deny, refuse (no identity) or none
    decided_name: str | None  # set when the decision that stands is on a CNAME target
    policy: str | None
    rule: str | None
    origin: str | None
    chain: list[str]  # how the decision came about: denied by list L line N, overridden by exception E, …
    detection: list[str]  # what the detectors make of the name, and verdicts in force
    outcome: str
    rcode: str | None  # None: dropped
    ede: list[tuple[int, str, str]]  # (code, name, extra text)
    response: str | None  # the whole response as text


async def explain_facts(
    config: Config, client_text: str, name: str, rdtype: str, resolve: bool = False, at: float | None = None
) -> Explained:
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
    return _facts(client_text, ctx, frontend.detector)


async def explain(
    config: Config, client_text: str, name: str, rdtype: str, resolve: bool = False, at: float | None = None
) -> str:
    return _describe(await explain_facts(config, client_text, name, rdtype, resolve, at))


def _facts(client_text: str, ctx: QueryContext, detector: Detector) -> Explained:
    question = qtype = decided = policy = rule = origin = None
    chain: list[str] = []
    detection: list[str] = []
    if ctx.question is not None:
        question = str(ctx.question.name)
        qtype = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(ctx.question.rdtype))
    decision = ctx.decision
    if decision is not None and ctx.view is not None and ctx.question is not None:
        # The decision that stands may be on a CNAME target rather than the question: explain that name.
        name = ctx.decided_name or name_key(ctx.question.name)
        explanation = explain_rule(ctx.view, name, ctx.question.rdtype)
        verdict = "allow" if decision.allowed and ctx.kind is not Kind.BLOCKED else "deny"
        decided = None if name == name_key(ctx.question.name) else name
        policy, rule, origin = decision.policy, decision.rule, explanation.origin()
        chain = list(explanation.chain)
    else:
        verdict = "refuse (no identity)" if ctx.identity is None else "none"
    if ctx.question is not None and detector.enabled:
        subject = ctx.client.certificate_identity or ctx.client.address
        detection = detector.describe(ctx.identity, subject, split_name(ctx.question.name.labels))
    rcode = text = None
    ede: list[tuple[int, str, str]] = []
    if ctx.wire_response is not None:
        response = dns.message.from_wire(ctx.wire_response)
        rcode, text = dns.rcode.to_text(response.rcode()), response.to_text()
        for option in response.options:
            if isinstance(option, dns.edns.EDEOption):
                code = EDE(option.code).name if option.code in EDE._value2member_map_ else str(option.code)
                ede.append((option.code, code, option.text or ""))
    return Explained(
        client=client_text,
        identity=ctx.identity,
        identity_how=ctx.identity_how if ctx.identity else None,
        question=question,
        qtype=qtype,
        decision=verdict,
        decided_name=decided,
        policy=policy,
        rule=rule,
        origin=origin,
        chain=chain,
        detection=detection,
        outcome=ctx.kind.value if ctx.kind else "none",
        rcode=rcode,
        ede=ede,
        response=text,
    )


def _describe(facts: Explained) -> str:
    lines = []
    who = f"{facts.identity} ({facts.identity_how})" if facts.identity else "none: unknown client"
    lines.append(f"client:    {facts.client} -> identity {who}")
    if facts.question is not None:
        lines.append(f"question:  {facts.question} {facts.qtype}")
    if facts.policy is not None:
        lines.append(
            f"decision:  {facts.decision}" + (f" (at CNAME target {facts.decided_name})" if facts.decided_name else "")
        )
        lines.append(f"policy:    {facts.policy}")
        lines.append(f"rule:      {facts.rule}")
        lines.append(f"from:      {facts.origin}")
        lines.extend(f"chain:     {step}" for step in facts.chain)
    else:
        lines.append(f"decision:  {facts.decision}")
    lines += facts.detection
    lines.append(f"outcome:   {facts.outcome}")
    if facts.rcode is None or facts.response is None:
        lines.append("response:  (none: dropped)")
        return "\n".join(lines)
    summary = facts.rcode
    for code, code_name, text in facts.ede:
        summary += f", EDE {code} ({code_name})" + (f' "{text}"' if text else "")
    lines.append(f"response:  {summary}")
    lines.append("")
    lines.append(facts.response)
    return "\n".join(lines)


def run(
    config: Config, client_text: str, name: str, rdtype: str, resolve: bool = False, at: float | None = None
) -> str:
    return asyncio.run(explain(config, client_text, name, rdtype, resolve, at))
