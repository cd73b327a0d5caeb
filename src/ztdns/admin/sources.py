"""What the admin API shows of other capabilities: the query log, detections and overview from the memory sink
(``ztdns.observe.recent``, with its privacy mode), list status from the policies and the feeds
(``ztdns.feeds``), the fleet's nodes and flows from the control plane (``ztdns.control``) when one is configured.

Each function answers a typed model; a source that is not configured or not reachable answers ``available:
false`` with the reason, never an error status: the console shows the reason.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import time
from typing import Any

from ztdns.admin import models
from ztdns.config import Config
from ztdns.feeds import FeedManager
from ztdns.observe.recent import Filters, RecentSink
from ztdns.policy.sources import is_feed

NO_MEMORY_SINK = (
    'no memory sink is configured: add [[log.sinks]] with type = "memory" (and its privacy mode) to keep the '
    "latest query records for the console"
)
NO_CONTROL = "no [control] section: this node has no control plane to read the fleet from"
PAGE_LIMIT = 1000


def query_log(sink: RecentSink | None, query: dict[str, str]) -> models.QueryLog:
    """``/v1/querylog?name=&client=&identity=&decision=&since=&until=&limit=&before=`` (times: Unix seconds)."""
    if sink is None:
        return models.QueryLog(available=False, reason=NO_MEMORY_SINK)
    if sink.privacy == "aggregate":
        return models.QueryLog(
            available=False,
            reason="the memory sink's privacy is aggregate: it keeps no per-query records, only these windows' counts",
            privacy=sink.privacy,
            windows=sink.recent_windows(),
        )
    filters = Filters(
        name=query.get("name", "").strip().lower().rstrip("."),
        client=query.get("client", "").strip(),
        identity=query.get("identity", "").strip(),
        decision=query.get("decision", "").strip(),
        since=_number(query, "since"),
        until=_number(query, "until"),
    )
    limit = max(1, min(int(_number(query, "limit") or 100), PAGE_LIMIT))
    before = _number(query, "before")
    page = sink.search(filters, limit, None if before is None else int(before))
    records = [models.QueryRecord.model_validate(record, from_attributes=True) for record in page.records]
    return models.QueryLog(available=True, privacy=sink.privacy, held=page.held, records=records, more=page.more)


def _number(query: dict[str, str], key: str) -> float | None:
    """A number parameter; ValueError (answered 400) when it is not one."""
    text = query.get(key, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key} is a number") from None


def detections(sink: RecentSink | None, limit: int = 500) -> models.Detections:
    if sink is None:
        return models.Detections(available=False, reason=NO_MEMORY_SINK)
    if sink.privacy == "aggregate":
        counts: collections.Counter[str] = collections.Counter()
        for window in sink.recent_windows():
            found = window.get("detections", {})
            assert isinstance(found, dict)
            counts.update({key.partition(":")[2] or key: int(value) for key, value in found.items()})
        reason = "the memory sink's privacy is aggregate: verdicts are only counted, by detector"
        return models.Detections(available=False, reason=reason, privacy=sink.privacy, counts=dict(counts))
    now = time.time()
    merged: dict[tuple[str, str], models.DetectionInfo] = {}
    counts = collections.Counter()
    for event in reversed(sink.recent_detections(10 * limit)):  # oldest first: the latest event wins
        fields = event.fields
        detector, key = str(fields.get("detector", "")), str(fields.get("key", ""))
        counts[detector] += 1
        seen = merged.get((detector, key))
        until = _text(fields.get("until"))
        merged[(detector, key)] = models.DetectionInfo(
            detector=detector,
            key=key,
            domain=_domain(fields),
            action=str(fields.get("action", "")),
            mode=str(fields.get("mode", "")),
            measured=_text(fields.get("measured")),
            limit=_text(fields.get("limit")),
            until=until,
            in_force=until is not None and _epoch(until) > now,
            first_seen=event.time if seen is None else seen.first_seen,
            last_seen=event.time,
            events=1 if seen is None else seen.events + 1,
            text=_text(fields.get("text")),
            evidence={name: value for name, value in fields.items()},
        )
    latest = sorted(merged.values(), key=lambda item: item.last_seen, reverse=True)[:limit]
    return models.Detections(available=True, privacy=sink.privacy, detections=latest, counts=dict(counts))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _epoch(text: str) -> float:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return 0.0


def _domain(fields: dict[str, object]) -> str | None:
    """The domain a verdict is about: its ``domain`` field, or ``domain=`` in its key (escaped by the detector)."""
    domain = fields.get("domain")
    if isinstance(domain, str) and domain:
        return domain
    for part in str(fields.get("key", "")).split(" "):
        if part.startswith("domain="):
            return part.removeprefix("domain=") or None
    return None


def overview(sink: RecentSink | None, query: dict[str, str]) -> models.Overview:
    if sink is None:
        return models.Overview(available=False, reason=NO_MEMORY_SINK)
    if sink.privacy == "aggregate":
        windows = sink.recent_windows()
        return models.Overview(
            available=True,
            privacy=sink.privacy,
            reason="privacy aggregate: one bucket per window; no names of blocked queries are kept",
            start=_epoch(str(windows[0]["start"])) if windows else time.time(),
            bucket_seconds=sink.aggregate.window if sink.aggregate is not None else 300.0,
            queries=[int(str(w.get("queries", 0))) for w in windows],
            blocked=[_blocked(w.get("decisions")) for w in windows],
            detections=[_total(w.get("detections")) for w in windows],
        )
    bucket = max(1.0, min(_number(query, "bucket") or 60.0, 86_400.0))
    buckets = max(1, min(int(_number(query, "buckets") or 60), 1440))
    timeline = sink.timeline(bucket, buckets)
    return models.Overview(
        available=True,
        privacy=sink.privacy,
        start=timeline.start,
        bucket_seconds=timeline.bucket_seconds,
        queries=timeline.queries,
        blocked=timeline.blocked,
        detections=timeline.detections,
        top_blocked_names=[models.NameCount(name=n, count=c) for n, c in timeline.top_blocked_names],
        top_blocked_identities=[models.NameCount(name=n, count=c) for n, c in timeline.top_blocked_identities],
    )


def _blocked(decisions: object) -> int:
    if not isinstance(decisions, dict):
        return 0
    return int(decisions.get("deny", 0)) + int(decisions.get("refuse", 0))


def _total(counts: object) -> int:
    return sum(int(value) for value in counts.values()) if isinstance(counts, dict) else 0


def lists(config: Config, feeds: FeedManager) -> models.Lists:
    uses: dict[str, list[models.ListUse]] = {}
    for name, policy in config.policies.items():
        for used_as, sources in (("deny", policy.deny_lists), ("allow", policy.allow_lists)):
            for source in sources:
                uses.setdefault(source, []).append(models.ListUse(policy=name, used_as=used_as))
    items = []
    for source, used_by in uses.items():
        if is_feed(source):
            feed = feeds.feeds.get(source)
            status = feed.status if feed is not None else None
            data: dict[str, Any] = (
                {}
                if status is None
                else {
                    "entries": status.entries,
                    "copy_time": status.copy_time,
                    "last_attempt": status.last_attempt,
                    "last_success": status.last_success,
                    "last_error": status.last_error,
                    "last_error_time": status.last_error_time,
                    "failures": status.failures,
                    "skipped": dict(status.skipped),
                }
            )
            items.append(models.ListInfo(source=source, kind="feed", used_by=used_by, **data))
            continue
        path = config.base_dir / source
        try:
            stat = path.stat()
            size, modified, error = stat.st_size, stat.st_mtime, None
        except OSError as exc:
            size, modified, error = None, None, exc.strerror or str(exc)
        items.append(
            models.ListInfo(source=source, kind="file", used_by=used_by, size=size, modified=modified, last_error=error)
        )
    return models.Lists(lists=items)


async def fleet_nodes(config: Config) -> models.FleetNodes:
    control = config.control
    if control is None:
        return models.FleetNodes(available=False, reason=NO_CONTROL)
    from ztdns.control.cli import reports

    try:
        async with asyncio.timeout(control.connect_timeout + 3.0):
            published, nodes = await reports(control.servers, control.bucket)
    except Exception as exc:  # unreachable, no bucket yet: the console says so
        return models.FleetNodes(available=False, reason=f"control plane: {type(exc).__name__}: {exc}")
    return models.FleetNodes(available=True, published=published, nodes=nodes)


async def flows(config: Config, query: dict[str, str]) -> models.Flows:
    control = config.control
    if control is None:
        return models.Flows(available=False, reason=NO_CONTROL)
    if not control.events:
        return models.Flows(available=False, reason="[control] events names no stream: agents publish no flows")
    from ztdns.control.cli import tail

    since = max(1.0, min(_number(query, "since") or 3600.0, 7 * 86_400.0))
    limit = max(1, min(int(_number(query, "limit") or 200), PAGE_LIMIT))
    latest: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
    try:
        async with asyncio.timeout(control.connect_timeout + 5.0):
            async for text in tail(control.servers, control.events, "flow", since=since, idle=0.5):
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    latest.append(event)
    except TimeoutError:
        pass  # what arrived in time is shown
    except Exception as exc:
        return models.Flows(available=False, reason=f"control plane: {type(exc).__name__}: {exc}")
    return models.Flows(available=True, flows=list(reversed(latest)))
