"""Detection: added CPU per query (replays and misses, detection off vs observe) and a detection-quality table.

    .venv/bin/python bench/detect.py [--queries 20000] [--rounds 5] [--skip-cpu] [--skip-quality]

CPU: in-process, no sockets, rounds alternating off / observe (every detector on, rate-limit buckets charged
but never exceeded), so load from other processes hits both alike; min and median per query over rounds.
- replay: ``Frontend.fast`` on a replayed (cache-hit) answer, the bytes-keyed lookup; "replay batch": the same
  through ``Frontend.fast_batch`` in batches of 64, as the batched UDP lane answers them;
- miss: ``Frontend.handle`` on a new name each query around a resolver that answers at once (as bench/stages.py);
- stages: the detect and fetch-quota stages alone on the same names (``stages_round``): "off" is the bare answer,
  "observe" what the two stages add, the steadier figure of the detection share of a miss.
Quality: the DGA model on held-out names of each family (scripts/train_dga.py, 2025 seeds), the benign held-out
set per name, a benign replay of failing names through the per-client verdict, synthetic tunnels through the
detector on a fake clock (time to verdict), and the real tools as measured by tests/detection/test_detect_tunnels.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import importlib
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.name

from stages import AnsweringResolver, signed_answer
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.detect import Detector, split_name
from ztdns.detect.dga import shipped_model
from ztdns.detect.stage import DetectStage, FloodQuotaStage
from ztdns.handler import Frontend
from ztdns.model import Question
from ztdns.pipeline import Asked, QueryContext

CONFIG = """
[resolver]
mode = "recursive"

[identities.bench]
networks = ["127.0.0.0/8"]
policies = ["bench"]

[policies.bench]
allow = ["**"]

[log.query_log]
output = "off"

[detect]
mode = "{mode}"

