"""Schedules: rules and policies in force only in time windows, decided with a fake clock; `explain --at`."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import dns.rdatatype
import pytest

from ztdns.config import ConfigError, parse_config
from ztdns.policy import View, compile_views, schedule

A = int(dns.rdatatype.A)

SCHOOL = """
[schedules.school]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:00"
end = "15:00"
timezone = "Europe/Berlin"

[schedules.night]
start = "22:00"
end = "06:00"
"""


def views(tmp_path: Path, policies: str) -> dict[str, View]:
    return compile_views(parse_config(SCHOOL + policies, "test.toml", tmp_path))


def at(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    moment = datetime.datetime.fromisoformat(text).timestamp()
    monkeypatch.setattr(schedule, "now", lambda: moment)


def test_scheduled_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = views(
        tmp_path,
        '[identities.kid]\npolicies = ["kids"]\n'
        '[policies.kids]\nallow = ["**"]\ndeny = [{ pattern = "**.social.example", schedule = "school" }]\n',
    )["kid"]
    at(monkeypatch, "2026-12-07T09:30+01:00")  # Monday, school hours in Berlin
    assert not v.decide("www.social.example", A).allowed
    at(monkeypatch, "2026-12-07T15:00+01:00")  # the end is exclusive
    assert v.decide("www.social.example", A).allowed
    at(monkeypatch, "2026-12-07T07:59:59+01:00")
    assert v.decide("www.social.example", A).allowed
    at(monkeypatch, "2026-12-07T08:30+00:00")  # 09:30 in Berlin
    assert not v.decide("www.social.example", A).allowed
    at(monkeypatch, "2026-12-12T10:00+01:00")  # Saturday
    assert v.decide("www.social.example", A).allowed


def test_scheduled_policy_past_midnight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = views(
        tmp_path,
        '[identities.kid]\npolicies = ["web", "bedtime"]\n'
        '[policies.web]\nallow = ["**"]\n'
        '[policies.bedtime]\nschedule = "night"\ndeny = ["**"]\n',
    )["kid"]
    for moment, allowed in (
        ("2026-12-07T21:59+00:00", True),
        ("2026-12-07T22:00+00:00", False),
        ("2026-12-08T03:00+00:00", False),
        ("2026-12-08T06:00+00:00", True),
    ):
        at(monkeypatch, moment)
        assert v.decide("example.com", A).allowed is allowed, moment


def test_unknown_schedule_and_bad_times(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown schedule 'weekend'"):
        parse_config('[policies.p]\nschedule = "weekend"\n', "t.toml", tmp_path)
    with pytest.raises(ConfigError, match="unknown schedule"):
        parse_config('[policies.p]\ndeny = [{ pattern = "x.example", schedule = "weekend" }]\n', "t.toml", tmp_path)
    with pytest.raises(ConfigError, match="HH:MM"):
        parse_config('[schedules.s]\nstart = "8:00"\n', "t.toml", tmp_path)
    with pytest.raises(ConfigError, match="time zone"):
        parse_config('[schedules.s]\ntimezone = "Mars/Olympus"\n', "t.toml", tmp_path)


@pytest.mark.slow
def test_explain_at(tmp_path: Path) -> None:
    config = tmp_path / "ztdns.toml"
    config.write_text(
        SCHOOL + '[resolver]\nmode = "none"\n[identities.kid]\nnetworks = ["10.0.0.0/8"]\npolicies = ["kids"]\n'
        '[policies.kids]\nallow = ["**"]\ndeny = [{ pattern = "**.social.example", schedule = "school" }]\n'
    )

    def explain(when: str) -> str:
        command = [sys.executable, "-m", "ztdns", "explain", "--config", str(config), "--client", "kid"]
        command += ["www.social.example", "--at", when]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout

    assert "decision:  deny" in explain("2026-12-07T09:30+01:00")
    assert "decision:  allow" in explain("2026-12-07T20:00+01:00")
