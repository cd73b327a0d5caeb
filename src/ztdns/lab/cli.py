"""``ztdns lab --dir DIR [--port N] [--netns NAME|auto]``: run the lab until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ztdns.lab.zones import CASES


def _run(args: argparse.Namespace) -> int:
    # Imported here: every `ztdns` command registers this one, and the lab loads dnspython's whole client.
    from ztdns.lab.run import Lab, LabError

    lab = Lab(Path(args.dir), port=args.port, netns_name=args.netns)
    # A plain flag: a handler that called threading.Event.set() could deadlock when the signal lands while
    # this same thread holds the Event's lock inside wait() (it happened about once in five test runs).
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    try:
        lab.start()
    except LabError as exc:
        print(f"ztdns lab: {exc}", file=sys.stderr)
        return 1
    try:
        assert lab.zones is not None
        where = f" in network namespace {lab.netns}" if lab.netns else ""
        print(
            f"lab running{where}; servers on port {lab.port}: "
            + ", ".join(f"{name} {address}" for name, address in lab.addresses.items())
        )
        print(f"trust anchor ({lab.trust_anchor}):\n{lab.zones.root_ds}")
        print(f"root DNSKEY ({lab.root_key}):\n{lab.zones.root_dnskey}")
        print(f"root hints ({lab.root_hints}):\n{lab.zones.root_hints}")
        print("cases:")
        for case in CASES:
            ede = f" EDE {int(case.ede)}" if case.ede is not None else ""
            ad = " AD" if case.secure else ""
            print(f"  {case.qname} {case.qtype} → {case.rcode}{ad}{ede}  ({case.shows})")
        sys.stdout.flush()
        while not stopping:
            time.sleep(0.2)  # the flag is looked at five times a second
    finally:
        lab.stop()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("lab", help="run a signed test internet on loopback (Knot DNS)")
    parser.add_argument("--dir", required=True, help="where zone files, trust anchor and root hints go")
    parser.add_argument("--port", type=int, default=53, help="port every lab server listens on (default 53)")
    parser.add_argument(
        "--netns", default=None, help="run inside this network namespace ('auto': create a private one)"
    )
    parser.set_defaults(func=_run)
