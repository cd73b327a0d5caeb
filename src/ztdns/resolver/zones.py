"""Per-domain routing: names at and below a forward zone go to that zone's resolver, the rest to the default.

``[[resolver.forward_zones]]`` (docs/forwarding.md, "Forward zones"): each zone has its own
:class:`~ztdns.resolver.forward.Forwarder` (Do53, DoT, DoH or DoQ upstreams, with their own health), its own
DNSSEC setting (validated like the rest, or insecure: a negative trust anchor, RFC 7646) and an optional cap of
the TTLs its answers are cached with. The most specific zone wins (``a.corp.example`` before ``corp.example``).
Choosing costs one dict lookup per label of the name.

Metrics: those of every resolver it holds (upstreams are labelled by address, so one family each).
Client data: none; it sees questions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dns.flags
from prometheus_client.metrics_core import Metric

from ztdns.model import EDE, Question, Reason, Resolution, Resolver
from ztdns.wire.query import name_key


@dataclass(frozen=True, slots=True)
class ZoneRoute:
    zone: str  # normal form, "" for the root
    resolver: Resolver
    insecure: bool  # never validated: the AD bit of its answers is cleared
    max_ttl: int | None  # TTLs of its answers are capped to this (0: effectively not cached)


class ZoneRouter:
    """A :class:`~ztdns.model.Resolver` that picks a resolver by the question's name."""

    def __init__(self, default: Resolver | None, routes: list[ZoneRoute]) -> None:
        self.default = default
        self.routes = {route.zone: route for route in routes}

    def route(self, name: str) -> ZoneRoute | None:
        """The most specific zone at or above ``name`` (normal form), or None for the default resolver."""
        routes = self.routes
        suffix = name
        while True:
            found = routes.get(suffix)
            if found is not None:
                return found
            if not suffix:
                return None
            dot = suffix.find(".")
            suffix = "" if dot < 0 else suffix[dot + 1 :]

    async def resolve(self, question: Question) -> Resolution:
        route = self.route(name_key(question.name))
        if route is None:
            if self.default is None:
                return Resolution(None, Reason(EDE.NOT_SUPPORTED, "no resolver for names outside the forward zones"))
            return await self.default.resolve(question)
        resolution = await route.resolver.resolve(question)
        response = resolution.response
        if response is not None:
            if route.insecure:
                response.flags &= ~dns.flags.AD
            if route.max_ttl is not None:
                for section in (response.answer, response.authority, response.additional):
                    for rrset in section:
                        rrset.ttl = min(rrset.ttl, route.max_ttl)
        return resolution

    async def close(self) -> None:
        if self.default is not None:
            await self.default.close()
        for route in self.routes.values():
            await route.resolver.close()

    def collect(self) -> Iterator[Metric]:
        """One family per name: the same family from several forwarders is merged, samples with the same
        labels (the unlabelled socket gauge) summed."""
        families: dict[str, Metric] = {}
        values: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}
        resolvers = [route.resolver for route in self.routes.values()]
        for resolver in ([self.default] if self.default is not None else []) + resolvers:
            for family in resolver.collect():
                merged = families.setdefault(family.name, family)
                if merged is not family:
                    for sample in family.samples:
                        key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                        index = values.get(key)
                        if index is None:
                            merged.samples.append(sample)
                        else:
                            old = merged.samples[index]
                            merged.samples[index] = old._replace(value=old.value + sample.value)
                for index, sample in enumerate(merged.samples):
                    values.setdefault((merged.name, sample.name, tuple(sorted(sample.labels.items()))), index)
        yield from families.values()
