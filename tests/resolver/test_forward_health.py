"""Upstream health and selection, driven with explicit times: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from ztdns.resolver.health import SRTT_DECAY, HealthBook


def book(count: int = 3, failures_before_down: int = 2, initial: float = 1.0, cap: float = 60.0) -> HealthBook:
    return HealthBook([f"10.0.0.{i}:53" for i in range(count)], failures_before_down, initial, cap)


def test_untried_upstreams_come_first_in_config_order_then_by_srtt() -> None:
    health = book()
    assert health.order(0) == [0, 1, 2]
    health.succeeded(0, 0.050)
    health.succeeded(1, 0.010)
    assert health.order(0) == [2, 1, 0]  # 2 untried, then the faster one
    health.succeeded(2, 0.030)
    assert health.order(0) == [1, 2, 0]


def test_srtt_is_smoothed_and_others_decay() -> None:
    health = book(2)
    health.succeeded(0, 0.100)
    health.succeeded(0, 0.200)
    assert health.snapshot(0)[0].srtt == pytest.approx(0.7 * 0.100 + 0.3 * 0.200)
    before = health.snapshot(0)[0].srtt
    assert before is not None
    health.succeeded(1, 0.010)
    assert health.snapshot(0)[0].srtt == pytest.approx(before * SRTT_DECAY)


def test_failures_rank_an_upstream_lower_before_it_goes_down() -> None:
    health = book(2, failures_before_down=3)
    health.succeeded(0, 0.010)
    health.succeeded(1, 0.020)
    health.failed(0, now=0, penalty=1.5)
    view = health.snapshot(0)[0]
    assert view.up and view.failures == 1 and view.errors == 1 and view.queries == 2
    assert health.order(0) == [1, 0]


def test_held_down_after_threshold_with_doubling_backoff_capped() -> None:
    health = book(2, failures_before_down=2, initial=1.0, cap=5.0)
    health.failed(0, now=0, penalty=1)
    assert health.snapshot(0)[0].up
    health.failed(0, now=0, penalty=1)
    assert not health.snapshot(0)[0].up and health.snapshot(0)[0].down_for == 1.0
    assert health.order(0.5) == [1]  # held down: not offered while another is up
    now = 1.0
    for expected in (2.0, 4.0, 5.0, 5.0):  # each failure after the hold expires doubles it, up to the cap
        assert health.order(now) == [1, 0]
        health.failed(0, now=now, penalty=1)
        assert health.snapshot(now)[0].down_for == expected
        now += expected


def test_failures_while_held_down_do_not_stack() -> None:
    health = book(1, failures_before_down=1, initial=1.0)
    health.failed(0, now=0, penalty=1)
    health.failed(0, now=0.2, penalty=1)  # a query that was already in flight
    health.failed(0, now=0.4, penalty=1)
    assert health.snapshot(0.4)[0].down_for == pytest.approx(0.6)


def test_when_all_are_down_the_soonest_to_return_is_tried() -> None:
    health = book(2, failures_before_down=1, initial=1.0)
    health.failed(0, now=0, penalty=1)
    health.failed(1, now=0.5, penalty=1)
    assert health.order(0.6) == [0, 1]
    assert [view.up for view in health.snapshot(0.6)] == [False, False]


def test_success_clears_failures_and_backoff() -> None:
    health = book(2, failures_before_down=1, initial=1.0)
    health.failed(0, now=0, penalty=1)
    health.failed(0, now=1, penalty=1)  # second hold: 2 s
    health.succeeded(0, 0.010)
    view = health.snapshot(1.1)[0]
    assert view.up and view.failures == 0 and view.down_for == 0 and view.errors == 2 and view.queries == 3
    health.failed(0, now=2, penalty=1)
    assert health.snapshot(2)[0].down_for == 1.0  # back to the initial hold


def test_long_outage_does_not_overflow() -> None:
    health = book(1, failures_before_down=1, initial=1.0, cap=60.0)
    now = 0.0
    for _ in range(2000):
        health.failed(0, now=now, penalty=1)
        now += 61
    assert health.snapshot(now - 61)[0].down_for == 60.0
