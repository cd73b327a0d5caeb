"""``ztdns agent``: run the agent, or ``learn``, ``flows``, ``status``, ``uninstall``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ztdns.config import ConfigError

if TYPE_CHECKING:
    from ztdns.config.agent import AgentConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="endpoint enforcement agent (stub resolver + nftables default deny)")
    parser.add_argument("--config", help="agent configuration file (TOML)")
    parser.set_defaults(func=_run)
    commands = parser.add_subparsers(dest="agent_command")
    learn = commands.add_parser("learn", help="propose an allow-list from audit records")
    learn.add_argument("--since", default="24h", help="records newer than this: 2h, 1d, or an ISO 8601 time")
    learn.add_argument("--records", help="audit records file (default: audit.jsonl in the state directory)")
    learn.set_defaults(func=_learn)
    flows = commands.add_parser("flows", help="current connections, labelled with the name that opened them")
    flows.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    flows.set_defaults(func=_flows)
    status = commands.add_parser("status", help="mode, servers, set sizes, last errors")
    status.set_defaults(func=_status)
    check = commands.add_parser("check", help="validate the configuration and print the nftables ruleset")
    check.set_defaults(func=_check)
    uninstall = commands.add_parser(
        "uninstall", help="remove the nftables tables, the learned grants, and restore host DNS config"
    )
    uninstall.add_argument("--stop", action="store_true", help="stop a running agent first (else: refuse)")
    uninstall.set_defaults(func=_uninstall)
    for command in (learn, flows, status, check, uninstall):
        # Also after the sub-command (`ztdns agent check --config FILE`); SUPPRESS keeps a value given before it.
        command.add_argument("--config", default=argparse.SUPPRESS, help="agent configuration file (TOML)")


def _config(args: argparse.Namespace) -> AgentConfig:
    from ztdns.config.agent import load_agent_config

    if not args.config:
        raise ConfigError(["--config FILE is required"])
    return load_agent_config(args.config)


def _with_config(command: Callable[[AgentConfig, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Load --config for ``command``; a bad or missing file is reported, not raised."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = _config(args)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        return command(config, args)

    return run


@_with_config
def _run(config: AgentConfig, args: argparse.Namespace) -> int:
    from ztdns.agent.nft import NftError
    from ztdns.agent.service import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(config)
    except (NftError, OSError, ConfigError) as exc:
        print(f"ztdns agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _learn(args: argparse.Namespace) -> int:
    from ztdns.agent.audit import AUDIT_LOG, learn, parse_since, proposal_toml, read_records

    try:
        since = parse_since(args.since, time.time())
        path = Path(args.records) if args.records else _config(args).state_path / AUDIT_LOG
        proposal = learn(read_records(path), since)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"ztdns agent learn: {exc}", file=sys.stderr)
        return 1
    print(proposal_toml(proposal))
    return 0


@_with_config
def _flows(config: AgentConfig, args: argparse.Namespace) -> int:
    from ztdns.agent.asker import SocketDiag, load_asked
    from ztdns.agent.flows import connections, format_flows, label_flows, label_map, socket_cgroup
    from ztdns.agent.persist import GrantStore
    from ztdns.agent.service import ASKED

    try:
        asked_file = config.state_path / ASKED
        asked = load_asked(json.loads(asked_file.read_text(encoding="utf-8"))) if asked_file.exists() else {}
        labels = label_map(GrantStore(config.state_path).load(time.time()))
        diag = SocketDiag()
        try:
            flows = label_flows(list(connections()), labels, asked, socket_cgroup(diag))
        finally:
            diag.close()
    except (OSError, ValueError) as exc:
        print(f"ztdns agent flows: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for flow in flows:
            print(json.dumps(asdict(flow)))
    else:
        print(format_flows(flows))
    return 0


def _set_sizes() -> dict[str, int] | None:
    from ztdns.agent.nft import Nft, NftError
    from ztdns.agent.ruleset import FAMILY, SET4, SET6, TABLE

    nft = Nft()
    sizes = {}
    try:
        for name in (SET4, SET6):
            items = nft.query(f"list set {FAMILY} {TABLE} {name}")
            sizes[name] = sum(len(item["set"].get("elem", [])) for item in items if "set" in item)
    except NftError:
        return None
    finally:
        nft.close()
    return sizes


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@_with_config
def _status(config: AgentConfig, args: argparse.Namespace) -> int:
    from ztdns.agent.service import read_status

    status = read_status(config.state_path) or {}
    running = _alive(status.get("pid"))
    sizes = _set_sizes()
    report = {
        "running": running,
        "table": "in force" if sizes is not None else "absent",
        "sets": sizes or {},
        **({k: v for k, v in status.items() if k != "pid"} if running else {"mode": config.mode}),
    }
    print(json.dumps(report, indent=2))
    return 0 if running and sizes is not None else 3


@_with_config
def _check(config: AgentConfig, args: argparse.Namespace) -> int:
    from ztdns.agent.links import egress_devices
    from ztdns.agent.ruleset import build_ruleset
    from ztdns.agent.workloads import WorkloadMap

    devices = egress_devices() if config.firewall.packet_egress else ()
    workloads = WorkloadMap(config.workload)
    workloads.refresh()  # rules for the workloads whose cgroup exists now
    mark = config.firewall.packet_mark_mask & 0x5A5A5A5A  # the agent draws a random one at start
    print(build_ruleset(config, devices, mark, workloads.rules()), end="")
    return 0


def _stop_agent(state_dir: Path, pid: int | None, seconds: float = 10.0) -> bool:
    """SIGTERM the agent holding ``state_dir``'s lock and wait until it let go of it."""
    import signal

    from ztdns.agent import lock

    if pid is None or not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lock.release(lock.acquire(state_dir), state_dir)
            return True
        except lock.AgentRunning:
            time.sleep(0.05)
    return False


