"""What the threat detector's per-zone state costs the garbage collector, and what recording costs per query.

    .venv/bin/python bench/detect_gc.py [--zones 30000] [--rounds 3]

Records ``--zones`` queries for distinct zones (each name below its own registered domain, so the tunnel and
the flood detectors both keep state; ``max_zones`` 10,000, ``max_keys`` 50,000, the defaults) straight into a
:class:`Detector`, with no tick in between (as between two ticks of a busy server), then prints the objects the
collector tracks beyond those before, the time of a forced collection of each generation over that state, and
the CPU per ``Detector.record`` call (min over rounds; rough on a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import time

from ztdns.config.detect import DetectConfig
from ztdns.detect.engine import Detector, split_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = DetectConfig.model_validate({"mode": "observe"})
    names = [split_name((f"q{i}x7k2".encode(), f"zone{i}".encode(), b"example", b"")) for i in range(args.zones)]
    per_query: list[float] = []
    for _ in range(args.rounds):
        gc.collect()
        gc.freeze()  # as ``ztdns serve`` does at start: the collections below walk the detector's state alone
        gc.disable()
        before = len(gc.get_objects())
        detector = Detector(config, clock=lambda: 1000.0)
        started = time.process_time()
        for index, name in enumerate(names):
            detector.record("id", "192.0.2.1", name, 16, 3, False, 1000.0 + index * 1e-4)
        per_query.append((time.process_time() - started) / len(names))
        tracked = len(gc.get_objects()) - before
        pauses = []
        for generation in (0, 1, 2):
            started = time.perf_counter()
            gc.collect(generation)
            pauses.append((time.perf_counter() - started) * 1000)
        gc.enable()
        tracked_after = len(gc.get_objects()) - before
        gc.unfreeze()
        print(
            f"{args.zones} zones: tracked +{tracked} objects (+{tracked_after} after a collection), "
            f"zones {len(detector.zones)} tunnels {len(detector.tunnels)}; "
            f"collect gen0 {pauses[0]:.1f} ms gen1 {pauses[1]:.1f} ms gen2 {pauses[2]:.1f} ms"
        )
        del detector
    # Queries for zones already tracked (1,000 zones, 30 names each): the common case.
    known = [split_name((f"q{i}x7k2".encode(), f"zone{i % 1000}".encode(), b"example", b"")) for i in range(30_000)]
    repeated: list[float] = []
    for _ in range(args.rounds):
        detector = Detector(config, clock=lambda: 1000.0)
        started = time.process_time()
        for index, name in enumerate(known):
            detector.record("id", "192.0.2.1", name, 16, 3, False, 1000.0 + index * 1e-4)
        repeated.append((time.process_time() - started) / len(known))
    print(
        f"record: {min(per_query) * 1e6:.2f} µs/query for a new zone, {min(repeated) * 1e6:.2f} µs/query for a "
        f"tracked one (min of {args.rounds}, CPU time)"
    )


if __name__ == "__main__":
    main()
