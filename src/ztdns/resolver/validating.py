"""DNSSEC validation around any resolver (forwarding mode): asks the inner resolver with DO=1 CD=1, fetches
DS/DNSKEY through it the same way, and turns the verdict into AD, SERVFAIL + EDE, or a plain answer."""

from __future__ import annotations

from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from prometheus_client.metrics_core import Metric

from ztdns.dnssec.validator import Security, Validator
from ztdns.model import Question, Resolution, Resolver


class ResolverFetcher:
    """The validator's :class:`~ztdns.dnssec.validator.Fetcher` over a resolver that honours DO and CD."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message | None:
        question = Question(name, rdtype, 1, dnssec_ok=True, checking_disabled=True)
        return (await self.resolver.resolve(question)).response


class ValidatingResolver:
    def __init__(self, inner: Resolver, validator: Validator) -> None:
        self.inner = inner
        self.validator = validator

    async def resolve(self, question: Question) -> Resolution:
        upstream = Question(question.name, question.rdtype, question.rdclass, True, True)
        resolution = await self.inner.resolve(upstream)
        response = resolution.response
        if response is None or question.checking_disabled:
            return resolution
        verdict = await self.validator.validate(question.name, dns.rdatatype.RdataType(question.rdtype), response)
        resolution.security = verdict.security.value
        if verdict.bogus:
            failed = dns.message.make_response(
                dns.message.make_query(question.name, dns.rdatatype.RdataType(question.rdtype))
            )
            failed.set_rcode(dns.rcode.SERVFAIL)
            return Resolution(failed, verdict.reason, resolution.upstream, verdict.security.value)
        if verdict.security is Security.SECURE:
            response.flags |= dns.flags.AD
        else:
            response.flags &= ~dns.flags.AD  # never pass on an upstream's AD we could not confirm
        if verdict.reason is not None:
            resolution.reason = verdict.reason
        return resolution

    def collect(self) -> Iterator[Metric]:
        yield from self.inner.collect()
        yield from self.validator.collect()

    async def close(self) -> None:
        await self.inner.close()
