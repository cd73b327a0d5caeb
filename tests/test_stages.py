"""The whole pipeline in-process around a resolver that answers at once: what the stages do to its answers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.model import EDE, Question, Reason, Resolution

CONFIG = """
[resolver]
mode = "recursive"

[cache]
min_ttl = 30
max_ttl = 100

[identities.test]
networks = ["127.0.0.0/8"]
policies = ["test"]

[policies.test]
allow = ["**.test"]

[log.query_log]
output = "off"
"""


class SharingResolver:
    """Hands out the same RRsets in every answer, as the recursive resolver does from its cache."""

    def __init__(self) -> None:
        self.rrsets = {
            "low.test.": dns.rrset.from_text("low.test.", 5, "IN", "A", "192.0.2.1"),
            "high.test.": dns.rrset.from_text("high.test.", 5000, "IN", "A", "192.0.2.2", "192.0.2.3"),
            "cname.test.": dns.rrset.from_text("cname.test.", 60, "IN", "CNAME", "low.test."),
        }
        self.soa = dns.rrset.from_text("test.", 3600, "IN", "SOA", "ns.test. h.test. 1 3600 600 86400 120")

    async def resolve(self, question: Question) -> Resolution:
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA
        text = question.name.to_text()
        if text == "cname.test.":
            response.answer = [self.rrsets[text], self.rrsets["low.test."]]
        elif text in self.rrsets:
            response.answer = [self.rrsets[text]]
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority = [self.soa]
        return Resolution(response)

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


def test_the_pipeline_never_changes_the_resolvers_rrsets() -> None:
    resolver = SharingResolver()
    shared = [*resolver.rrsets.values(), resolver.soa]
    before = [(rrset.ttl, set(rrset)) for rrset in shared]

    async def run() -> list[dns.message.Message]:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: resolver)
        frontend.bind_loop(asyncio.get_running_loop())
        client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
        answers = []
        for _ in range(2):  # resolved, then from the cache (or replayed)
            for name in ("low.test.", "high.test.", "cname.test.", "missing.test."):
                for dnssec in (False, True):
                    query = dns.message.make_query(name, "A", want_dnssec=dnssec)
                    wire = await frontend.handle(query.to_wire(), client)
                    assert wire is not None
                    answers.append(dns.message.from_wire(wire))
                    await asyncio.sleep(0)  # the replay registration
        await frontend.close()
        return answers

    answers = asyncio.run(run())
    assert [(rrset.ttl, set(rrset)) for rrset in shared] == before
    ttls = [(a.rcode(), [rrset.ttl for rrset in a.answer + a.authority]) for a in answers[::2]]
    assert answers[1::2] and all(a.answer == b.answer for a, b in zip(answers[::2], answers[1::2], strict=True))
    # First the resolver's TTLs; then the cache's copies, clamped to 30..100 s (the SOA's minimum for NXDOMAIN).
    assert ttls == [
        (dns.rcode.NOERROR, [5]),
        (dns.rcode.NOERROR, [5000]),
        (dns.rcode.NOERROR, [60, 5]),
        (dns.rcode.NXDOMAIN, [3600]),
        (dns.rcode.NOERROR, [30]),
        (dns.rcode.NOERROR, [100]),
        (dns.rcode.NOERROR, [60, 30]),
        (dns.rcode.NXDOMAIN, [120]),
    ]


def test_the_browser_canary_in_any_case_is_nxdomain_before_policy() -> None:
    async def ask(name: str) -> dns.message.Message:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: SharingResolver())
        wire = await frontend.handle(
            dns.message.make_query(name, "A", use_edns=0).to_wire(), ClientInfo(Transport.UDP, "127.0.0.1", 1)
        )
        await frontend.close()
        assert wire is not None
        return dns.message.from_wire(wire)

    for name in ("use-application-dns.net.", "Use-Application-DNS.NET."):
        answer = asyncio.run(ask(name))
        assert answer.rcode() == dns.rcode.NXDOMAIN and answer.authority[0].rdtype == dns.rdatatype.SOA
        assert not answer.extended_errors()  # not a policy block
    # Not the canary: a name under it, and the same labels elsewhere, go to policy (which denies them here).
    for name in ("x.use-application-dns.net.", "use-application-dns.org."):
        answer = asyncio.run(ask(name))
        assert answer.extended_errors()[0].code == dns.edns.EDECode.BLOCKED


class DowngradingResolver(SharingResolver):
    """Answers as a validator does for a zone signed only with an algorithm it does not support (RFC 8624)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def resolve(self, question: Question) -> Resolution:
        self.calls += 1
        resolution = await super().resolve(question)
        reason = Reason(EDE.UNSUPPORTED_DNSKEY_ALGORITHM, "test.: test. DS: algorithms [5] unsupported")
        return Resolution(resolution.response, reason, security="insecure")


def test_an_answer_from_the_message_cache_keeps_the_ede_of_its_resolution() -> None:
    # A repeat that reaches the pipeline before the first answer's replay is stored (a busy loop thread) is
    # answered from the message cache: it must say what the resolved one said.
    resolver = DowngradingResolver()

    async def run() -> list[dns.message.Message]:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: resolver)
        frontend.bind_loop(asyncio.get_running_loop())
        client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
        answers = []
        for name in ("high.test.", "high.test.", "missing.test.", "missing.test."):
            wire = await frontend.handle(dns.message.make_query(name, "A", use_edns=0).to_wire(), client)
            assert wire is not None
            answers.append(dns.message.from_wire(wire))
        await frontend.close()
        return answers

    answers = asyncio.run(run())
    assert resolver.calls == 2  # the repeats came from the cache
    for answer in answers:
        options = [option for option in answer.options if isinstance(option, dns.edns.EDEOption)]
        assert [(option.code, option.text) for option in options] == [
            (1, "test.: test. DS: algorithms [5] unsupported")
        ], answer
