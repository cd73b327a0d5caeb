"""The detector: per-query updates of bounded state, a tick that turns state into verdicts, and look-ups of
the verdicts in force. Sans-IO: the stages feed it, the server schedules its tick and routes its events."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import dns.name
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ztdns.client import ClientInfo
from ztdns.config.detect import DetectConfig
from ztdns.detect.cookies import ServerCookies
from ztdns.detect.dga import DgaModel, shipped_model
from ztdns.detect.names import escape_name, escape_text, suffix_list
from ztdns.detect.sketch import TokenBucket, rate
from ztdns.detect.tables import DgaTable, TunnelTable, ZoneTable
from ztdns.detect.verdict import Verdict, bytes_rate, query_rate

# Record types tunnels favour: they carry more bytes back than an address (RFC 1035 NULL, TXT, ...).
TUNNEL_TYPES = frozenset({5, 10, 15, 16, 25, 33, 255, 65399})  # CNAME NULL MX TXT KEY SRV ANY PRIVATE
NXDOMAIN, SERVFAIL = 3, 2
# Registered domains whose DGA score is remembered (about 100 bytes each); the table starts over when full.
_SCORES_KEPT = 4096
# Below this, a key is too young for the slow (bytes/s over a minute) tunnel rule to judge it.
_MIN_AGE_FRACTION = 0.25
_NOTHING_STOPPED: tuple[tuple[tuple[int, int], Verdict], ...] = ()


@dataclass(slots=True)
class Flood:
    """A zone under a random-subdomain flood: its verdict and its upstream fetch quota."""

    verdict: Verdict
    quota: TokenBucket
    since: float


class Name:
    """A question name as the detectors key it: lower-case dotted bytes, where its registered domain starts, and
    the two parts (computed once: every detector reads them)."""

    __slots__ = ("below", "domain", "start", "text")

    def __init__(self, text: bytes, start: int) -> None:
        self.text = text  # b"a.b.example.co.uk"
        self.start = start  # index of the registered domain in text; -1: the name is itself a public suffix
        self.domain = text[start:] if start >= 0 else text
        # The labels below the registered domain (what a tunnel writes its data into).
        self.below = text[: start - 1] if start > 0 else b""


def split_name(labels: tuple[bytes, ...]) -> Name:
    """Labels of a dnspython name (absolute) → a :class:`Name`. Any bytes are fine: nothing is decoded."""
    text = b".".join(labels[:-1] if labels and not labels[-1] else labels).lower()
    return Name(text, suffix_list().registered(text))


class Detector:
    """Detection state for one server; survives reloads (``configure`` swaps the config and keeps the state)."""

    def __init__(self, config: DetectConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.emit: Callable[[dict[str, object]], None] | None = None  # the observe stage's event writer
        self.on_block: Callable[[], None] | None = None  # drops replays when a verdict starts blocking
        self.verdict_counts: dict[tuple[str, str], int] = {}  # (detector, action) → verdicts
        self.answer_counts: dict[tuple[str, str], int] = {}  # (detector, action) → queries answered by an action
        self.blocks: dict[tuple[str, ...], Verdict] = {}
        self.floods: dict[bytes, Flood] = {}
        self.limited: dict[tuple[int, int], Verdict] = {}  # rate-limit verdicts by bucket key
        self.buckets: dict[tuple[int, int], TokenBucket] = {}
        self.identity_buckets: dict[str, TokenBucket] = {}
        self.slips: dict[tuple[int, int], int] = {}
        # Address text → its prefixes' (key, bucket, rate, depth): parsed and looked up once per address.
        self.addresses: dict[str, list[tuple[tuple[int, int], TokenBucket, float, float]]] = {}
        self.identity_names: dict[int, str] = {}  # for the text of identity rate-limit verdicts
        self.scores: dict[bytes, float] = {}  # registered domain → DGA score
        # The question name the detect stage split last: the fetch quota stage of the same query reuses it.
        self.last_name: tuple[dns.name.Name | None, Name] = (None, Name(b"", -1))
        self.next_tick = 0.0
        self.ticking = False
        self.cookies: ServerCookies | None = None  # its secret survives reloads: clients' cookies stay valid
        self.tunnels = TunnelTable(config.max_keys)
        self.clients = DgaTable(config.max_keys)
        self.zones = ZoneTable(config.max_zones)
        self.configure(config)

    @property
    def model(self) -> DgaModel:
        """The shipped DGA model, read on first use (or by :meth:`preload`): ``ztdns check`` does not read it."""
        return shipped_model()

    def preload(self) -> None:
        """Read the DGA model now if DGA detection is on: a server calls this as it starts, so that its first
        failing name is not the one that waits for the reading (about 12 ms of CPU)."""
        if self.dga_on:
            shipped_model()

    def configure(self, config: DetectConfig) -> None:
        self.config = config
        self.modes = {name: config.mode_of(name) for name in ("tunnel", "dga", "flood", "rate_limit")}
        self.enabled = any(mode != "off" for mode in self.modes.values())
        self.analyse = any(self.modes[name] != "off" for name in ("tunnel", "dga", "flood"))
        self.limits_on = self.modes["rate_limit"] != "off"
        self.tunnel_on = self.modes["tunnel"] != "off"
        self.dga_on = self.modes["dga"] != "off"
        self.flood_on = self.modes["flood"] != "off"
        limits = config.rate_limit
        # A batch of replays must be charged in the order it arrived (not client by client) when that changes the
        # outcome: limits that stop replays, or an identity bucket that spans several clients' prefix buckets.
        self.charges_in_order = self.limits_on and (self.modes["rate_limit"] == "enforce" or limits.per_identity > 0)
        # Cookies only matter where limits act; and answers carrying one cannot be replayed.
        if not (limits.cookies and self.modes["rate_limit"] == "enforce"):
            self.cookies = None
        elif self.cookies is None:
            self.cookies = ServerCookies()
        self.prefixes: dict[int, list[tuple[int, int, float, float]]] = {}  # family → (tag, mask, rate, depth)
        for family, bits, lengths in ((4, 32, limits.ipv4_prefixes), (6, 128, limits.ipv6_prefixes)):
            self.prefixes[family] = [
                (
                    family * 1000 + length,
                    ((1 << length) - 1) << (bits - length),
                    limits.per_prefix * limits.prefix_multiplier**index,
                    limits.per_prefix * limits.prefix_multiplier**index * limits.burst_seconds,
                )
                for index, length in enumerate(sorted(set(lengths), reverse=True))
            ]
        self.addresses.clear()  # they hold the old rates
        allow = list(config.allow)
        if config.builtin_allow:
            allow += builtin_allow_list()
        self.allow_domains: dict[bytes, list[bytes]] = {}
        self.allow_suffixes: set[bytes] = set()
        for entry in allow:
            text = entry.strip().strip(".").lower().encode("idna")
            start = suffix_list().registered(text)
            if start < 0:
                self.allow_suffixes.add(text)
            else:
                self.allow_domains.setdefault(text[start:], []).append(text)
        self.tunnels.limit = self.clients.limit = config.max_keys
        self.zones.limit = config.max_zones
        # Verdicts in force follow the new modes: switching a detector to observe stops its blocks at once.
        verdicts = [*self.blocks.values(), *(flood.verdict for flood in self.floods.values()), *self.limited.values()]
        for verdict in verdicts:
            mode = self.modes["rate_limit" if verdict.detector == "ratelimit" else verdict.detector]
            verdict.enforced = mode == "enforce" and verdict.action != "log"

    # --- the query path -------------------------------------------------------------------------------------

    def allowed(self, name: Name) -> bool:
        """Under the allow-list: random names are normal there, so no detector analyses them."""
        entries = self.allow_domains.get(name.domain)
        if entries is not None:
            text = name.text
            if any(text == entry or text.endswith(b"." + entry) for entry in entries):
                return True
        if not self.allow_suffixes or name.start < 0:
            return name.text in self.allow_suffixes
        suffix = name.domain.partition(b".")[2]
        while suffix:
            if suffix in self.allow_suffixes:
                return True
            suffix = suffix.partition(b".")[2]
        return False

    def admit(
        self, identity: str | None, address: str, exempt: bool, now: float
    ) -> tuple[tuple[int, int], Verdict] | None:
        """Charge the rate limits for one query; None when within them, else the bucket key and its verdict.

        ``exempt`` (a verified certificate, a valid server cookie) skips the address-based limits: those
        addresses are not spoofed.
        """
        passed, stopped = self.admit_many(identity, address, exempt, now, 1)
        return None if passed else stopped[0]

    def admit_many(
        self, identity: str | None, address: str, exempt: bool, now: float, count: int
    ) -> tuple[int, Sequence[tuple[tuple[int, int], Verdict]]]:
        """Charge the rate limits for ``count`` queries of one client arriving at ``now`` (a UDP lane's batch):
        how many pass — the first ones, as buckets hand out tokens in order — and the limits that stopped the
        others (bucket key and verdict), in the order the stopped queries meet them. Buckets, verdicts and
        events end as after ``count`` calls of :meth:`admit` at ``now`` (tests/detection/test_detect_limits.py).
        """
        limits = self.config.rate_limit
        stopping: list[tuple[tuple[int, int], float]] | None = None  # (bucket key, its rate), in bucket order
        if identity is not None and limits.per_identity > 0:
            bucket = self.identity_buckets.get(identity)
            depth = limits.per_identity * limits.burst_seconds
            if bucket is None:
                bucket = self.identity_buckets[identity] = TokenBucket(depth, now)
            passed = bucket.take_many(limits.per_identity, depth, now, count)
            if passed < count:
                self.identity_names[hash(identity)] = identity
                stopping = [((0, hash(identity)), limits.per_identity)]
                count = passed
        if count and not exempt and limits.per_prefix > 0:
            buckets = self.addresses.get(address)
            if buckets is None:
                buckets = self._buckets_of(address, now)
            for key, bucket, allowed, depth in buckets:
                # TokenBucket.take_many, inlined: this runs for every replay of the other transports.
                tokens = bucket.tokens + (now - bucket.stamp) * allowed
                tokens = depth if tokens > depth else tokens
                bucket.stamp = now
                passed = count if tokens >= count else int(tokens) if tokens >= 1.0 else 0
                bucket.tokens = tokens - passed
                if passed < count:
                    stopping = [(key, allowed)] if stopping is None else [*stopping, (key, allowed)]
                    count = passed
                    if not count:
                        break
        if stopping is None:
            return count, _NOTHING_STOPPED
        if len(stopping) == 1:  # one query, or one bucket ran out: no list to make (every DoT/DoH replay over it)
            return count, (self._limited(*stopping[0], now),)
        # A later bucket stops queries that got past the earlier ones: the first stopped query met the last.
        return count, [self._limited(key, allowed, now) for key, allowed in reversed(stopping)]

    def _buckets_of(self, address: str, now: float) -> list[tuple[tuple[int, int], TokenBucket, float, float]]:
        """The buckets of an address's prefixes, remembered per address so a query parses nothing."""
        family, value = _address_value(address)
        buckets = self.buckets
        found = []
        for tag, mask, allowed, depth in self.prefixes.get(family, ()):
            key = (tag, value & mask)
            bucket = buckets.get(key)
            if bucket is None:
                if len(buckets) >= self.config.max_keys:
                    # The dropped bucket may be remembered for some address: forget them all, so that no
                    # prefix ever has two buckets.
                    _evict_oldest(buckets)
                    self.addresses.clear()
                bucket = buckets[key] = TokenBucket(depth, now)
            found.append((key, bucket, allowed, depth))
        if len(self.addresses) >= self.config.max_keys:
            self.addresses.clear()
        self.addresses[address] = found
        return found

    def _limited(self, key: tuple[int, int], allowed: float, now: float) -> tuple[tuple[int, int], Verdict]:
        verdict = self.limited.get(key)
        if verdict is None or verdict.until < now:
            enforced = self.modes["rate_limit"] == "enforce"
            text = f"identity={escape_text(self.identity_names.get(key[1], ''))}" if key[0] == 0 else ""
            text = text or f"prefix={_prefix_text(key)}"
            verdict = Verdict(
                "ratelimit", text, f">{query_rate(allowed)}", query_rate(allowed), now + 1.0, "refuse", enforced
            )
            self.limited[key] = verdict
            self._count(self.verdict_counts, verdict)
        verdict.until = now + 1.0
        if now - verdict.logged_at >= self.config.log_interval:
            self._log(verdict, now)
        return key, verdict

    def slip(self, key: tuple[int, int]) -> bool:
        """UDP: whether this limited query gets TC=1 (every ``slip``-th) rather than silence."""
        every = self.config.rate_limit.slip
        if every == 0:
            return False
        if len(self.slips) >= self.config.max_keys:
            self.slips.clear()
        count = self.slips.get(key, 0) + 1
        self.slips[key] = count
        return count % every == 0

    def admit_replays(self, identity: str | None, client: ClientInfo, count: int, now: float) -> int:
        """For the replay fast path: of ``count`` replays to one client arriving at ``now``, how many are answered
        (the first ones); the others go down the stages, which apply the limit or verdict.

        Replays are answers already given, so they carry nothing to analyse; only the rate limits count them.
        """
        certificate = client.certificate_identity
        if self.blocks and ("dga", certificate or client.address) in self.blocks:
            return 0
        if not self.limits_on:
            return count
        passed, stopped = self.admit_many(identity, client.address, certificate is not None, now, count)
        # Every rate-limit verdict follows the one rate_limit mode: enforced all, or none (observe).
        return passed if stopped and stopped[0][1].enforced else count

    def blocked(self, identity: str | None, subject: str, name: Name, now: float) -> Verdict | None:
        """The verdict in force on this query, if any (expired ones are dropped by the tick)."""
        blocks = self.blocks
        if not blocks:
            return None
        domain = name.domain
        for key in (
            ("dga", subject),
            ("tunnel", identity or "", domain.decode("latin-1")),
            ("flood", domain.decode("latin-1")),
        ):
            verdict = blocks.get(key)
            if verdict is not None and verdict.until > now:
                return verdict
        return None

    def flood_quota(self, name: Name, now: float) -> Verdict | None:
        """For the stage before the resolver: the flood verdict when this fetch is over its zone's quota."""
        flood = self.floods.get(name.domain)
        if flood is None or not flood.verdict.enforced:
            return None
        quota = self.config.flood.upstream_quota
        if flood.quota.take(quota, max(quota, 1.0), now):
            return None
        self.count_answer(flood.verdict, "quota")
        return flood.verdict

    def record(
        self, identity: str | None, subject: str, name: Name, qtype: int, rcode: int, cache_hit: bool, now: float
    ) -> None:
        """The observation on the way back: one bounded update per detector."""
        domain = name.domain
        below = name.below
        if self.tunnel_on and not cache_hit and below:  # the registered domain alone carries nothing
            tunnels = self.tunnels
            config = self.config.tunnel
            slot = tunnels.get((identity or "", domain), now)
            tunnels.add(slot, below, qtype in TUNNEL_TYPES, now, config.window, config.fast_window)
        if (
            rcode == NXDOMAIN
            and self.dga_on
            and not cache_hit
            and name.start >= 0
            and self.dga_score(domain) >= self.config.dga.threshold
        ):
            clients = self.clients
            clients.add(clients.get(subject, now), escape_name(name.text.split(b".")), now, self.config.dga.window)
        if self.flood_on:
            zones = self.zones
            slot = zones.get(domain, now)
            zones.add(slot, below, rcode in (NXDOMAIN, SERVFAIL), cache_hit, now, self.config.flood.window)

    def dga_score(self, domain: bytes) -> float:
        """The model's score of a registered domain, remembered: the names failing under one domain (a random
        subdomain flood, a tunnel answered NXDOMAIN) share its first label, and scoring it costs 5-10 µs."""
        scores = self.scores
        score = scores.get(domain)
        if score is None:
            if len(scores) >= _SCORES_KEPT:
                scores.clear()
            score = scores[domain] = self.model.score(domain.partition(b".")[0].decode("latin-1"))
        return score

    # --- the tick -------------------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        if now < self.next_tick or self.ticking:
            return False
        self.ticking = True
        return True

    def tick(self) -> None:
        now = self.clock()
        try:
            self._tunnels(now)
            self._dga(now)
            self._floods(now)
            self._expire(now)
        finally:
            self.next_tick = now + self.config.tick_seconds
            self.ticking = False

    def _tunnels(self, now: float) -> None:
        config = self.config.tunnel
        tunnels = self.tunnels
        for (identity, domain), slot in tunnels.take_dirty().items():
            queries = tunnels.queries[slot]
            if queries < config.min_queries:
                continue
            age = now - tunnels.born[slot]
            decay = now - tunnels.stamp[slot]
            slow = rate(tunnels.slow[slot] * math.exp(-decay / config.window), age, config.window)
            fast = rate(tunnels.fast[slot] * math.exp(-decay / config.fast_window), age, config.fast_window)
            distinct, names = tunnels.names.figures(slot, int(now * 2 / config.window))
            if names == 0 or distinct / names < config.min_unique_ratio:
                continue
            if age >= config.fast_window and fast >= config.fast_bytes_per_second:
                measured, limit = fast, config.fast_bytes_per_second
            elif age >= config.window * _MIN_AGE_FRACTION and slow >= config.limit_bytes_per_second:
                measured, limit = slow, config.limit_bytes_per_second
            else:
                continue
            key = f"identity={escape_text(identity)} domain={escape_name(domain.split(b'.'))}"
            details: dict[str, object] = {
                "distinct_names": round(distinct),
                "names": names,
                "tunnel_type_share": round(tunnels.tunnel_types[slot] / queries, 2),
                "entropy": round(_entropy(tunnels.samples[slot]), 2),
            }
            self._verdict(
                ("tunnel", identity, domain.decode("latin-1")),
                "tunnel",
                key,
                bytes_rate(measured),
                bytes_rate(limit),
                config.block_seconds,
                config.action,
                details,
                now,
            )

    def _dga(self, now: float) -> None:
        config = self.config.dga
        clients = self.clients
        for subject, slot in clients.take_dirty().items():
            score = clients.score[slot] * math.exp(-(now - clients.stamp[slot]) / config.window)
            if score < config.min_names:
                continue
            self._verdict(
                ("dga", subject),
                "dga",
                f"client={escape_text(subject)}",
                f"{score:.0f}names",
                f"{config.min_names}names",
                config.block_seconds,
                config.action,
                {"examples": list(clients.examples[slot])},
                now,
            )

    def _floods(self, now: float) -> None:
        config = self.config.flood
        zones = self.zones
        for domain, slot in zones.take_dirty().items():
            decay = math.exp(-(now - zones.stamp[slot]) / config.window)
            age = now - zones.born[slot]
            queries = zones.queries[slot] * decay
            qps = rate(queries, age, config.window)
            children, _ = zones.children.figures(slot, int(now * 2 / config.window))
            total = zones.queries[slot]
            failures = zones.failures[slot] / total if total else 0.0
            hits = zones.hits[slot] / total if total else 0.0
            if not (
                qps >= config.min_queries_per_second
                and children >= config.min_children
                and failures >= config.min_failure_ratio
                and hits <= config.max_cache_hit_ratio
            ):
                continue
            zone = domain.decode("latin-1")
            key = f"zone={escape_name(domain.split(b'.'))}"
            details: dict[str, object] = {
                "children": round(children),
                "failure_ratio": round(failures, 2),
                "cache_hit_ratio": round(hits, 2),
            }
            flood = self.floods.get(domain)
            enforced = self.modes["flood"] == "enforce"
            if flood is None:
                verdict = Verdict(
                    "flood",
                    key,
                    query_rate(qps),
                    query_rate(config.min_queries_per_second),
                    now + config.hold_seconds,
                    "quota",
                    enforced,
                    details,
                )
                self._count(self.verdict_counts, verdict)
                self.floods[domain] = Flood(verdict, TokenBucket(max(config.upstream_quota, 1.0), now), now)
                self._log(verdict, now)
                continue
            flood.verdict.until = now + config.hold_seconds
            flood.verdict.measured = query_rate(qps)
            flood.verdict.details = details
            self._log(flood.verdict, now)
            if config.block_after and now - flood.since >= config.block_after:
                self._verdict(
                    ("flood", zone),
                    "flood",
                    key,
                    query_rate(qps),
                    query_rate(config.min_queries_per_second),
                    config.block_seconds,
                    "refuse",
                    details,
                    now,
                )

    def _verdict(
        self,
        key: tuple[str, ...],
        detector: str,
        text: str,
        measured: str,
        limit: str,
        seconds: float,
        action: str,
        details: dict[str, object],
        now: float,
    ) -> None:
        mode = self.modes["rate_limit" if detector == "ratelimit" else detector]
        enforced = mode == "enforce" and action != "log"
        verdict = self.blocks.get(key)
        if verdict is None or verdict.until <= now:
            verdict = Verdict(detector, text, measured, limit, now + seconds, action, enforced, details)
            self.blocks[key] = verdict
            self._count(self.verdict_counts, verdict)
            if enforced and self.on_block is not None:
                self.on_block()
        else:
            verdict.measured, verdict.details, verdict.until = measured, details, now + seconds
        self._log(verdict, now)

    def _expire(self, now: float) -> None:
        # list() copies in one step: UDP lane threads add rate-limit verdicts while this runs on the event loop.
        for key, verdict in list(self.blocks.items()):
            if verdict.until <= now:
                self.blocks.pop(key, None)
        for bucket_key, verdict in list(self.limited.items()):
            if verdict.until <= now:
                self.limited.pop(bucket_key, None)
        for domain, flood in list(self.floods.items()):
            if flood.verdict.until <= now:
                self.floods.pop(domain, None)
        if not self.limited:
            self.slips.clear()

    # --- events, counts, explanations -----------------------------------------------------------------------

    def _log(self, verdict: Verdict, now: float) -> None:
        if now - verdict.logged_at < self.config.log_interval or self.emit is None:
            return
        verdict.logged_at = now
        self.emit(verdict.event(now))

    def _count(self, counts: dict[tuple[str, str], int], verdict: Verdict) -> None:
        label = (verdict.detector, verdict.action if verdict.enforced else "log")
        counts[label] = counts.get(label, 0) + 1

    def count_answer(self, verdict: Verdict, action: str) -> None:
        label = (verdict.detector, action)
        self.answer_counts[label] = self.answer_counts.get(label, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Prometheus families: verdicts and answers by detector and action, tracked keys by table."""
        verdicts = CounterMetricFamily(
            "ztdns_detect_verdicts",
            "Detection verdicts, by detector and action (log in observe mode)",
            labels=["detector", "action"],
        )
        for (detector, action), count in sorted(self.verdict_counts.items()):
            verdicts.add_metric([detector, action], count)
        answers = CounterMetricFamily(
            "ztdns_detect_answers",
            "Queries answered by a detection action, by detector and action",
            labels=["detector", "action"],
        )
        for (detector, action), count in sorted(self.answer_counts.items()):
            answers.add_metric([detector, action], count)
        keys = GaugeMetricFamily("ztdns_detect_keys", "Keys tracked by the detectors, by table", labels=["table"])
        for table, size in (
            ("tunnel", len(self.tunnels)),
            ("dga", len(self.clients)),
            ("zone", len(self.zones)),
            ("bucket", len(self.buckets) + len(self.identity_buckets)),
            ("verdict", len(self.blocks) + len(self.floods)),
        ):
            keys.add_metric([table], size)
        yield from (verdicts, answers, keys)

    def describe(self, identity: str | None, subject: str, name: Name) -> list[str]:
        """What the detectors make of a question, for ``ztdns explain`` (which starts with empty state)."""
        modes = ", ".join(f"{detector} {mode}" for detector, mode in self.modes.items())
        domain = escape_name(name.domain.split(b"."))
        lines = [f"detect:    {modes}"]
        if self.allowed(name):
            shown = escape_name(name.text.split(b"."))
            lines.append(f"           {shown}: under the allow-list, not analysed (rate limits still apply)")
        else:
            lines.append(f"           tracked as identity={escape_text(identity or '')} domain={domain}")
            if name.start >= 0:
                label = name.domain.partition(b".")[0]
                score = self.model.score(label.decode("latin-1"))
                lines.append(
                    f"           DGA score of {escape_name([label])!r}: {score:.3f} "
                    f"(suspicious from {self.config.dga.threshold} when it fails)"
                )
        now = self.clock()
        found = [v for v in self.active(now) if subject in v.key or domain in v.key]
        lines += [f"verdict:   {verdict.text(now)}" for verdict in found]
        if not found:
            lines.append(
                "verdict:   none in force here (verdicts live in the serving process: detect events, EDE texts)"
            )
        return lines

    def active(self, now: float | None = None) -> Iterable[Verdict]:
        """Every verdict in force, for ``explain`` and the admin view."""
        now = self.clock() if now is None else now
        yield from (v for v in self.blocks.values() if v.until > now)
        yield from (f.verdict for f in self.floods.values() if f.verdict.until > now)
        yield from (v for v in self.limited.values() if v.until > now)


def _evict_oldest(table: dict[tuple[int, int], TokenBucket]) -> None:
    # Another UDP lane thread may change the table meanwhile: then the next insert evicts instead.
    with contextlib.suppress(RuntimeError, StopIteration):
        table.pop(next(iter(table)), None)


def _address_value(address: str) -> tuple[int, int]:
    """(4 or 6, the address as an integer); (0, 0) for anything else (a Unix socket, a test double)."""
    try:
        if ":" in address:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, address.partition("%")[0]), "big")
        return 4, int.from_bytes(socket.inet_aton(address), "big")
    except OSError:
        return 0, 0


def _prefix_text(key: tuple[int, int]) -> str:
    family, length = divmod(key[0], 1000)
    if family == 4:
        return f"{socket.inet_ntop(socket.AF_INET, key[1].to_bytes(4, 'big'))}/{length}"
    return f"{socket.inet_ntop(socket.AF_INET6, key[1].to_bytes(16, 'big'))}/{length}"


def _entropy(sample: bytes) -> float:
    """Shannon entropy in bits per character of a name sample (random base32 is near 5, words near 3)."""
    if not sample:
        return 0.0
    counts: dict[int, int] = {}
    for byte in sample:
        counts[byte] = counts.get(byte, 0) + 1
    size = len(sample)
    return -sum(c / size * math.log2(c / size) for c in counts.values())


def builtin_allow_list() -> list[str]:
    import importlib.resources

    text = importlib.resources.files("ztdns").joinpath("data", "detect-allow.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
