"""The server: compiles a config into a runtime, serves it on listeners, reloads it, drains on exit.

The runtime (identities, policy views, local zones, the stage chain, replays) is rebuilt from scratch on
reload and swapped in one assignment, so a query sees either the old config or the new one, never a mix.
The message cache, the resolver and the metrics survive reloads; replays do not (decisions may differ).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ztdns.cache import CacheEntry, MessageCache
from ztdns.cache.stage import CacheStage
from ztdns.client import ClientInfo
from ztdns.config import Config, ConfigError, located, where
from ztdns.detect import Detector
from ztdns.detect.stage import DetectStage, FloodQuotaStage
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.fastpath import Replay, ReplayTable, make_countdown, splice, udp_limit
from ztdns.identity import IdentityMap
from ztdns.identity.stage import IdentifyStage
from ztdns.observe.metrics import Metrics
from ztdns.observe.querylog import QueryLog
from ztdns.observe.stage import Observer, ObserveStage
from ztdns.outcome import Kind
from ztdns.pipeline import Next, QueryContext, Stage, chain
from ztdns.policy import View, compile_views
from ztdns.policy.stage import ChainCheckStage, PolicyStage, SpecialNamesStage
from ztdns.protocol.any import MinimalAnyStage
from ztdns.protocol.guard import GuardStage
from ztdns.protocol.respond import RespondStage, header_only_response
from ztdns.resolver import Resolver
from ztdns.resolver.forward import Forwarder, UpstreamSetupError
from ztdns.resolver.local import LocalZones, LocalZoneStage, load_zone
from ztdns.resolver.recursive import RecursiveResolver
from ztdns.resolver.stage import ResolveStage
from ztdns.resolver.validating import ResolverFetcher, ValidatingResolver
from ztdns.wire import parse_query

if TYPE_CHECKING:
    from ztdns.authority.service import Authority

log = logging.getLogger("ztdns")

# Answers the fast path may replay. Stale answers and failures are never replayed: the next query should
# try upstream again.
_REPLAYABLE = frozenset(
    {Kind.RESOLVED, Kind.CACHED, Kind.LOCAL, Kind.AUTHORITATIVE, Kind.BLOCKED, Kind.PROHIBITED, Kind.SPECIAL}
)


def build_stages(
    runtime: Runtime, cache_stage: CacheStage, resolve_stage: ResolveStage, authority: Authority | None = None
) -> list[Stage]:
    """The one ordered list of stages. Order is security-relevant; each position says why."""
    stages: list[Stage] = [
        # Outermost: sees every query's final outcome (dropped and failed ones too) — the only exit of client data.
        ObserveStage(runtime.observer),
        # Renders whatever the inner stages decided, so EDNS/TC/EDE rules apply to every answer alike.
        RespondStage(),
        # Malformed queries and responses never reach anything that interprets names.
        GuardStage(),
        # Identity comes only from the connection (address, verified certificate), never from the message;
        # unknown clients stop here with EDE 18 before any name is looked at.
        IdentifyStage(runtime.identities, runtime.views),
        # Detection needs the identity; before policy and the cache so that limits and verdicts in force answer
        # first, and it sees every answer (rcode, cache hit) on the way back.
        DetectStage(runtime.detector),
        # Fixed answers no policy can override (the browser DoH canary).
        SpecialNamesStage(),
        # Default deny on the question itself, before anything is looked up anywhere.
        PolicyStage(),
        # ANY is answered minimally, after policy so a denied name's answer does not differ.
        MinimalAnyStage(),
        # Wraps everything that produces data (local, cache, resolver): every CNAME/DNAME target is decided.
        ChainCheckStage(),
        # Local zones before the cache: local data is authoritative and never cached from upstream.
        LocalZoneStage(runtime.local_zones),
    ]
    if authority is not None and runtime.config.authority.resolver_view:
        # Imported only by servers with [authority] zones: the others do not load the signer.
        from ztdns.authority.view import AuthorityViewStage

        # Served zones: inside the chain check and after policy like local zones, which are the operator's fixed
        # overrides and answer first; before the cache, so zone data is never cached and an update or key event
        # is visible to the next query.
        stages.append(AuthorityViewStage(authority))
    # The cache before the resolver; it stores on the way back and serves stale when the resolver fails. A
    # flooded zone's fetches are rationed between the two, so its cached names keep answering.
    stages += [cache_stage, FloodQuotaStage(runtime.detector), resolve_stage]
    return stages


@dataclass
class Runtime:
    """Everything derived from one config version."""

    config: Config
    identities: IdentityMap
    views: dict[str, View]
    local_zones: LocalZones
    observer: Observer
    replays: ReplayTable
    detector: Detector
    handler: Next | None = None


def compile_runtime(config: Config, observer: Observer, detector: Detector | None = None) -> Runtime:
    zones = [
        load_zone(zone, config.base_dir, where(config, ("local_zones", index, "records" if zone.records else "file")))
        for index, zone in enumerate(config.local_zones)
    ]
    return Runtime(
        config=config,
        identities=IdentityMap(config),
        views=dict(compile_views(config)),
        local_zones=LocalZones(zones),
        observer=observer,
        replays=ReplayTable(config.cache.max_entries),
        detector=detector or Detector(config.detect),
    )


def make_resolver(config: Config) -> Resolver | None:
    """The resolver for ``resolver.mode``, validating DNSSEC unless ``dnssec.validation`` is off."""
    mode = config.resolver.mode
    if mode == "none":
        return None
    dnssec = config.dnssec
    anchors = None
    if dnssec.validation:
        files = [config.base_dir / path for path in dnssec.trust_anchors]
        anchors = TrustAnchors.load(files=files, negative=dnssec.negative_trust_anchors)
    if mode == "recursive":
        recursive = RecursiveResolver(config.resolver.recursion)
        if anchors is not None:
            # The validator fetches DS/DNSKEY through the resolver it validates for.
            recursive.validator = Validator(recursive, anchors, nsec3_max_iterations=dnssec.nsec3_max_iterations)
        return recursive
    try:
        forwarder = Forwarder(config.resolver, config.base_dir)
    except UpstreamSetupError as exc:  # TLS files of an encrypted upstream
        raise ConfigError([f"{config.source}: {exc}"]) from None
    if anchors is None:
        return forwarder
    validator = Validator(ResolverFetcher(forwarder), anchors, nsec3_max_iterations=dnssec.nsec3_max_iterations)
    return ValidatingResolver(forwarder, validator)


class Frontend:
    """The :class:`~ztdns.transport.Handler` every transport calls: replays first, then the pipeline."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        resolver_factory: Callable[[Config], Resolver | None] = make_resolver,
        authority: Authority | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.authority = authority  # served zones the pipeline answers from ([authority] resolver_view)
        self.cache = MessageCache(config.cache)
        self.resolver_factory = resolver_factory
        self.resolver = resolver_factory(config)
        self.querylog = _make_querylog(config)
        self.inflight = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.detector = Detector(config.detect)  # its state survives reloads, like the cache
        self.runtime, self.cache_stage = self._build(config, self.resolver, self.querylog)
        self._bind_detector()
        self._register_metrics()

    def _build(
        self, config: Config, resolver: Resolver | None, querylog: QueryLog | None
    ) -> tuple[Runtime, CacheStage]:
        """Compile a config into a runtime without touching the one in service (safe to run in a thread)."""
        runtime = compile_runtime(config, Observer(self.metrics, querylog), self.detector)
        cache_stage = CacheStage(self.cache, resolver)
        runtime.handler = chain(build_stages(runtime, cache_stage, ResolveStage(resolver), self.authority))
        return runtime, cache_stage

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def reload(self, config: Config) -> None:
        """Swap in a new config. Raises, keeping the old runtime, if the new one cannot be compiled.

        Compiling (list files can hold millions of names) runs in a thread so the event loop keeps answering.
        """
        old = self.runtime.config
        querylog = _make_querylog(config) if config.log != old.log else self.querylog
        changed = config.resolver != old.resolver or config.dnssec != old.dnssec
        resolver = self.resolver_factory(config) if changed else self.resolver
        try:
            runtime, cache_stage = await asyncio.get_running_loop().run_in_executor(
                None, self._build, config, resolver, querylog
            )
        except BaseException:
            await self._release(resolver, querylog)
            raise
        old_resolver, old_querylog = self.resolver, self.querylog
        self.resolver, self.querylog, self.cache_stage, self.runtime = resolver, querylog, cache_stage, runtime
        self.cache.reconfigure(config.cache)
        self._bind_detector()
        await self._release(old_resolver, old_querylog)

    def _bind_detector(self) -> None:
        """The detector follows the config in service; its events go to that config's observer."""
        runtime = self.runtime
        observer = runtime.observer
        self.detector.configure(runtime.config.detect)
        self.detector.emit = lambda fields: observer.event("detect", fields)
        self.detector.on_block = self._drop_replays

    def _drop_replays(self) -> None:
        """A verdict now blocks some names: replays rendered before it must not answer them."""
        self.runtime.replays = ReplayTable(self.runtime.config.cache.max_entries)

    def reopen_logs(self) -> None:
        """The query log file is opened again by its name (log rotation), whatever else a reload does."""
        if self.querylog is not None:
            self.querylog.reopen()

    async def _release(self, resolver: Resolver | None, querylog: QueryLog | None) -> None:
        """Close a resolver and query log unless they are the ones in service."""
        if resolver is not None and resolver is not self.resolver:
            await resolver.close()
        if querylog is not None and querylog is not self.querylog:
            querylog.close()

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Replay a pre-rendered answer, or None. Runs on UDP lane threads as well as the event loop.

        Most repeat queries are byte-for-byte the same but for the ID, so they are looked up by those bytes
        first (no parsing at all); otherwise the question is parsed by hand and looked up by its normal form.
        """
        runtime = self.runtime
        match = runtime.identities.match(client)
        if match is None and client.certificate_required:
            return None  # the refusal names the missing certificate: the identify stage writes it
        identity = None if match is None else match.identity
        replays = runtime.replays
        exact = replays.exact.get(identity)
        found = None if exact is None else exact.get(wire[2:])
        if found is None:
            return self._fast_parsed(wire, client, identity)
        replay, name_end, limit = found
        now = time.monotonic()
        if now >= replay.expires or (replay.guard is not None and not replay.guard()):
            replays.drop(identity, replay.key)
            return None
        answer = replay.wire if now < replay.rerender_at else replay.rerender(now)
        if len(answer) > limit and not client.stream:
            return None
        if name_end:  # the client spelled the name in another case than the rendered answer (0x20)
            answer = answer[:12] + wire[12:name_end] + answer[name_end:]
        entry = replay.entry
        if entry is not None:
            entry.hits += 1  # popularity only: a lost update between threads does not matter
            if now >= replay.prefetch_at:
                self._prefetch(replay, entry)
        if self.detector.enabled and not self.detector.admit_replay(identity, client):
            return None  # over a rate limit or under a verdict: the detect stage answers
        runtime.observer.record_replay(replay, client, now)
        return wire[:2] + answer[2:]

    def _fast_parsed(self, wire: bytes, client: ClientInfo, identity: str | None) -> bytes | None:
        parsed = parse_query(wire)
        if parsed is None:
            return None
        replays = self.runtime.replays
        replay = replays.get(identity, parsed.key)
        if replay is None:
            return None
        now = time.monotonic()
        if now >= replay.expires or (replay.guard is not None and not replay.guard()):
            replays.drop(identity, parsed.key)
            return None
        answer = replay.wire if now < replay.rerender_at else replay.rerender(now)
        limit = udp_limit(parsed)
        same_case = wire[12 : parsed.name_end] == answer[12 : parsed.name_end]
        replays.remember_exact(identity, wire[2:], replay, 0 if same_case else parsed.name_end, limit)
        if len(answer) > limit and not client.stream:
            return None
        entry = replay.entry
        if entry is not None:
            entry.hits += 1
            if now >= replay.prefetch_at:
                self._prefetch(replay, entry)
        if self.detector.enabled and not self.detector.admit_replay(identity, client):
            return None
        self.runtime.observer.record_replay(replay, client, now)
        return splice(wire, parsed, answer)

    def _prefetch(self, replay: Replay, entry: CacheEntry) -> None:
        if not entry.prefetching and replay.question is not None and self.loop is not None:
            # fast() may run on a UDP lane thread: asyncio work goes through the loop's thread-safe door.
            self.loop.call_soon_threadsafe(self.cache_stage.maybe_prefetch, replay.question, entry)

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        runtime = self.runtime
        ctx = QueryContext(client=client, wire=wire)
        self.inflight += 1
        try:
            assert runtime.handler is not None
            await runtime.handler(ctx)
        except Exception:
            log.exception("query from %s failed inside the pipeline", client.address)
            return header_only_response(wire, 2) if len(wire) >= 12 and not wire[2] & 0x80 else None
        finally:
            self.inflight -= 1
        if ctx.drop:
            return None
        if ctx.kind in _REPLAYABLE and ctx.full_wire_response is not None and ctx.replay_until > ctx.started:
            # After the answer is on its way (the caller sends it in this same loop turn): bookkeeping off the
            # query's latency. Until then a repeat of the question takes the full path, which is still right.
            asyncio.get_running_loop().call_soon(self._remember, runtime, ctx)
        return ctx.wire_response

    def _remember(self, runtime: Runtime, ctx: QueryContext) -> None:
        parsed = parse_query(ctx.wire)
        full = ctx.full_wire_response
        if parsed is None or full is None:
            return
        fragment, kind, rcode = runtime.observer.replay_fragment(ctx)
        replay = Replay(
            key=parsed.key,
            wire=full,
            expires=ctx.replay_until,
            log_fragment=fragment,
            kind=kind,
            rcode=rcode,
            guard=ctx.replay_guard,
        )
        entry = ctx.cache_entry
        if ctx.replay_counts_down and entry is not None:
            replay.offsets = make_countdown(full, ctx.replay_age)
            replay.stored = entry.stored
            replay.age = ctx.replay_age
            replay.rerender_at = entry.stored + ctx.replay_age + 1
            replay.entry = entry
            replay.question = ctx.question
            cache_config = self.cache.config
            if cache_config.prefetch:
                replay.prefetch_at = entry.expires - entry.ttl * cache_config.prefetch_window
        runtime.replays.put(ctx.identity, parsed.key, replay)

    def _register_metrics(self) -> None:
        gauges = self.metrics.gauges
        gauges["ztdns_cache_entries"] = ("Entries in the message cache", lambda: float(len(self.cache)))
        gauges["ztdns_replay_entries"] = (
            "Pre-rendered answers held",
            lambda: float(self.runtime.replays.size()),
        )
        gauges["ztdns_inflight_queries"] = ("Queries in the pipeline now", lambda: float(self.inflight))
        counters = self.metrics.counters
        counters["ztdns_cache_hits"] = ("Answers served from cached data (replays included)", self._cache_hits)
        counters["ztdns_cache_misses"] = ("Cache misses", lambda: float(self.cache.misses))
        counters["ztdns_cache_stale_answers"] = (
            "Stale answers served (RFC 8767)",
            lambda: float(self.cache.stale_answers),
        )
        counters["ztdns_cache_prefetches"] = (
            "Entries refreshed before expiry",
            lambda: float(self.cache.prefetches),
        )
        counters["ztdns_cache_evictions"] = ("Entries evicted by size", lambda: float(self.cache.evictions))
        self.metrics.labelled.append(self._upstream_families)
        self.metrics.labelled.append(self.detector.families)
        self.metrics.labelled.append(self._dnssec_families)
        counters["ztdns_querylog_dropped"] = (
            "Query log lines dropped because the writer fell behind",
            lambda: float(self.querylog.dropped if self.querylog else 0),
        )

    def _cache_hits(self) -> float:
        return float(sum(v for (_, kind, _), v in self.metrics.totals().queries.items() if kind == "cached"))

    def _upstream_families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        health = getattr(self.resolver, "health", None)
        if health is None:
            return
        up = GaugeMetricFamily("ztdns_upstream_up", "1 when the upstream is in service", labels=["upstream"])
        srtt = GaugeMetricFamily("ztdns_upstream_srtt_seconds", "Smoothed round-trip time", labels=["upstream"])
        queries = CounterMetricFamily("ztdns_upstream_queries", "Attempts sent to the upstream", labels=["upstream"])
        errors = CounterMetricFamily("ztdns_upstream_errors", "Attempts that failed", labels=["upstream"])
        for upstream in health():
            up.add_metric([upstream.address], 1.0 if upstream.up else 0.0)
            if upstream.srtt is not None:
                srtt.add_metric([upstream.address], upstream.srtt)
            queries.add_metric([upstream.address], upstream.queries)
            errors.add_metric([upstream.address], upstream.errors)
        yield from (up, srtt, queries, errors)

    def _dnssec_families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Validation failures by EDE code (security events) and recursion's defences at work."""
        validator = getattr(self.resolver, "validator", None)
        if isinstance(validator, Validator):
            failures = CounterMetricFamily(
                "ztdns_dnssec_validation_failures",
                "Answers that failed DNSSEC validation (logged as dnssec_bogus security events), by EDE code",
                labels=["ede"],
            )
            for ede, count in sorted(validator.failures.items()):
                failures.add_metric([str(int(ede))], count)
            yield failures
        resolver = self.resolver
        if isinstance(resolver, RecursiveResolver):
            yield CounterMetricFamily(
                "ztdns_recursion_upstream_queries",
                "Queries sent to authoritative servers",
                value=resolver.upstream_queries,
            )
            yield CounterMetricFamily(
                "ztdns_recursion_forged_dropped",
                "Datagrams dropped as forged: another ID, unparsable, or the question in another case (0x20)",
                value=resolver.forged_dropped,
            )
            yield CounterMetricFamily(
                "ztdns_recursion_aggressive_answers",
                "Negative answers synthesised from cached validated NSEC/NSEC3 (RFC 8198)",
                value=resolver.aggressive_answers,
            )

    async def close(self) -> None:
        if self.resolver is not None:
            await self.resolver.close()
        if self.querylog is not None:
            self.querylog.close()


def _make_querylog(config: Config) -> QueryLog | None:
    output = config.log.query_log.output
    if output == "off":
        return None
    path = output if output == "stdout" else str(config.base_dir / output)
    try:
        return QueryLog(path, config.log.query_log.queue)
    except OSError as exc:
        raise located(config, ("log", "query_log", "output"), f"cannot open {path!r}: {exc.strerror or exc}") from None
