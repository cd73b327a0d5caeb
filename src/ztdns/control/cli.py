"""``ztdns control``: publish a signed bundle, list the fleet's nodes, tail fleet events, make a signing key.

The checks a bundle must pass before it is signed are ``ztdns check``'s (or ``ztdns agent check``'s): the
command line hands them in (``Check``), since they live above this package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NoKeysError

from ztdns.config import ConfigError
from ztdns.control import nats as ctl
from ztdns.control.bundle import BundleError, load_private_key, new_key_pair, pack, verify
from ztdns.control.node import claimed_revision

# Checks a config file as `ztdns check` does and returns its role ("resolver" or "agent"); raises ConfigError.
Check = Callable[[Path], str]

DEFAULT_SERVERS = "nats://127.0.0.1:4222"


def _servers(args: argparse.Namespace) -> list[str]:
    text = args.servers or os.environ.get("ZTDNS_NATS", DEFAULT_SERVERS)
    return [server.strip() for server in text.split(",") if server.strip()]


async def publish(
    config: Path,
    key_path: Path,
    servers: list[str],
    bucket: str,
    check: Check,
    replicas: int = 1,
    wait: float = 0.0,
    nodes: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """Check, sign and put the bundle; with ``wait``, wait for ``nodes`` acknowledgements. Returns the revision and
    the reports of the nodes that run it (or refused it)."""
    role = await asyncio.get_running_loop().run_in_executor(None, check, config)  # check runs loops of its own
    key = load_private_key(key_path)
    client = await ctl.connect(servers, 2.0)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                kv, revision = await _put(client, bucket, replicas, config, role, key)
                break
            except Exception as exc:
                # Ask again (the update is conditional on the last revision, so a retry after a lost reply
                # publishes the next revision).
                if not ctl.transient(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        reports: list[dict[str, Any]] = []
        if wait > 0:
            reports = await _await_acks(kv, role, revision, nodes, wait)
        return revision, reports
    finally:
        await client.close()


async def _put(
    client: Any, bucket: str, replicas: int, config: Path, role: str, key: Ed25519PrivateKey
) -> tuple[Any, int]:
    kv = await ctl.bucket(client, bucket, create=True, replicas=replicas)
    bundle_key = ctl.BUNDLE_KEY.format(role=role)
    last_sequence = 0
    revision = 1
    with contextlib.suppress(KeyNotFoundError):
        entry = await kv.get(bundle_key)
        last_sequence = entry.revision or 0
        if entry.value:
            try:
                revision = verify(entry.value, key.public_key()).revision + 1
            except BundleError:  # signed by another key (rotated): still newer than anything stored
                revision = last_sequence + 1
    bundle = pack(config, role, revision, f"{getpass.getuser()}@{os.uname().nodename}")
    data = bundle.sign(key)
    if last_sequence:
        await kv.update(bundle_key, data, last=last_sequence)  # fails if someone published meanwhile
    else:
        await kv.create(bundle_key, data)
    return kv, revision


async def _await_acks(kv: Any, role: str, revision: int, nodes: int, wait: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    watcher = await kv.watch("node.*")
    latest: dict[str, dict[str, Any]] = {}
    try:
        while time.monotonic() < deadline:
            try:
                entry = await watcher.updates(timeout=max(deadline - time.monotonic(), 0.01))
            except Exception:  # nats' TimeoutError
                break
            if entry is None or not entry.value:
                continue
            report = json.loads(entry.value)
            if report.get("role") != role:
                continue
            if report.get("revision") == revision or report.get("refused_revision") == revision:
                latest[report["node"]] = report
            if nodes and len(latest) >= nodes:
                break
    finally:
        await watcher.stop()
    return list(latest.values())


async def reports(servers: list[str], bucket: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The published revision per role, and every node's last report."""
    client = await ctl.connect(servers, 2.0, reconnect=False)
    try:
        kv = await ctl.bucket(client, bucket)
        published: dict[str, int] = {}
        nodes: list[dict[str, Any]] = []
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            entry = await kv.get(key)
            if not entry.value:
                continue
            if key.startswith("bundle."):
                revision = claimed_revision(entry.value)
                if revision is not None:
                    published[key.removeprefix("bundle.")] = revision
            elif key.startswith("node."):
                nodes.append(json.loads(entry.value))
        return published, sorted(nodes, key=lambda report: (report.get("role", ""), report.get("node", "")))
    finally:
        await client.close()


def _ago(seen: float) -> str:
    return f"{max(time.time() - seen, 0):.0f}s ago"


