"""A batch's rate-limit charge (``Detector.admit_many``, ``TokenBucket.take_many``) against one charge per query
at the same instant: the same number pass, and buckets, verdicts, counts and events end the same."""

from __future__ import annotations

import random

import pytest

from ztdns.client import ClientInfo, Transport
from ztdns.config.detect import DetectConfig
from ztdns.detect.engine import Detector
from ztdns.detect.sketch import TokenBucket


@pytest.mark.parametrize("seed", range(5))
def test_take_many_takes_what_as_many_takes_would(seed: int) -> None:
    rng = random.Random(seed)
    one, many = TokenBucket(7.5, 0.0), TokenBucket(7.5, 0.0)
    now = 0.0
    for _ in range(2000):
        now += rng.choice([0.0, 0.01, 0.137, 1.0])
        count = rng.randint(1, 20)
        rate, depth = rng.choice([(3.3, 7.5), (100.0, 250.0), (0.7, 1.4)])
        assert many.take_many(rate, depth, now, count) == sum(one.take(rate, depth, now) for _ in range(count))
        assert (many.tokens, many.stamp) == (one.tokens, one.stamp)


def _detector(mode: str, per_identity: float) -> tuple[Detector, list[dict[str, object]]]:
    config = DetectConfig.model_validate(
        {
            "mode": mode,
            "rate_limit": {
                "per_prefix": 30.0,
                "per_identity": per_identity,
                "burst_seconds": 1.5,
                "prefix_multiplier": 2.0,
            },
        }
    )
    detector = Detector(config)
    events: list[dict[str, object]] = []
    detector.emit = events.append
    return detector, events


def _state(detector: Detector) -> object:
    return (
        {key: (bucket.tokens, bucket.stamp) for key, bucket in detector.buckets.items()},
        {key: (bucket.tokens, bucket.stamp) for key, bucket in detector.identity_buckets.items()},
        {
            key: (verdict.key, verdict.until, verdict.enforced, verdict.logged_at)
            for key, verdict in detector.limited.items()
        },
        detector.verdict_counts,
    )


@pytest.mark.parametrize("per_identity", [0.0, 50.0])
@pytest.mark.parametrize("mode", ["observe", "enforce"])
def test_a_batch_is_charged_as_its_queries_one_by_one(mode: str, per_identity: float) -> None:
    rng = random.Random(17)
    one, one_events = _detector(mode, per_identity)
    many, many_events = _detector(mode, per_identity)
    clients = [
        ("lab", "192.0.2.1", False),
        ("lab", "192.0.2.7", False),
        (None, "2001:db8::1", False),
        ("lab", "192.0.2.9", True),
    ]
    now = 100.0
    stopped_some = False
    for _ in range(3000):
        now += rng.choice([0.0, 0.005, 0.05, 0.5])
        identity, address, exempt = rng.choice(clients)
        count = rng.randint(1, 64)
        results = [one.admit(identity, address, exempt, now) for _ in range(count)]
        passed, stopped = many.admit_many(identity, address, exempt, now, count)
        assert passed == sum(result is None for result in results)
        assert results[:passed] == [None] * passed  # the first ones pass
        # Each limit that stopped a query, in the order the stopped queries met them.
        first_seen = list(dict.fromkeys(result[0] for result in results if result is not None))
        assert [key for key, _ in stopped] == first_seen
        stopped_some = stopped_some or bool(stopped)
        assert _state(many) == _state(one)
        assert [{**event, "until": None, "text": None} for event in many_events] == [
            {**event, "until": None, "text": None} for event in one_events
        ]
    assert stopped_some


def test_replays_are_admitted_as_one_by_one() -> None:
    rng = random.Random(3)
    for mode in ("observe", "enforce"):
        one, _ = _detector(mode, 0.0)
        many, _ = _detector(mode, 0.0)
        client = ClientInfo(Transport.UDP, "192.0.2.1", 53)
        now = 0.0
        for _ in range(500):
            now += rng.choice([0.0, 0.02, 0.4])
            count = rng.randint(1, 40)
            expected = sum(one.admit_replays("lab", client, 1, now) for _ in range(count))
            assert many.admit_replays("lab", client, count, now) == expected
        assert _state(many) == _state(one)
