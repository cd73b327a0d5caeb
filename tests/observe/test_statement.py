"""``ztdns privacy-statement``: generated from the config, in the RFC 8932 section 6 shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztdns.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_the_statement_of_the_siem_example_says_what_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["privacy-statement", "--config", str(EXAMPLES / "siem.toml")]) == 0
    text = capsys.readouterr().out
    headings = [
        "6.1.1 Policy",
        "1. Treatment of IP addresses.",
        "2. Data collection and sharing.",
        "3. Exceptions.",
        "4. Associated entities.",
        "5. Correlation of data.",
        "6. Result filtering.",
        "6.1.2 Practice",
    ]
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert "dnstap messages (the full queries and answers) to dnstap.sock" in text
    assert "client addresses encrypted with ipcrypt-deterministic" in text
    assert "replaced every 1 day" in text and "rotated files are deleted by ztdns after 1 day" in text
    assert "127.0.0.1:5300 (udp)" in text and "Instance: resolver-1." in text


def test_the_statement_follows_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "z.toml"
    config.write_text(
        '[log.query_log]\noutput = "off"\n[[log.sinks]]\ntype = "syslog"\naddress = "127.0.0.1:6514"\n'
        'protocol = "tls"\nprivacy = "aggregate"\nk = 10\nwindow = 3600\n'
    )
    assert main(["privacy-statement", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "syslog over TLS to 127.0.0.1:6514: no per-query records: every 1 hour" in text
    assert "at least 10 distinct clients" in text and "JSON lines" not in text


def test_dnstap_messages_are_stated_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ztdns.config.log import SinkConfig

    config = tmp_path / "z.toml"
    config.write_text(
        '[log.query_log]\noutput = "off"\n[[log.sinks]]\ntype = "dnstap"\nsocket = "d.sock"\nmessages = ["resolver"]\n'
    )
    assert main(["privacy-statement", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "per exchange with an upstream server" in text
    assert "per query" not in text and "client address and port in clear" not in text
    with pytest.raises(ValueError, match="dnstap sinks only"):
        SinkConfig(type="json", messages=["client"])