[detect.rate_limit]
per_prefix = 1e12
"""

CLIENT = ClientInfo(Transport.UDP, "127.0.0.1", 5353)


def frontend(mode: str, resolver: AnsweringResolver) -> Frontend:
    return Frontend(parse_config(CONFIG.format(mode=mode), "bench", Path(".")), resolver_factory=lambda _: resolver)


async def miss_round(mode: str, names: list[dns.name.Name], wires: list[bytes]) -> float:
    resolver = AnsweringResolver()
    resolver.answers = {name: signed_answer(name) for name in names}
    server = frontend(mode, resolver)
    server.bind_loop(asyncio.get_running_loop())
    spent = 0.0
    for wire in wires:
        started = time.thread_time()
        if await server.handle(wire, CLIENT) is None:
            raise RuntimeError("no answer")
        await asyncio.sleep(0)  # the tick and the replay registration run after the answer: counted too
        spent += time.thread_time() - started
    await server.close()
    return spent / len(wires)


async def replay_round(mode: str, count: int, batched: bool = False) -> float:
    """µs per replay through ``Frontend.fast``, or (``batched``) ``Frontend.fast_batch`` in batches of 64 as the
    batched UDP lane calls it."""
    name = dns.name.from_text("www.bench.test")
    resolver = AnsweringResolver()
    resolver.answers = {name: signed_answer(name)}
    server = frontend(mode, resolver)
    server.bind_loop(asyncio.get_running_loop())
    wire = dns.message.make_query(name, "A", want_dnssec=True).to_wire()
    await server.handle(wire, CLIENT)
    await asyncio.sleep(0)
    fast, fast_batch = server.fast, server.fast_batch
    batch, client_of = [(wire, b"client")] * 64, {b"client": CLIENT}.__getitem__
    started = time.thread_time()
    if batched:
        for _ in range(count // len(batch)):
            if fast_batch(batch, client_of, []):
                raise RuntimeError("not replayed")
    else:
        for _ in range(count):
            if fast(wire, CLIENT) is None:
                raise RuntimeError("not replayed")
    spent = time.thread_time() - started
    await server.close()
    return spent / count


async def stages_round(names: list[dns.name.Name], wires: list[bytes]) -> tuple[float, float]:
    """(µs per query through the detect and fetch-quota stages around a bare answer, µs of the bare answer):
    the detection share of a miss alone, on a fake clock at 500 q/s (so the tick runs every 500 queries and the
    bench names earn tunnel verdicts, as in the miss rounds); steadier than the whole-miss difference."""
    server = frontend("observe", AnsweringResolver())
    detector = server.detector
    clock = [1000.0]
    detector.clock = lambda: clock[0]
    detect, quota = DetectStage(detector), FloodQuotaStage(detector)
    response = dns.message.make_response(dns.message.make_query("answer.test", "A"))
    contexts = []
    for name, wire in zip(names, wires, strict=True):
        ctx = QueryContext(CLIENT, wire, query=dns.message.from_wire(wire), question=Question(name, 1, 1))
        ctx.identity = "bench"
        contexts.append(cast(Asked, ctx))

    async def answer(ctx: Asked) -> None:
        ctx.response = response

    async def inner(ctx: Asked) -> None:
        await quota(ctx, answer)

    started = time.thread_time()
    for ctx in contexts:
        clock[0] += 0.002
        await detect(ctx, inner)
        await asyncio.sleep(0)  # the tick
    spent = time.thread_time() - started
    started = time.thread_time()
    for ctx in contexts:
        await inner(ctx)
        await asyncio.sleep(0)
    bare = time.thread_time() - started
    await server.close()
    return (spent - bare) / len(contexts), bare / len(contexts)


async def cpu(count: int, rounds: int) -> None:
    names = [dns.name.from_text(f"host{i}.bench{i % 50}.test") for i in range(count)]
    wires = [dns.message.make_query(name, "A", want_dnssec=True).to_wire() for name in names]
    gc.collect()
    gc.freeze()
    gc.disable()
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for mode in ("off", "observe"):
            results.setdefault(("replay", mode), []).append(await replay_round(mode, count * 5))
            results.setdefault(("replay batch", mode), []).append(await replay_round(mode, count * 5, batched=True))
            results.setdefault(("miss", mode), []).append(await miss_round(mode, names, wires))
            gc.collect()
        added, bare = await stages_round(names, wires)
        results.setdefault(("stages", "observe"), []).append(added)
        results.setdefault(("stages", "off"), []).append(bare)
    gc.enable()
    print("| path | detection off µs (min / median) | observe µs (min / median) | added (min) |")
    print("|---|---|---|---|")
    for path in ("replay", "replay batch", "miss", "stages"):
        off, on = results[(path, "off")], results[(path, "observe")]
        print(
            f"| {path} | {min(off) * 1e6:.2f} / {statistics.median(off) * 1e6:.2f} | "
            f"{min(on) * 1e6:.2f} / {statistics.median(on) * 1e6:.2f} | {(min(on) - min(off)) * 1e6:.2f} |"
        )


def tunnel_time(rate: float, chunk: int) -> float | None:
    """Seconds until a synthetic base32 tunnel at ``rate`` payload bytes/s gets a verdict (fake clock)."""
    config = parse_config(CONFIG.format(mode="observe"), "bench", Path(".")).detect
    detector = Detector(config)
    now = [0.0]
    detector.clock = lambda: now[0]
    flagged: list[float] = []
    detector.emit = lambda event: flagged.append(now[0]) if event["detector"] == "tunnel" else None
    generator = random.Random(1)
    interval = chunk / rate
    while now[0] < 120 and not flagged:
        now[0] += interval
        payload = base64.b32encode(generator.randbytes(chunk)).decode().strip("=").lower()
        labels = tuple(payload[i : i + 60].encode() for i in range(0, len(payload), 60))
        name = split_name((*labels, b"t", b"tunnel", b"test", b""))
        detector.record("bench", "127.0.0.1", name, 16, 0, False, now[0])
        if now[0] >= detector.next_tick:
            detector.next_tick = now[0] + 1
            detector.tick()
    return flagged[0] if flagged else None


def quality() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    train: Any = importlib.import_module("train_dga")
    model = shipped_model()
    threshold = parse_config(CONFIG.format(mode="observe"), "b", Path(".")).detect.dga.threshold
    _, benign = train.split_benign(*train.benign_labels())
    negatives = [model.score(label) for label in benign]
    false_positive = sum(score >= threshold for score in negatives) / len(negatives)
    print(f"\nDGA model, threshold {threshold} ([detect.dga] threshold), held-out names (2025 seeds):")
    print("| family | names | AUC | recall |")
    print("|---|---|---|---|")
    everything: list[float] = []
    for family, names in train.dga_names(2025, 800, 20).items():
        scores = [model.score(name) for name in names]
        everything += scores
        recall = sum(score >= threshold for score in scores) / len(scores)
        print(f"| {family} | {len(names)} | {train.auc(scores, negatives):.4f} | {recall:.3f} |")
    print(
        f"| all | {len(everything)} | {train.auc(everything, negatives):.4f} | "
        f"{sum(s >= threshold for s in everything) / len(everything):.3f} |"
    )
    print(f"| benign (false positives per name) | {len(negatives)} | | {false_positive:.4f} |")
    # Benign replay: every benign name fails (NXDOMAIN) for one client, two a second.
    detector = Detector(parse_config(CONFIG.format(mode="observe"), "b", Path(".")).detect)
    now = [0.0]
    detector.clock = lambda: now[0]
    alerts: list[dict[str, object]] = []
    detector.emit = lambda event: alerts.append(event) if event["detector"] == "dga" else None
    for label in benign:
        now[0] += 0.5
        name = split_name((label.encode(), b"com", b""))
        detector.record("bench", "192.0.2.1", name, 1, 3, False, now[0])
        if now[0] >= detector.next_tick:
            detector.next_tick = now[0] + 1
            detector.tick()
    print(
        f"benign replay: {len(benign)} failing names from one client over {now[0] / 60:.0f} min: "
        f"{len(alerts)} per-client DGA alerts"
    )
    print("\nTunnels (synthetic base32 TXT through the detector, fake clock; default limits):")
    print("| payload rate | seconds to verdict | required |")
    print("|---|---|---|")
    for rate, chunk, required in ((50.0, 30, 60), (200.0, 60, 60), (1000.0, 100, 10), (5000.0, 150, 10)):
        seconds = tunnel_time(rate, chunk)
        print(f"| {rate:.0f} B/s | {'-' if seconds is None else f'{seconds:.1f}'} | ≤ {required} |")
    print("Real tools (tests/detection/test_detect_tunnels.py, through ztdns serve in namespaces): see docs/detect.md.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    arguments = parser.parse_args()
    if not arguments.skip_cpu:
        asyncio.run(cpu(arguments.queries, arguments.rounds))
    if not arguments.skip_quality:
        quality()
