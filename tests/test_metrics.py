"""Every capability exports its own metrics (``collect()``, registered with ``Metrics``); names stay a contract.

The families the server exports in each resolver mode, with an authority beside it, are listed here and in
docs/configuration.md: renaming one fails this test, as dashboards and alerts would break.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fixtures.tools import require_tool
from fixtures.unbound import free_port
from ztdns.authority.handler import Authority
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.observe.endpoint import serve_metrics
from ztdns.observe.metrics import Metrics, MetricsCollector

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"

ALWAYS = {
    "ztdns_queries",
    "ztdns_query_latency_seconds",
    "ztdns_cache_entries",
    "ztdns_cache_hits",
    "ztdns_cache_misses",
    "ztdns_cache_stale_answers",
    "ztdns_cache_prefetches",
    "ztdns_cache_evictions",
    "ztdns_replay_entries",
    "ztdns_inflight_queries",
    "ztdns_policy_compile_child_failures",
    "ztdns_upstream_sockets_open",
    "ztdns_querylog_dropped",
    "ztdns_detect_verdicts",
    "ztdns_detect_answers",
    "ztdns_detect_keys",
    "ztdns_sink_events",
    "ztdns_sink_dropped",
    "ztdns_sink_connected",
    "ztdns_decisions",
    "ztdns_dnssec_answers",
}
# Exported by the server process beside the frontend's (ztdns.daemon registers ProcessInfo; test_endpoint.py).
PROCESS = {"ztdns_build_info", "ztdns_reloads", "ztdns_config_generation"}
BY_LABELS = {"ztdns_decisions", "ztdns_dnssec_answers"}  # the query counts by all labels, with ztdns_queries
FORWARD = {
    "ztdns_upstream_up",
    "ztdns_upstream_srtt_seconds",
    "ztdns_upstream_queries",
    "ztdns_upstream_errors",
}
VALIDATION = {"ztdns_dnssec_validation_failures"}
RECURSION = {
    "ztdns_recursion_upstream_queries",
    "ztdns_recursion_forged_dropped",
    "ztdns_recursion_upstream_sockets",
    "ztdns_recursion_aggressive_answers",
}
AUTHORITY = {
    "ztdns_authority_updates",
    "ztdns_authority_updates_refused",
    "ztdns_authority_transfers",
    "ztdns_authority_transfers_refused",
    "ztdns_authority_rrl_dropped",
    "ztdns_authority_rrl_slipped",
    "ztdns_authority_replay_entries",
    "ztdns_authority_zone_serial",
    "ztdns_authority_signatures",
    "ztdns_authority_skr_remaining_seconds",
}
SHARED_CACHE = {
    "ztdns_shared_cache_hits",
    "ztdns_shared_cache_misses",
    "ztdns_shared_cache_errors",
    "ztdns_shared_cache_stores",
    "ztdns_shared_cache_skipped",
}
CONTROL = {"ztdns_control_revision", "ztdns_control_connected", "ztdns_control_applied", "ztdns_control_refused"}
EVENTS = {"ztdns_events_published", "ztdns_events_dropped"}

LISTS = {
    "ztdns_list_entries",
    "ztdns_list_skipped_lines",
    "ztdns_list_age_seconds",
    "ztdns_list_last_success_timestamp_seconds",
    "ztdns_list_fetch_failures",
}

BASE = """
[[listen]]
transport = "udp"
address = "127.0.0.1:0"

