"""Refused handshakes are logged without letting a scanner flood the log."""

from __future__ import annotations

import logging

import pytest

from ztdns.transport.tls import RefusalLog


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_logged_as_a_few_lines_and_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    refusals = RefusalLog("dot 127.0.0.1:853", window=10.0, detailed=5, clock=clock)
    with caplog.at_level(logging.WARNING, logger="ztdns.transport.tls"):
        for i in range(1900):
            refusals.refused("unsupported protocol" if i % 2 else "no shared cipher")
        assert len(caplog.records) == 5  # the rest waits for the summary
        clock.now += 10.0
        refusals.refused("certificate has expired")  # a new window: the old one is summarised first
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 7
    assert messages[5] == (
        "dot 127.0.0.1:853: 1895 more handshakes refused: unsupported protocol x948; no shared cipher x947"
    )
    assert messages[6] == "dot 127.0.0.1:853: handshake refused: certificate has expired"
    assert refusals.total == 1901


def test_flush_with_nothing_suppressed_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog("doh x", clock=Clock())
    with caplog.at_level(logging.WARNING):
        refusals.refused("no certificate")
        refusals.flush()
    assert len(caplog.records) == 1
