"""Cold recursion passes over the lab cases without a network: the responses of a first, recording pass (the lab's
zones served in memory by tests/replay's mock servers) are replayed to fresh resolvers, ID and 0x20 case
rewritten as a server echoes them. No sockets, no other process, no clock: the same work every run, so under
``valgrind --tool=callgrind`` its instruction count is a CPU figure that other load on the machine cannot move
(the socket work of a real pass is not in it: ``bench/recursion_cpu.py`` has the whole server).

    .venv/bin/python bench/recursion_replay.py --record /tmp/lab.responses        # once
    .venv/bin/python bench/recursion_replay.py --passes 5 /tmp/lab.responses       # CPU ms per pass (noisy)
    .venv/bin/python bench/recursion_replay.py --passes 1 --rtt 20 /tmp/lab.responses   # wall time with each
                    # answer 20 ms late: / 20 ms = the upstream round trips made one after another
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/recursion_replay.py --passes 1 /tmp/lab.responses  # and --passes 2: the
                                                     # difference of the two "Collected" counts is one pass

Compare source trees with ``PYTHONPATH=OTHER/src`` (the recording can be shared: it is keyed by server, name and
type, whatever order a tree asks in).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype

from recursion_profile import forget_process_memos
from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.lab import zones as lab_zones
from ztdns.lab.zones import CASES
from ztdns.model import Question
from ztdns.resolver.recursive import RecursiveResolver

Key = tuple[str, bytes, bool, bytes]  # server, question name (lower case), TCP, the query's EDNS tail


def _question_end(query: bytes) -> int:
    offset = 12
    while query[offset]:
        offset += query[offset] + 1
    return offset + 5


def _key(query: bytes, address: str, tcp: bool) -> Key:
    return address, query[12 : _question_end(query)].lower(), tcp, query[-11:]


def _question(qname: str, qtype: str) -> Question:
    return Question(dns.name.from_text(qname), dns.rdatatype.from_text(qtype), 1, True, False)


def record(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from replay import test_lab_cases  # the lab's zones on mock servers (tests/replay)
    from replay.harness import FakeClock

    responses: dict[Key, bytes | None] = {}
    built = []
    build = lab_zones.build

    def keep_lab(*args: Any, **kwargs: Any) -> Any:
        built.append(build(*args, **kwargs))
        return built[-1]

    async def run(directory: Path) -> float:
        clock = FakeClock()
        lab_zones.build = keep_lab
        try:
            resolver, exchange = test_lab_cases.lab_resolver(directory, clock)
        finally:
            lab_zones.build = build
        replay = exchange.exchange

        async def recording(query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
            try:
                reply: bytes | None = await replay(query, address, port, timeout, tcp)
            except TimeoutError:
                reply = None
            responses[_key(query, address, tcp)] = reply
            if reply is None:
                raise TimeoutError
            return reply

        exchange.exchange = recording  # type: ignore[method-assign]
        start = clock.now
        for case in CASES:
            await resolver.resolve(_question(case.qname, case.qtype))
        return start

    with tempfile.TemporaryDirectory() as directory:
        now = asyncio.run(run(Path(directory)))
        hints = (Path(directory) / "hints.zone").read_text()
    recording_ = {"now": now, "hints": hints, "root_ds": built[0].root_ds, "responses": responses}
    path.write_bytes(pickle.dumps(recording_))
    print(f"{len(responses)} responses recorded in {path}")


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordedExchange:
    def __init__(self, responses: dict[Key, bytes | None], clock: _Clock, rtt: float = 0.0) -> None:
        self.responses = responses
        self.clock = clock
        self.rtt = rtt  # seconds each answer takes (0: the next loop turn)

    async def exchange(self, query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        end = _question_end(query)
        reply = self.responses.get(_key(query, address, tcp))
        if reply is None:
            self.clock.now += timeout
            raise TimeoutError
        await asyncio.sleep(self.rtt)
        return query[:2] + reply[2:12] + query[12:end] + reply[end:]  # our ID, our 0x20 case


async def cold_pass(recorded: dict[str, Any], hints: Path, rtt: float = 0.0) -> list[str]:
    forget_process_memos()
    clock = _Clock(recorded["now"])
    exchange = RecordedExchange(recorded["responses"], clock, rtt)
    resolver = RecursiveResolver(RecursionConfig(root_hints=str(hints)), exchange=exchange, clock=clock)
    resolver.validator = Validator(resolver, TrustAnchors.load(texts=[recorded["root_ds"]]), clock=clock)
    rcodes = []
    for case in CASES:
        response = (await resolver.resolve(_question(case.qname, case.qtype))).response
        rcodes.append("SERVFAIL" if response is None else dns.rcode.to_text(response.rcode()))
    await resolver.close()
    return rcodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recording", type=Path)
    parser.add_argument("--record", action="store_true", help="make the recording (from the lab's zones in memory)")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--rtt", type=float, default=0.0, help="milliseconds each answer takes; prints wall time")
    args = parser.parse_args()
    if args.record:
        record(args.recording)
        return
    recorded = pickle.loads(args.recording.read_bytes())
    with tempfile.TemporaryDirectory() as directory:
        hints = Path(directory) / "hints.zone"
        hints.write_text(recorded["hints"])
        gc.collect()
        gc.freeze()  # as the server does after start-up
        started, wall = time.thread_time(), time.perf_counter()
        for _ in range(args.passes):
            rcodes = asyncio.run(cold_pass(recorded, hints, args.rtt / 1000))
        spent = (time.thread_time() - started) / max(args.passes, 1)
        wall = (time.perf_counter() - wall) / max(args.passes, 1)
    wrong = [case.qname for case, rcode in zip(CASES, rcodes, strict=True) if rcode != case.rcode]
    print(f"CPU per cold pass: {spent * 1000:.1f} ms over {args.passes}; cases answered otherwise: {wrong or 'none'}")
    if args.rtt:
        waited = (wall - spent) * 1000 / args.rtt
        print(
            f"wall time per pass: {wall * 1000:.0f} ms: {waited:.1f} round trips of {args.rtt:g} ms one after another"
        )


if __name__ == "__main__":
    main()
