"""The daemon's own log lines: one structured format (logfmt), and something to see at debug level."""

from __future__ import annotations

import logging
import re
import signal
import time
from pathlib import Path

import pytest

from fixtures.hostile import server_config
from fixtures.server import ServerProcess
from fixtures.unbound import UnboundFactory, free_port
from ztdns.observe.logfmt import LogfmtFormatter

# key=value pairs: a bare value, or a quoted one with \-escapes.
_PAIR = r'[a-z_]+=(?:[^ "=\s]+|"(?:[^"\\]|\\.)*")'
LOGFMT = re.compile(
    rf"^time=\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z level=[a-z]+ logger=\S+ msg=\S.*?(?: {_PAIR})*$"
)


def test_a_record_is_one_logfmt_line_with_its_fields() -> None:
    record = logging.LogRecord("ztdns.dnssec", logging.WARNING, __file__, 1, "DNSSEC validation failed", (), None)
    record.event, record.qname, record.text = "dnssec_bogus", "www.bogus.lab.", 'bogus.lab.: "x"\nsecond line'
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    assert LOGFMT.match(line), line
    assert ' level=warning logger=ztdns.dnssec msg="DNSSEC validation failed" event=dnssec_bogus' in line
    assert 'qname=www.bogus.lab. text="bogus.lab.: \\"x\\"\\nsecond line"' in line


@pytest.mark.slow
def test_serve_logs_logfmt_and_debug_shows_reload_timings_and_listener_counts(
    tmp_path: Path, unbound_upstream: UnboundFactory
) -> None:
    upstream = unbound_upstream(["www.test. 300 IN A 192.0.2.1"])
    port = free_port()
    config = server_config(port, upstream, extra='[log]\nlevel = "debug"\n')
    with ServerProcess(config, tmp_path, port=port) as server:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload: config read in" not in server.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = server.stderr.splitlines()
    assert any(line.startswith("ztdns: listening on udp 127.0.0.1:") for line in lines)  # the human summary
    records = [line for line in lines if not line.startswith("ztdns: ")]
    assert records and all(LOGFMT.match(line) for line in records), records
    assert any("level=debug" in line and "reload: config read in" in line for line in records)
    assert any(f"listener udp 127.0.0.1:{port}:" in line for line in records)
    assert any(f"listener tcp 127.0.0.1:{port}:" in line for line in records)
