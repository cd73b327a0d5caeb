"""The handler: the object every transport calls to answer a query (the process around it is :mod:`ztdns.daemon`).

It compiles a config into a runtime, answers from replays or through the stages, and reloads.

The runtime (identities, policy views, local zones, the stage chain, replays) is rebuilt from scratch on
reload and swapped in one assignment, so a query sees either the old config or the new one, never a mix.
The message cache, the resolver and the metrics survive reloads; replays do not (decisions may differ).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.cache import CacheEntry, MessageCache
from ztdns.cache.stage import CacheStage
from ztdns.client import ClientInfo, Transport
from ztdns.config import Config, located, where
from ztdns.detect import Detector
from ztdns.detect.stage import DetectStage, FloodQuotaStage
from ztdns.dnssec.trust import TrustAnchorError, TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.identity import IdentityMap
from ztdns.identity.stage import IdentifyStage
from ztdns.model import Kind, Question, Resolver
from ztdns.observe.dnstap import DnstapSink
from ztdns.observe.events import Answered
from ztdns.observe.metrics import Metrics
from ztdns.observe.outputs import Outputs, make_outputs
from ztdns.observe.ring import PyRecords
from ztdns.observe.sinks import QueueSink
from ztdns.observe.stage import Observer, ObserveStage
from ztdns.pipeline import Asked, Next, QueryContext, Stage, chain
from ztdns.policy import (
    CHILD_FAILURES,
    View,
    compile_views,
    compile_views_apart,
    release_tables,
    replaced_tables,
)
from ztdns.policy.stage import ChainCheckStage, PolicyStage, SpecialNamesStage
from ztdns.protocol.any import MinimalAnyStage
from ztdns.protocol.guard import GuardStage
from ztdns.protocol.respond import RespondStage
from ztdns.replay import Replay, Replays
from ztdns.resolver.forward import Forwarder, UpstreamSetupError
from ztdns.resolver.hints import HintsError
from ztdns.resolver.local import LocalZones, LocalZoneStage, load_zone
from ztdns.resolver.recursive import RecursiveResolver
from ztdns.resolver.sockets import OPEN as UPSTREAM_SOCKETS_OPEN
from ztdns.resolver.stage import ResolveStage
from ztdns.resolver.validating import ResolverFetcher, ValidatingResolver
from ztdns.resolver.zones import ZoneRoute, ZoneRouter
from ztdns.transport import Charged, Counted, Peer, PlainReplays
from ztdns.wire.header import header_only

try:
    from ztdns.transport import _udpbatch
except ImportError:  # built without a C compiler: fast_batch answers every datagram in Python
    _udpbatch = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ztdns.authority.handler import Authority
    from ztdns.control.shared import SharedCache


# Peers remembered per config by Frontend.fast_batch; the memo starts over when full (a spoofed-source flood).
_PEERS_MEMO = 65_536
# Answers the fast path may replay. Stale answers and failures are never replayed: the next query should
# try upstream again.
_REPLAYABLE = frozenset(
    {Kind.RESOLVED, Kind.CACHED, Kind.LOCAL, Kind.AUTHORITATIVE, Kind.BLOCKED, Kind.PROHIBITED, Kind.SPECIAL}
)


def build_stages(
    runtime: Runtime, cache_stage: CacheStage, resolve_stage: ResolveStage, authority: Authority | None = None
) -> list[Stage[QueryContext]]:
    """The one ordered list of stages. Order is security-relevant; each position says why."""
    return [
        # Outermost: sees every query's final outcome (dropped and failed ones too) — the only exit of client data.
        ObserveStage(runtime.observer),
        # Renders whatever the inner stages decided, so EDNS/TC/EDE rules apply to every answer alike.
        RespondStage(runtime.config.server.max_udp_payload),
        # Malformed queries and responses never reach anything that interprets names: the stages after the
        # guard get an Asked context (one parsed question of class IN).
        GuardStage(chain(_asked_stages(runtime, cache_stage, resolve_stage, authority))),
    ]


def _asked_stages(
    runtime: Runtime, cache_stage: CacheStage, resolve_stage: ResolveStage, authority: Authority | None
) -> list[Stage[Asked]]:
    stages: list[Stage[Asked]] = [
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
    replays: Replays
    detector: Detector
    handler: Next | None = None
    # UDP lane peers (raw sockaddr bytes) → (client, replays may answer it, its identity), for Frontend.fast_batch:
    # identities are matched once per peer and config, not per batch.
    peers: dict[Any, tuple[ClientInfo, bool, str | None]] = field(default_factory=dict)


def _where_in_zone(config: Config, index: int, key: tuple[str | int, ...]) -> str:
    return where(config, ("local_zones", index, *key))


def compile_runtime(
    config: Config, observer: Observer, replays: Replays, detector: Detector | None = None, *, apart: bool = False
) -> Runtime:
    """``apart``: big lists are compiled in a child process (:mod:`ztdns.policy.apart`), for reloads while
    answering."""
    zones = [
        load_zone(zone, config.base_dir, functools.partial(_where_in_zone, config, index))
        for index, zone in enumerate(config.local_zones)
    ]
    return Runtime(
        config=config,
        identities=IdentityMap(config),
        views=dict(compile_views_apart(config) if apart else compile_views(config)),
        local_zones=LocalZones(zones),
        observer=observer,
        replays=replays,
        detector=detector or Detector(config.detect),
    )


def make_resolver(config: Config) -> Resolver | None:
    """The resolver for ``resolver.mode``, validating DNSSEC unless ``dnssec.validation`` is off; with
    ``[[resolver.forward_zones]]``, a router in front that sends those zones to their own forwarders."""
    default = _mode_resolver(config)
    if not config.resolver.forward_zones:
        return default
    anchors = trust_anchors(config)
    routes = []
    for index, zone in enumerate(config.resolver.forward_zones):
        settings = config.resolver.model_copy(
            update={"upstreams": zone.upstreams, "forward_zones": []}
        ).with_bootstrap()
        try:
            forwarder = Forwarder(settings, config.base_dir)
        except UpstreamSetupError as exc:
            key = ("resolver", "forward_zones", index, *exc.key[1:])
            raise located(config, key, str(exc)) from None
        insecure = zone.dnssec == "insecure" or anchors is None
        if zone.dnssec == "negative-trust-anchor" and anchors is not None:
            # Validated as everything else, with the zone a negative trust anchor (RFC 7646): insecure, not bogus.
            with_nta = config.dnssec.model_copy(
                update={"negative_trust_anchors": [*config.dnssec.negative_trust_anchors, zone.zone or "."]}
            )
            anchors_config = config.model_copy(update={"dnssec": with_nta})
            resolver: Resolver = _validating(anchors_config, forwarder)
        else:
            resolver = forwarder if insecure else _validating(config, forwarder)
        routes.append(ZoneRoute(zone.zone, resolver, insecure, zone.cache_max_ttl))
    return ZoneRouter(default, routes)


def _validating(config: Config, forwarder: Forwarder) -> Resolver:
    anchors = trust_anchors(config)
    assert anchors is not None
    dnssec = config.dnssec
    validator = Validator(
        ResolverFetcher(forwarder),
        anchors,
        nsec3_max_iterations=dnssec.nsec3_max_iterations,
        algorithms=dnssec.algorithm_numbers(),
    )
    return ValidatingResolver(forwarder, validator)


def _mode_resolver(config: Config) -> Resolver | None:
    mode = config.resolver.mode
    if mode == "none":
        return None
    dnssec = config.dnssec
    anchors = trust_anchors(config)
    if mode == "recursive":
        recursion = config.resolver.recursion
        if recursion.root_hints is not None:  # relative to the config file, like every path in it
            recursion = recursion.model_copy(update={"root_hints": str(config.base_dir / recursion.root_hints)})
        try:
            recursive = RecursiveResolver(
                recursion, max_ttl=config.cache.max_ttl, negative_max_ttl=config.cache.negative_max_ttl
            )
        except HintsError as exc:
            raise located(config, ("resolver", "recursion", "root_hints"), str(exc)) from None
        if anchors is not None:
            # The validator fetches DS/DNSKEY through the resolver it validates for.
            recursive.validator = Validator(
                recursive,
                anchors,
                nsec3_max_iterations=dnssec.nsec3_max_iterations,
                algorithms=dnssec.algorithm_numbers(),
            )
        return recursive
    try:
        forwarder = Forwarder(config.resolver.with_bootstrap(), config.base_dir)
    except UpstreamSetupError as exc:  # TLS files of an encrypted upstream
        raise located(config, exc.key, str(exc)) from None
    if anchors is None:
        return forwarder
    return _validating(config, forwarder)


def _upstream_resolvers(resolver: Resolver | None) -> Iterator[Forwarder | RecursiveResolver]:
    """The resolvers that talk to upstream servers, inside validators and zone routers."""
    if isinstance(resolver, ZoneRouter):
        yield from _upstream_resolvers(resolver.default)
        for route in resolver.routes.values():
            yield from _upstream_resolvers(route.resolver)
    elif isinstance(resolver, ValidatingResolver):
        yield from _upstream_resolvers(resolver.inner)
    elif isinstance(resolver, Forwarder | RecursiveResolver):
        yield resolver


def replay_run_in_python(
    batch: list[tuple[bytes, Peer]],
    start: int,
    peers: dict[Peer, tuple[ClientInfo, bool, str | None, list[tuple[Answered, bytes, bytes, Peer]]]],
    memo: dict[Peer, tuple[ClientInfo, bool, str | None]],
    tables: dict[str | None, dict[bytes, tuple[Replay, int, int]]],
    now: float,
    in_order: list[Peer] | None,
) -> int:
    """``_udpbatch.replay_run`` without the extension: every datagram is answered by ``Frontend.fast_batch``'s own
    loop (``Replays.answer``), which gives the same results."""
    return start


replay_run = replay_run_in_python if _udpbatch is None else _udpbatch.replay_run


def _replay_identity(runtime: Runtime, client: ClientInfo) -> tuple[bool, str | None]:
    """Whether a replay may answer this client, and the identity whose replays do."""
    match = runtime.identities.match(client)
    if match is None and client.certificate_required:
        return False, None  # the refusal names the missing certificate: the identify stage writes it
    return True, None if match is None else match.identity


def trust_anchors(config: Config) -> TrustAnchors | None:
    """The ``[dnssec]`` trust anchors (None with validation off). Raises ConfigError naming the bad file."""
    dnssec = config.dnssec
    if not dnssec.validation:
        return None
    files = [config.base_dir / path for path in dnssec.trust_anchors]
    try:
        return TrustAnchors.load(files=files, negative=dnssec.negative_trust_anchors)
    except (TrustAnchorError, ValueError) as exc:
        raise located(config, ("dnssec", "trust_anchors"), str(exc)) from None


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
        self.outputs = self._make_outputs(config)
        self.shared = make_shared_cache(config)
        self.inflight = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.detector = Detector(config.detect)  # its state survives reloads, like the cache
        # Reloads compile big lists in a child process; False: in the reload's thread (bench/feed_refresh.py
        # compares the two).
        self.compile_apart = True
        self.runtime, self.cache_stage = self._build(config, self.resolver, self.outputs)
        self._bind_detector()
        self._bind_upstream_traffic()
        self.metrics.register(self.cache)
        self.metrics.register(self.detector)
        self.metrics.register(self)
        if self.shared is not None:
            self.metrics.register(self.shared)

    def _build(
        self, config: Config, resolver: Resolver | None, outputs: Outputs, apart: bool = False
    ) -> tuple[Runtime, CacheStage]:
        """Compile a config into a runtime without touching the one in service (safe to run in a thread)."""
        observer = Observer(self.metrics, outputs.feed, validating=config.dnssec.validation)
        replays = Replays(config.cache.max_entries, self._prefetch, config.server.max_udp_payload)
        runtime = compile_runtime(config, observer, replays, self.detector, apart=apart)
        cache_stage = CacheStage(self.cache, resolver, self.shared)
        runtime.handler = chain(
            build_stages(
                runtime, cache_stage, ResolveStage(resolver, config.resolver.answer_rd0 == "recurse"), self.authority
            )
        )
        return runtime, cache_stage

    @staticmethod
    def _make_outputs(config: Config) -> Outputs:
        """The sinks of ``[log]`` and the fleet's event stream of ``[control]``."""
        return make_outputs(config, functools.partial(make_event_sinks, config))

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def reload(self, config: Config) -> None:
        """Swap in a new config. Raises, keeping the old runtime, if the new one cannot be compiled.

        Compiling (list files can hold millions of names) runs in a thread so the event loop keeps answering,
        and big lists in a child process (:mod:`ztdns.policy.apart`) so that thread seldom holds the GIL.
        """
        old = self.runtime.config
        sinks_changed = config.log != old.log or config.control != old.control
        outputs = self._make_outputs(config) if sinks_changed else self.outputs
        changed = config.resolver != old.resolver or config.dnssec != old.dnssec
        resolver = self.resolver_factory(config) if changed else self.resolver
        try:
            runtime, cache_stage = await asyncio.get_running_loop().run_in_executor(
                None, self._build, config, resolver, outputs, self.compile_apart
            )
        except BaseException:
            await self._release(resolver, outputs)
            raise
        old_resolver, old_outputs = self.resolver, self.outputs
        old_tables = replaced_tables(self.runtime.views.values())
        self.resolver, self.outputs, self.cache_stage, self.runtime = resolver, outputs, cache_stage, runtime
        # Millions of names freed at once would hold the GIL for ~100 ms: freed in pieces, in a thread, once no
        # query in flight holds the old views. Its own daemon thread, not the loop's executor: nothing waits for
        # it, not even the loop's shutdown.
        threading.Thread(target=release_tables, args=(old_tables,), name="release-tables", daemon=True).start()
        del old_tables
        self.cache.reconfigure(config.cache)
        self._bind_detector()
        self._bind_upstream_traffic()
        await self._release(old_resolver, old_outputs)

    def _bind_detector(self) -> None:
        """The detector follows the config in service; its events go to that config's observer."""
        runtime = self.runtime
        observer = runtime.observer
        self.detector.configure(runtime.config.detect)
        self.detector.emit = lambda fields: observer.event("detect", fields)
        self.detector.on_block = self._drop_replays

    def _bind_upstream_traffic(self) -> None:
        """The exchanges of forwarders and of recursion go to the sinks in service (dnstap RESOLVER_QUERY/RESPONSE)
        when a dnstap sink carries them."""
        wanted = any(isinstance(sink, DnstapSink) and sink.resolver_messages for sink in self.outputs.sinks)
        observer = self.runtime.observer
        on_exchange = observer.upstream if wanted and observer.feed is not None else None
        for upstream in _upstream_resolvers(self.resolver):
            upstream.on_exchange = on_exchange

    def _drop_replays(self) -> None:
        """A verdict now blocks some names: replays rendered before it must not answer them."""
        self.runtime.replays.clear()

    def reopen_logs(self) -> None:
        """Log files are opened again by their names (log rotation), whatever else a reload does."""
        self.outputs.reopen()

    async def _release(self, resolver: Resolver | None, outputs: Outputs) -> None:
        """Close a resolver and sinks unless they are the ones in service."""
        if resolver is not None and resolver is not self.resolver:
            await resolver.close()
        if outputs is not self.outputs:
            # Off the event loop: closing waits for each sink's last batch (a stalled collector up to its timeout).
            await asyncio.get_running_loop().run_in_executor(None, outputs.close)

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        """Replay a pre-rendered answer, or None. Runs on UDP lane threads as well as the event loop."""
        runtime = self.runtime
        match = runtime.identities.match(client)  # as _replay_identity, without a call: TCP, DoT, DoH per query
        if match is None and client.certificate_required:
            return None  # the refusal names the missing certificate: the identify stage writes it
        identity = None if match is None else match.identity
        now = time.monotonic()
        found = runtime.replays.answer(identity, wire, client.stream, now)
        if found is None:
            return None
        detector = self.detector
        if detector.enabled and not detector.admit_replays(identity, client, 1, detector.clock()):
            return None  # over a rate limit or under a verdict: the pipeline's detect stage answers
        answer, replay = found
        runtime.observer.record_answer(replay.answered, client, now, wire, answer)
        return answer

    def fast_batch(
        self,
        batch: list[tuple[bytes, Peer]],
        client_of: Callable[[Peer], ClientInfo],
        answers: list[tuple[bytes, Peer]],
    ) -> list[tuple[bytes, Peer]]:
        """:meth:`fast` for a UDP lane's batch (see :class:`~ztdns.transport.BatchHandler`), with the same answers,
        metrics, query log events and detection decisions (tests/test_replay_batch.py): what does not depend on
        the query is done once per batch (the clocks) or once per client in it (identity, rate-limit charges,
        metric counts)."""
        runtime = self.runtime
        replays = runtime.replays
        replay, tables = replays.answer, replays.exact
        memo: dict[Peer, tuple[ClientInfo, bool, str | None]] = runtime.peers
        detector = self.detector
        # Whose replays a shared bucket stops depends on the order of arrival only when limits act or an identity
        # bucket spans clients: then the charges follow it, a run of one client's replays at a time.
        in_order: list[Peer] | None = [] if detector.enabled and detector.charges_in_order else None
        now = time.monotonic()
        left: list[tuple[bytes, Peer]] = []
        # Per peer: who it is, whether replays may answer it, its identity, and the replays found for it.
        peers: dict[Peer, tuple[ClientInfo, bool, str | None, list[tuple[Answered, bytes, bytes, Peer]]]] = {}
        index, end = 0, len(batch)
        while True:
            # The plain replays in C, up to the first datagram that needs more (or all of them); that one here.
            index = replay_run(batch, index, peers, memo, tables, now, in_order)
            if index >= end:
                break
            wire, peer = batch[index]
            index += 1
            known = peers.get(peer)
            if known is None:
                seen = memo.get(peer)
                if seen is None:
                    if len(memo) >= _PEERS_MEMO:
                        memo.clear()
                    client = client_of(peer)
                    seen = memo[peer] = (client, *_replay_identity(runtime, client))
                known = peers[peer] = (*seen, [])
            client, replayable, identity, found_for = known
            found = replay(identity, wire, client.stream, now) if replayable else None
            if found is None:
                left.append((wire, peer))
                continue
            answer, replayed = found
            found_for.append((replayed.answered, wire, answer, peer))
            if in_order is not None:
                in_order.append(peer)
        admitted: dict[Peer, int] = {}
        if detector.enabled:
            detected = detector.clock()
            if in_order is None:
                for peer, (client, _, identity, found_for) in peers.items():
                    if found_for:
                        admitted[peer] = detector.admit_replays(identity, client, len(found_for), detected)
            else:
                # Once one of a client's replays is stopped, so are its later ones (no bucket refills within a
                # batch): the admitted ones are the first of each client's.
                for peer, run in itertools.groupby(in_order):
                    client, _, identity, _ = peers[peer]
                    count = sum(1 for _ in run)
                    admitted[peer] = admitted.get(peer, 0) + detector.admit_replays(identity, client, count, detected)
        served = []
        for peer, (client, _, _, found_for) in peers.items():
            if not found_for:
                continue
            count = admitted.get(peer, len(found_for))
            if count < len(found_for):  # over a rate limit or under a verdict: the detect stage answers
                left += [(wire, peer) for _, wire, _, peer in found_for[count:]]
                del found_for[count:]
            answers += [(answer, peer) for _, _, answer, peer in found_for]
            served.append((client, found_for))
        runtime.observer.record_answers(served, now)
        return left

    def plain_replays(self) -> PlainReplays | None:
        """What a batched UDP lane answers plain replays from itself (``_udpbatch.serve``), or None when the batch
        needs Python: limits that may refuse a replay or charge in arrival order, or the pure-Python ring of
        records. The verdicts in force go along: a client under a DGA verdict gets no replays
        (``Detector.admit_replays``), the lane leaves its queries to Python. Called per batch, once its datagrams
        are in."""
        detector = self.detector
        if detector.enabled and detector.charges_in_order:
            return None
        runtime = self.runtime
        feed = runtime.observer.feed
        ring = None if feed is None else feed.ring
        if isinstance(ring, PyRecords):
            return None
        return (
            runtime.peers,
            runtime.replays.exact,
            ring,
            detector.blocks if detector.enabled and detector.blocks else None,
        )

    def replays_served(self, charged: Charged, counted: Counted, latency: float) -> None:
        """The rest of :meth:`fast_batch` for the replays a lane answered from :meth:`plain_replays`: the rate limits'
        charges (they cannot refuse: plain_replays said so) and the metric counts."""
        detector = self.detector
        if detector.enabled:
            detected = detector.clock()
            for client, identity, count in charged:
                detector.admit_replays(identity, client, count, detected)
        self.runtime.observer.count_answers(Transport.UDP, counted, latency)

    def _prefetch(self, question: Question, entry: CacheEntry) -> None:
        if self.loop is not None:
            # fast() may run on a UDP lane thread: asyncio work goes through the loop's thread-safe door.
            self.loop.call_soon_threadsafe(self.cache_stage.maybe_prefetch, question, entry)

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        runtime = self.runtime
        ctx = QueryContext(client=client, wire=wire)
        self.inflight += 1
        try:
            assert runtime.handler is not None
            await runtime.handler(ctx)
        except Exception:
            runtime.observer.failed("a query failed inside the pipeline", client)
            return header_only(wire, 2) if len(wire) >= 12 and not wire[2] & 0x80 else None
        finally:
            self.inflight -= 1
        if ctx.drop:
            return None
        store = ctx.store
        if store is not None and ctx.kind in _REPLAYABLE and store.until > ctx.started:
            # After the answer is on its way (the caller sends it in this same loop turn): bookkeeping off the
            # query's latency. Until then a repeat of the question takes the full path, which is still right.
            cache_config = self.cache.config
            window = cache_config.prefetch_window if cache_config.prefetch else None
            asyncio.get_running_loop().call_soon(runtime.replays.store, ctx, store, window)
        return ctx.wire_response

    def collect(self) -> Iterator[Metric]:
        """The frontend's own families and the resolver's in service (reloads swap it; the cache exports itself)."""
        yield GaugeMetricFamily("ztdns_replay_entries", "Pre-rendered answers held", value=self.runtime.replays.size())
        yield GaugeMetricFamily("ztdns_inflight_queries", "Queries in the pipeline now", value=self.inflight)
        yield GaugeMetricFamily(
            "ztdns_upstream_sockets_open",
            "Sockets open to upstreams now, forwarders' and recursion's (one per query in flight)",
            value=UPSTREAM_SOCKETS_OPEN.value,
        )
        yield CounterMetricFamily(
            "ztdns_cache_hits", "Answers served from cached data (replays included)", value=self._cache_hits()
        )
        child_failures = CounterMetricFamily(
            "ztdns_policy_compile_child_failures",
            "Reloads whose child process failed (compiled in this process instead) or timed out (reload failed)",
            labels=["reason"],
        )
        for reason in ("failed", "timeout"):
            child_failures.add_metric([reason], CHILD_FAILURES[reason])
        yield child_failures
        yield from self.outputs.collect()
        if self.resolver is not None:
            yield from self.resolver.collect()

    def _cache_hits(self) -> float:
        return float(sum(v for (_, kind, _), v in self.metrics.totals().queries.items() if kind == "cached"))

    async def close(self) -> None:
        if self.resolver is not None:
            await self.resolver.close()
        self.outputs.close()
        if self.shared is not None:
            await self.shared.close()


def make_event_sinks(config: Config) -> list[QueueSink]:
    """The sink publishing query events to the fleet's stream (``[control] events``), if configured."""
    control = config.control
    if control is None or not control.events:
        return []
    from ztdns.control.events import EventPublisher, JetStreamSink

    return [JetStreamSink(EventPublisher(control), control.events_queue)]


def make_shared_cache(config: Config) -> SharedCache | None:
    """The Redis cache shared with other resolvers, if configured (it connects on first use). A change on reload
    takes effect on restart."""
    shared = config.cache.shared
    if shared is None:
        return None
    from ztdns.control.shared import SeedError, SharedCache, load_seed  # only servers that share load Redis

    try:
        return SharedCache(shared, load_seed(shared, config.base_dir))
    except SeedError as exc:
        key = "key_seed_file" if shared.key_seed_file else "key_seed_env"
        raise located(config, ("cache", "shared", key), str(exc)) from None
