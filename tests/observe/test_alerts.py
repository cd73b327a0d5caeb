"""The alert rules and the Grafana dashboard shipped in the package: the rules fire as documented
(``promtool test rules``, Debian's prometheus package), and every dashboard expression names exported metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_metrics import ALWAYS, AUTHORITY, FORWARD, PROCESS, RECURSION, VALIDATION

DATA = Path(__file__).resolve().parent.parent.parent / "src" / "ztdns" / "data"
RULES = DATA / "prometheus-alerts.yml"
DASHBOARD = DATA / "grafana-dashboard.json"
EXPORTED = ALWAYS | FORWARD | VALIDATION | RECURSION | AUTHORITY | PROCESS

RULE_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ztdns_queries_total{{instance="r1", transport="udp", kind="resolved", rcode="NOERROR"}}'
        values: '0+100x30'
      - series: 'ztdns_queries_total{{instance="r1", transport="udp", kind="bogus", rcode="SERVFAIL"}}'
        values: '0+20x30'
      - series: 'ztdns_dnssec_answers_total{{instance="r1", result="bogus", ede="6"}}'
        values: '0+20x30'
      - series: 'ztdns_upstream_up{{instance="r1", upstream="127.0.0.1:5300"}}'
        values: '1 1 0x20'
      - series: 'ztdns_reloads_total{{instance="r1", result="failure"}}'
        values: '0 0 0 1 1 1'
      - series: 'ztdns_sink_dropped_total{{instance="r1", sink="dnstap0", type="dnstap"}}'
        values: '0+50x30'
      - series: 'ztdns_sink_connected{{instance="r1", sink="dnstap0", type="dnstap"}}'
        values: '0x30'
      - series: 'ztdns_querylog_dropped_total{{instance="r1"}}'
        values: '0x30'
      - series: 'ztdns_detect_verdicts_total{{instance="r1", detector="tunnel", action="nxdomain"}}'
        values: '0 0 0 0 1 1 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 15m
        alertname: ZtdnsDnssecBogus
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1}}
            exp_annotations:
              summary: "r1: over 1% of answers fail DNSSEC validation"
              description: >-
                Validation failures (SERVFAIL with EDE 6-12) are 16.67% of answers: a zone's signatures broke, an
                attacker forges answers, or the trust anchors are stale. See the dnssec_bogus security events and
                ztdns_dnssec_validation_failures_total by EDE code.
      - eval_time: 15m
        alertname: ZtdnsServfailRatio
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1}}
            exp_annotations:
              summary: "r1: over 5% of answers are SERVFAIL"
              description: "SERVFAIL ratio 16.67%: upstreams failing or validation failures."
      - eval_time: 2m
        alertname: ZtdnsUpstreamDown
        exp_alerts: []
      - eval_time: 6m
        alertname: ZtdnsUpstreamDown
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, upstream: "127.0.0.1:5300"}}
            exp_annotations:
              summary: "r1: upstream 127.0.0.1:5300 is out of service"
      - eval_time: 6m
        alertname: ZtdnsAllUpstreamsDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1}}
            exp_annotations:
              summary: "r1: every upstream is out of service; only cached names answer"
      - eval_time: 5m
        alertname: ZtdnsReloadFailed
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, result: failure}}
            exp_annotations:
              summary: "r1: a config or list reload failed; the previous config keeps serving"
              description: "The server log names the file, line and key. Fix it and send SIGHUP again."
      - eval_time: 20m
        alertname: ZtdnsSinkDropping
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, sink: dnstap0, type: dnstap}}
            exp_annotations:
              summary: "r1: sink dnstap0 (dnstap) drops events"
              description: >-
                The dnstap output is stalled, unreachable or slower than the query rate: its queue is full and events
                are dropped (answers are not slowed). Check the collector.
      - eval_time: 20m
        alertname: ZtdnsSinkDisconnected
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, sink: dnstap0, type: dnstap}}
            exp_annotations:
              summary: "r1: sink dnstap0 is not connected to its collector"
      - eval_time: 20m
        alertname: ZtdnsQueryLogDropping
        exp_alerts: []
      - eval_time: 6m
        alertname: ZtdnsDetection
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, detector: tunnel, action: nxdomain}}
            exp_annotations:
              summary: "r1: tunnel verdicts (nxdomain)"
              description: "Detection verdicts in the last 5 minutes; the detect events in the query log name the keys."
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian prometheus)")
def test_alert_rules_fire_as_documented(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(rules=RULES))
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        ["promtool", "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


METRIC = re.compile(r"\b((?:ztdns|process)_[a-z0-9_]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expressions(value: object) -> list[str]:
    if isinstance(value, dict):
        found = [value["expr"]] if isinstance(value.get("expr"), str) else []
        found += [v for k, v in value.items() if k == "query" and isinstance(v, str)]
        return found + [e for v in value.values() for e in _expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in _expressions(v)]
    return []


def test_every_dashboard_expression_names_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _expressions(dashboard)
    assert len(expressions) >= 20
    named = {_family(name) for expr in expressions for name in METRIC.findall(expr)}
    process = {"process_cpu_seconds", "process_resident_memory_bytes"}  # prometheus_client's process collector
    assert named - EXPORTED - process == set()
    # It covers what the alerts watch.
    rules = {_family(name) for name in METRIC.findall(RULES.read_text())}
    assert rules <= named | {"ztdns_dnssec_validation_failures"}


def test_the_rules_name_only_exported_metrics() -> None:
    assert {_family(name) for name in METRIC.findall(RULES.read_text())} <= EXPORTED