def format_status(published: dict[str, int], nodes: list[dict[str, Any]]) -> str:
    lines = [f"published: {', '.join(f'{role} revision {rev}' for role, rev in sorted(published.items())) or 'none'}"]
    header = ("NODE", "ROLE", "IDENTITY", "REVISION", "STATE", "LAST SEEN", "HEALTH", "ATTESTATION")
    rows = [header]
    for report in nodes:
        attestation = report.get("attestation", "")
        if report.get("code_digest"):
            attestation += f" code {report['code_digest'][:12]} config {report.get('config_digest', '')[:12]}"
        state = report.get("state", "")
        if state == "refused":
            state = f"refused revision {report.get('refused_revision')}"
        rows.append(
            (
                report.get("node", ""),
                report.get("role", ""),
                report.get("identity", ""),
                str(report.get("revision", 0)),
                state,
                _ago(float(report.get("seen", 0))),
                report.get("health", ""),
                attestation.strip() or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for report in nodes:
        if report.get("reason"):
            lines.append(f"{report['node']}: refused revision {report.get('refused_revision')}:")
            lines += [f"  {line}" for line in str(report["reason"]).splitlines()]
    return "\n".join(lines)


def _publish(check: Check) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        key = args.key or os.environ.get("ZTDNS_SIGNING_KEY")
        if not key:
            print("ztdns control publish: give --key or set ZTDNS_SIGNING_KEY", file=sys.stderr)
            return 2
        try:
            revision, acks = asyncio.run(
                publish(
                    Path(args.config),
                    Path(key),
                    _servers(args),
                    args.bucket,
                    check,
                    args.replicas,
                    args.wait,
                    args.nodes,
                )
            )
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        except (BundleError, OSError, ValueError) as exc:
            print(f"ztdns control publish: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # the control plane refused or is unreachable: name it, no traceback
            print(f"ztdns control publish: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"{args.config}: published revision {revision}")
        refused = [report for report in acks if report.get("refused_revision") == revision]
        for report in acks:
            state = "refused" if report in refused else "runs it"
            print(f"  {report['node']} ({report['role']}): {state}")
            if report in refused:
                print("    " + str(report.get("reason", "")).replace("\n", "\n    "))
        if args.wait and args.nodes and len(acks) - len(refused) < args.nodes:
            print(f"only {len(acks) - len(refused)} of {args.nodes} nodes run it", file=sys.stderr)
            return 1
        return 0

    return run


def _status(args: argparse.Namespace) -> int:
    try:
        published, nodes = asyncio.run(reports(_servers(args), args.bucket))
    except Exception as exc:
        print(f"ztdns control status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"published": published, "nodes": nodes}, indent=2))
    else:
        print(format_status(published, nodes))
    return 0


async def tail(
    servers: list[str],
    stream: str,
    kind: str = "*",
    node: str = "*",
    match: str = "",
    since: float | None = None,
    count: int = 0,
    follow: bool = False,
    idle: float = 1.0,
) -> AsyncIterator[str]:
    """The stream's events (oldest first, from ``since`` seconds ago or all), filtered by kind, node and a
    substring; without ``follow`` it ends when nothing arrives for ``idle`` seconds."""
    client = await ctl.connect(servers, 2.0, reconnect=follow)
    try:
        js = client.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if since is not None:
            start = datetime.datetime.fromtimestamp(time.time() - since, datetime.UTC)
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        subscription = await js.subscribe(f"{stream}.{kind}.{node}", ordered_consumer=True, config=config)
        seen = 0
        while not count or seen < count:
            try:
                message = await subscription.next_msg(timeout=None if follow else idle)
            except nats.errors.TimeoutError:
                return
            text = message.data.decode(errors="replace")
            if match and match not in text:
                continue
            seen += 1
            yield text
    finally:
        await client.close()


def _parse_filters(filters: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in filters:
        key, _, value = item.partition("=")
        if key not in ("kind", "node", "match") or not value:
            raise ValueError(f"--filter {item!r}: write kind=query|verdict|flow, node=NAME or match=TEXT")
        parsed[key] = value
    return parsed


def _events(args: argparse.Namespace) -> int:
    async def run() -> None:
        async for text in tail(
            _servers(args),
            args.stream,
            filters.get("kind", "*"),
            filters.get("node", "*"),
            filters.get("match", ""),
            args.since,
            args.count,
            args.follow,
        ):
            print(text, flush=True)

    try:
        filters = _parse_filters(args.filter)
        asyncio.run(run())
    except ValueError as exc:
        print(f"ztdns control events: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"ztdns control events: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _keygen(args: argparse.Namespace) -> int:
    try:
        new_key_pair(Path(args.private), Path(args.public))
    except OSError as exc:
        print(f"ztdns control keygen: {exc}", file=sys.stderr)
        return 1
    print(f"private key {args.private} (keep it with the operator), public key {args.public} (pin it on nodes)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], check: Check) -> None:
    parser = sub.add_parser("control", help="the fleet: publish policy bundles, node status, events")
    actions = parser.add_subparsers(dest="action", required=True)

    def common(action: argparse.ArgumentParser) -> None:
        action.add_argument("--servers", help=f"NATS URLs, comma-separated (default $ZTDNS_NATS or {DEFAULT_SERVERS})")
        action.add_argument("--bucket", default="ztdns", help="the key-value bucket (default ztdns)")

    publish_parser = actions.add_parser("publish", help="check, sign and publish a config as the next revision")
    publish_parser.add_argument("--config", required=True, help="the resolver's or the agents' config file")
    publish_parser.add_argument("--key", help="the Ed25519 signing key (PEM; default $ZTDNS_SIGNING_KEY)")
    publish_parser.add_argument("--replicas", type=int, default=1, help="bucket replicas when creating it")
    publish_parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for acknowledgements")
    publish_parser.add_argument("--nodes", type=int, default=0, help="with --wait: stop once this many answered")
    common(publish_parser)
    publish_parser.set_defaults(func=_publish(check))

    status = actions.add_parser("status", help="every node: role, identity, revision, last seen, health")
    status.add_argument("--json", action="store_true", help="the reports as JSON")
    common(status)
    status.set_defaults(func=_status)

    events = actions.add_parser("events", help="tail fleet events (query log, verdicts, flows) as JSON lines")
    events.add_argument("--stream", default="ztdns-events", help="the JetStream stream (default ztdns-events)")
    events.add_argument(
        "--filter", action="append", default=[], help="kind=query|verdict|flow, node=NAME or match=TEXT (repeatable)"
    )
    events.add_argument("--since", type=float, help="only events from the last SECONDS (default: all kept)")
    events.add_argument("--count", type=int, default=0, help="stop after this many")
    events.add_argument("--follow", action="store_true", help="keep waiting for new events")
    common(events)
    events.set_defaults(func=_events)

    keygen = actions.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("--private", required=True, help="where to write the private key (made 0600)")
    keygen.add_argument("--public", required=True, help="where to write the public key")
    keygen.set_defaults(func=_keygen)
