"""``ztdns keys list|rollover|ds|ds-seen ZONE`` and ``ztdns authority serve``."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry, start_http_server

from ztdns.authority.api import api_listen_config, start_registration_api
from ztdns.authority.build import build_authority, build_zone, key_store
from ztdns.authority.config import AuthZoneConfig
from ztdns.authority.server import AuthorityServer
from ztdns.authority.zone import ZoneError
from ztdns.config import Config, ConfigError, load_config
from ztdns.config.model import parse_hostport
from ztdns.dnssec.kasp import Role
from ztdns.dnssec.keys import KeyStoreError
from ztdns.observe.metrics import MetricsCollector
from ztdns.transport.tls import TlsError, TlsMaterial


def _state_dir(config: Config) -> Path:
    return Path(config.authority.state_dir or Path(config.server.state_dir) / "authority")


def _zone_config(config: Config, name: str) -> AuthZoneConfig:
    wanted = name.rstrip(".").lower() + "."
    for zone in config.authority.zones:
        if zone.name.lower() == wanted:
            return zone
    raise ConfigError([f"zone {name} is not in [authority] zones"])


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        zc = _zone_config(config, args.zone)
        if not zc.signing.enabled:
            raise ConfigError([f"zone {zc.name} is not signed"])
        served = build_zone(zc, config.base_dir, _state_dir(config), key_store(config.authority, config.base_dir))
        keys = served.keys
        assert keys is not None
        max_ttl = served.base.max_ttl()
        if args.action == "rollover":
            role: Role = args.role or ("csk" if keys.policy.csk else "zsk")
            record = keys.rollover(role, max_ttl)
            print(f"{role} rollover started: new key {record.tag}")
        elif args.action == "ds-seen":
            record = keys.ds_seen(max_ttl)
            print(f"DS of key {record.tag} confirmed at the parent")
        elif args.action == "ds":
            for key in keys.keyset().dnskey_signers:
                print(f"{zc.name} IN DS {key.ds().to_text()}")
        else:
            now = keys.clock()
            titles = (
                ("tag", 6),
                ("role", 4),
                ("algorithm", 9),
                ("state", 13),
                ("publish", 20),
                ("active", 20),
            )
            print(" ".join(f"{title:<{width}}" for title, width in titles), f"{'retire':<20} remove")
            for r in keys.records():
                print(
                    f"{r.tag:<6} {r.role:<4} {r.algorithm:<9} {r.state(now):<13} {_when(r.publish):<20} "
                    f"{_when(r.active):<20} {_when(r.retire):<20} {_when(r.remove)}"
                )
    except (ConfigError, KeyStoreError, ZoneError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


async def _serve(config: Config) -> None:
    authority = build_authority(config.authority, config.base_dir, _state_dir(config))
    servers = [AuthorityServer(authority, *parse_hostport(a, 53)) for a in config.authority.listen]
    for server in servers:
        await server.start()
        print(f"authority listening on {server.host}:{server.port}", file=sys.stderr)
    api = config.authority.api
    if api is not None:
        listen = api_listen_config(api.address, api.cert, api.key, api.ca, api.crl, api.tls_min_version)
        try:
            tls = TlsMaterial.from_config(listen, config.base_dir)
        except TlsError as exc:
            raise ConfigError([f"{config.source}: [authority.api]: {exc}"]) from None
        listener = await start_registration_api(listen, authority, tls)
        host, port = listener.address
        print(f"authority registration API on https://{host}:{port}/v1/records/", file=sys.stderr)
    if config.metrics.enabled:
        # The same exporter as `ztdns serve` (ztdns.daemon), over the authority's Metrics.
        host, port = config.metrics.hostport()
        registry = CollectorRegistry()
        registry.register(MetricsCollector(lambda: authority.metrics))
        start_http_server(port, host, registry)
        print(f"authority metrics on http://{host}:{port}/metrics", file=sys.stderr)
    sys.stderr.flush()
    await asyncio.Event().wait()


def _serve_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if not config.authority.listen:
            raise ConfigError([f"{args.config}: [authority] listen is empty"])
        uvloop.run(_serve(config))
    except (ConfigError, KeyStoreError, ZoneError, OSError) as exc:  # OSError: a listen address is taken
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="inspect and drive DNSSEC keys of authoritative zones")
    keys.add_argument("action", choices=["list", "rollover", "ds", "ds-seen"])
    keys.add_argument("zone")
    keys.add_argument("--role", choices=["ksk", "zsk", "csk"], help="for rollover (default: zsk, or csk)")
    keys.add_argument("--config", required=True, help="TOML configuration file")
    keys.set_defaults(func=_keys)
    authority = sub.add_parser("authority", help="serve the [authority] zones on their own listeners")
    authority.add_argument("action", choices=["serve"])
    authority.add_argument("--config", required=True, help="TOML configuration file")
    authority.set_defaults(func=_serve_command)
