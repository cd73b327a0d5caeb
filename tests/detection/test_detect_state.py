"""The detectors' per-key state: bounded between ticks, and out of the garbage collector's sight."""

from __future__ import annotations

import gc

from ztdns.config.detect import DetectConfig
from ztdns.detect.engine import Detector, Name, split_name


def _detector(max_keys: int, max_zones: int) -> Detector:
    config = DetectConfig.model_validate({"mode": "observe", "max_keys": max_keys, "max_zones": max_zones})
    return Detector(config, clock=lambda: 1000.0)


def _names(count: int) -> list[Name]:
    """Each a name below its own registered domain: state in the tunnel and the flood tables."""
    return [split_name((f"q{index}x".encode(), f"zone{index}".encode(), b"example", b"")) for index in range(count)]


def _record(detector: Detector, names: list[Name]) -> None:
    for index, name in enumerate(names):
        detector.record("id", "192.0.2.1", name, 16, 3, False, 1000.0 + index * 1e-4)


def test_a_dropped_key_is_not_kept_until_the_next_tick() -> None:
    # Between two ticks a busy server meets more zones than max_zones: the ones dropped to make room used to
    # stay referenced by the table of keys touched since the tick (30,000 zone states with max_zones 10,000).
    detector = _detector(max_keys=16, max_zones=16)
    _record(detector, _names(500))
    assert len(detector.zones) == len(detector.tunnels) == 16
    assert len(detector.zones.dirty) <= 16 and len(detector.tunnels.dirty) <= 16
    # The tick evaluates the tracked keys only, each with its own state.
    assert set(detector.zones.take_dirty()) == {f"zone{index}.example".encode() for index in range(484, 500)}


def test_a_reused_slot_starts_empty() -> None:
    detector = _detector(max_keys=16, max_zones=16)
    names = _names(17)
    for _ in range(5):
        _record(detector, names[:16])
    detector.tick()
    _record(detector, names[16:])  # drops zone0 and gives its slot to zone16
    zones = detector.zones
    slot = zones.slots[b"zone16.example"]
    assert zones.queries[slot] == 1.0 and zones.failures[slot] == 1.0 and zones.born[slot] == 1000.0
    assert zones.children.figures(slot, zones.children.epochs[slot]) == (1.0, 1)


def test_the_state_of_many_zones_is_not_tracked_by_the_garbage_collector() -> None:
    names = _names(5000)
    detector = _detector(max_keys=2000, max_zones=1000)
    _record(detector, names[:10])  # the DGA model and anything else read on first use
    gc.collect()
    before = len(gc.get_objects())
    _record(detector, names)
    gc.collect()
    # Before: ~10 tracked objects per zone (a state object, two sketches' objects, lists): 30,000 here.
    assert len(gc.get_objects()) - before < 100
    assert len(detector.zones) == 1000 and len(detector.tunnels) == 2000
    # Zone names to slot numbers, bytes and ints only: a dict the collector does not even walk.
    assert not gc.is_tracked(detector.zones.slots)