[log.query_log]
output = "off"
"""


def families(metrics: Metrics) -> set[str]:
    return {family.name for family in MetricsCollector(lambda: metrics).collect()}


def exported(resolver: str, validation: bool) -> set[str]:
    config = parse_config(BASE + resolver + f"\n[dnssec]\nvalidation = {str(validation).lower()}\n")
    metrics = Metrics()
    frontend = Frontend(config, metrics)
    try:
        return families(metrics)
    finally:
        asyncio.run(frontend.close())


def test_each_resolver_mode_exports_its_own_families() -> None:
    forward = '[resolver]\nmode = "forward"\n[[resolver.upstreams]]\naddress = "127.0.0.1:1"\n'
    assert exported(forward, validation=False) == ALWAYS | FORWARD
    assert exported(forward, validation=True) == ALWAYS | FORWARD | VALIDATION
    recursive = '[resolver]\nmode = "recursive"\n'
    assert exported(recursive, validation=False) == ALWAYS | RECURSION
    assert exported(recursive, validation=True) == ALWAYS | RECURSION | VALIDATION
    assert exported('[resolver]\nmode = "none"\n', validation=False) == ALWAYS


def test_a_shared_cache_adds_its_families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTDNS_TEST_SEED", "a secret of more than sixteen bytes")
    shared = (
        '[resolver]\nmode = "none"\n[cache.shared]\nurl = "redis://127.0.0.1:1/0"\nkey_seed_env = "ZTDNS_TEST_SEED"\n'
    )
    assert exported(shared, validation=False) == ALWAYS | SHARED_CACHE


def test_control_families(tmp_path: Path) -> None:
    from ztdns.config.control import ControlConfig
    from ztdns.control.bundle import new_key_pair
    from ztdns.control.events import EventPublisher, JetStreamSink
    from ztdns.control.node import Watcher

    new_key_pair(tmp_path / "key", tmp_path / "key.pub")
    control = ControlConfig(
        servers=["nats://127.0.0.1:1"], public_key="key.pub", node="n", state_dir="state", events="events"
    )

    async def nothing(*_: object) -> None:
        return None

    watcher = Watcher(control, tmp_path, "resolver", nothing)
    assert {family.name for family in watcher.collect()} == CONTROL
    sink = JetStreamSink(EventPublisher(control), control.events_queue)
    try:
        assert {family.name for family in sink.collect()} == EVENTS
    finally:
        sink.close()


def test_an_authority_sharing_the_metrics_adds_its_families() -> None:
    metrics = Metrics()
    Authority([], metrics=metrics)
    assert families(metrics) == {"ztdns_queries", "ztdns_query_latency_seconds", *BY_LABELS} | AUTHORITY


def test_list_feeds_export_their_families(tmp_path: Path) -> None:
    from ztdns.feeds import FeedManager

    async def nothing() -> None:
        return None

    config = parse_config('[policies.p]\ndeny_lists = ["https://lists.example/ads.txt"]\n', "t.toml", tmp_path)
    metrics = Metrics()
    metrics.register(FeedManager(config, nothing))
    # The answer counters every Metrics exports are not the feeds' own.
    answers = {"ztdns_queries", "ztdns_query_latency_seconds", "ztdns_decisions", "ztdns_dnssec_answers"}
    assert families(metrics) - answers == LISTS


def test_scrape_renders_every_family() -> None:
    metrics = Metrics()
    frontend = Frontend(parse_config(BASE), metrics)
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: metrics))
    text = generate_latest(registry).decode()
    asyncio.run(frontend.close())
    assert "ztdns_cache_misses_total 0.0" in text
    assert "ztdns_inflight_queries 0.0" in text


def test_docs_name_every_metric() -> None:
    section = DOCS.read_text().split("## `[metrics]`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(ztdns_[a-z0-9_]+)`", section))
    assert (
        documented
        == ALWAYS | FORWARD | VALIDATION | RECURSION | AUTHORITY | PROCESS | LISTS | SHARED_CACHE | CONTROL | EVENTS
    )


@pytest.mark.slow
def test_the_metrics_server_answers_head_like_get_without_the_body() -> None:
    """`curl -I` and monitoring probes send HEAD: prometheus_client's own app answered it 405."""
    curl = require_tool("curl")
    registry = CollectorRegistry()
    port = free_port()
    serve_metrics("127.0.0.1", port, registry)
    url = f"http://127.0.0.1:{port}/metrics"
    head = subprocess.run([curl, "-sS", "-I", url], capture_output=True, text=True, timeout=10, check=True).stdout
    get = subprocess.run([curl, "-sS", url], capture_output=True, timeout=10, check=True).stdout
    assert head.startswith("HTTP/1.0 200"), head
    assert f"content-length: {len(get)}" in head.lower()