@_with_config
def _uninstall(config: AgentConfig, args: argparse.Namespace) -> int:
    """Leave the host as it was before the agent: no tables, the original resolv.conf, no learned grants.

    Never while an agent runs (it would rebuild the table within 50 ms and keep resolv.conf pointed at a stub
    that is about to go): refused, or with ``--stop`` the agent is stopped first. The lock is held throughout,
    so no agent starts halfway."""
    from ztdns.agent import hostdns, lock
    from ztdns.agent.nft import Nft, NftError
    from ztdns.agent.persist import GrantStore
    from ztdns.agent.ruleset import remove_table_script
    from ztdns.agent.service import ASKED, STATUS, TABLE_STATE

    state = config.state_path
    try:
        held = lock.acquire(state)
    except lock.AgentRunning as running:
        if not args.stop:
            print(f"ztdns agent uninstall: {running}; stop it first or use --stop", file=sys.stderr)
            return 1
        if not _stop_agent(state, running.pid):
            print(f"ztdns agent uninstall: could not stop the agent (pid {running.pid})", file=sys.stderr)
            return 1
        print(f"stopped the agent (pid {running.pid})")
        held = lock.acquire(state)
    try:
        try:
            nft = Nft()
            nft.run(remove_table_script())
            nft.close()
        except NftError as exc:
            print(f"ztdns agent uninstall: {exc}", file=sys.stderr)
            return 1
        print("removed tables inet ztdns and netdev ztdns")
        if config.resolv_conf and hostdns.restore(config.path(config.resolv_conf), state):
            print(f"restored {config.path(config.resolv_conf)}")
        removed = GrantStore(state).remove()
        for name in (STATUS, ASKED, TABLE_STATE):  # what a killed agent left behind
            (state / name).unlink(missing_ok=True)
        if removed:
            print(f"removed the learned grants ({', '.join(removed)})")
    finally:
        lock.release(held, state, remove=True)
    with contextlib.suppress(OSError):
        state.rmdir()  # only if empty: audit records stay for `learn`
    return 0
