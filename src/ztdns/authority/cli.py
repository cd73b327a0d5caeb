"""``ztdns keys list|rollover|ds|ds-seen ZONE`` and ``ztdns authority serve`` (``ztdns serve`` without the
resolver's listeners)."""

from __future__ import annotations

import argparse
import sys

from ztdns.authority.kasp import Role, when_text
from ztdns.config import Config, ConfigError, load_config
from ztdns.config.authority import AuthZoneConfig


def _zone_config(config: Config, name: str) -> AuthZoneConfig:
    wanted = name.rstrip(".").lower() + "."
    for zone in config.authority.zones:
        if zone.name.lower() == wanted:
            return zone
    raise ConfigError([f"zone {name} is not in [authority] zones"])


def _when(t: float | None) -> str:
    return "-" if t is None else when_text(t)


def _keys(args: argparse.Namespace) -> int:
    # Imported here: every `ztdns` command registers this one, and building a zone loads the signer.
    from ztdns.authority.build import build_zone, key_store, state_dir
    from ztdns.authority.keys import KeyStoreError
    from ztdns.authority.zone import ZoneError

    try:
        config = load_config(args.config)
        zc = _zone_config(config, args.zone)
        if not zc.signing.enabled:
            raise ConfigError([f"zone {zc.name} is not signed"])
        served = build_zone(zc, config.base_dir, state_dir(config), key_store(config.authority, config.base_dir))
        keys = served.keys
        assert keys is not None
        max_ttl = served.timing_ttl()
        if args.action == "rollover":
            role: Role = args.role or ("csk" if keys.policy.csk else "zsk")
            record = keys.rollover(role, max_ttl)
            print(f"{role} rollover started: new key {record.tag}")
        elif args.action == "ds-seen":
            record = keys.ds_seen(max_ttl)
            print(f"DS of key {record.tag} confirmed at the parent")
        elif args.action == "ds":
            # Only keys the parent may point at: published long enough to be in every cache (ready).
            now = keys.clock()
            for record in keys.records():
                if record.role != "zsk" and record.published(now) and record.ready is not None and record.ready <= now:
                    print(f"{zc.name} IN DS {keys.zone_key(record).ds(args.digest.upper()).to_text()}")
        else:
            now = keys.clock()
            columns = ("created", "publish", "ready", "active", "retire", "ds_seen", "remove")
            print(f"{'tag':<6} {'role':<4} {'algorithm':<9} {'state':<13}", " ".join(f"{c:<20}" for c in columns))
            upcoming: list[tuple[float, int, str]] = []
            for r in keys.records():
                times = [getattr(r, column) for column in columns]
                print(
                    f"{r.tag:<6} {r.role:<4} {r.algorithm:<9} {r.state(now):<13}",
                    " ".join(f"{_when(t):<20}" for t in times),
                )
                upcoming += [(t, r.tag, c) for t, c in zip(times, columns, strict=True) if t is not None and t > now]
            if upcoming:
                when, tag, column = min(upcoming)
                print(f"next event: {_when(when)} key {tag} {column}")
            else:
                print("next event: none scheduled")
    except (ConfigError, KeyStoreError, ZoneError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="inspect and drive DNSSEC keys of authoritative zones")
    keys.add_argument("action", choices=["list", "rollover", "ds", "ds-seen"])
    keys.add_argument("zone")
    keys.add_argument("--role", choices=["ksk", "zsk", "csk"], help="for rollover (default: zsk, or csk)")
    keys.add_argument("--digest", choices=["sha256", "sha384"], default="sha256", help="for ds (default sha256)")
    keys.add_argument("--config", required=True, help="TOML configuration file")
    keys.set_defaults(func=_keys)
