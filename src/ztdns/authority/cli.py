"""``ztdns keys list|rollover|ds|ds-seen|generate-ksr|import-skr ZONE``, the offline KSK signer's ``ztdns
offline-ksk generate|ds|sign-ksr ZONE``, and ``ztdns authority serve`` (``ztdns serve`` without the resolver's
listeners)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

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


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _seconds(text: str) -> int:
    """A duration: seconds, or a number with a unit (``90d``, ``12h``), as Knot's keymgr writes them."""
    match = re.fullmatch(r"(\d+)([smhdwy]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 12h, 60d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _time(text: str, now: float) -> int:
    """A time: Unix seconds, or ``+duration`` from now (keymgr's ``+0``, ``+60d``)."""
    if text.startswith("+"):
        return math.floor(now) + _seconds(text[1:])
    if not text.isdigit():
        raise ValueError(f"not a time: {text!r} (Unix seconds or +duration, e.g. +0, +60d)")
    return int(text)


def _keys(args: argparse.Namespace) -> int:
    # Imported here: every `ztdns` command registers this one, and building a zone loads the signer.
    import dns.dnssec
    import dns.rdatatype

    from ztdns.authority.build import build_zone, key_store, state_dir
    from ztdns.authority.keys import SEP_FLAG, KeyStoreError
    from ztdns.authority.offline import in_force
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
        if args.action == "generate-ksr":
            now = keys.clock()
            text = keys.generate_ksr(_time(args.start, now), _time(args.end, now), max_ttl)
            _write(args.output, text)
        elif args.action == "import-skr":
            if args.file is None:
                raise ConfigError(["import-skr needs the SKR file"])
            source = Path(args.file)
            try:
                skr = source.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyStoreError(f"{source}: {exc}") from None
            slots = keys.import_skr(skr, str(source))
            print(f"SKR imported: {len(slots)} slots, the last from {when_text(slots[-1].start)}")
        elif args.action == "rollover":
            role: Role = args.role or ("csk" if keys.policy.csk else "zsk")
            record = keys.rollover(role, max_ttl)
            print(f"{role} rollover started: new key {record.tag}")
        elif args.action == "ds-seen":
            record = keys.ds_seen(max_ttl)
            print(f"DS of key {record.tag} confirmed at the parent")
        elif args.action == "ds" and keys.skr is not None:
            # Offline KSK: the KSKs of the imported SKR slot in force (the offline signer's `ds` says the same).
            slot = in_force(keys.skr.slots(), keys.clock())
            for rdata in slot.get(dns.rdatatype.DNSKEY) or () if slot is not None else ():
                if rdata.flags & SEP_FLAG:
                    ds = dns.dnssec.make_ds(keys.zone, rdata, args.digest.upper())
                    print(f"{zc.name} IN DS {ds.to_text()}")
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
            if keys.skr is not None:
                slots = keys.skr.slots()
                end = keys.skr_end()
                print(
                    f"offline KSK: SKR with {len(slots)} slots, signatures until {_when(end)}"
                    if slots
                    else "offline KSK: no SKR imported (ztdns keys import-skr)"
                )
    except (ConfigError, KeyStoreError, ZoneError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _write(output: str | None, text: str) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)


def _offline_ksk(args: argparse.Namespace) -> int:
    """The offline signer: KSKs as PEM files in ``--dir``; nothing here needs the server's config or state."""
    import dns.name

    from ztdns.authority.kasp import FileStore
    from ztdns.authority.keys import ALGORITHMS, KeyStoreError
    from ztdns.authority.offline import KSR, SKR, load_ksks, parse, render, sign
    from ztdns.authority.signing import Validity

    zone = dns.name.from_text(args.zone)
    directory = Path(args.dir)
    try:
        if args.action == "generate":
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            locator, key = FileStore(directory).create(zone, ALGORITHMS[args.algorithm], sep=True)
            print(f"KSK {key.tag} in {directory / locator}")
            print(f"{zone} IN DS {key.ds(args.digest.upper()).to_text()}")
        elif args.action == "ds":
            for key in load_ksks(directory, zone):
                print(f"{zone} IN DS {key.ds(args.digest.upper()).to_text()}")
        else:
            if args.ksr is None:
                raise KeyStoreError("sign-ksr needs the KSR file")
            try:
                text = Path(args.ksr).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyStoreError(f"{args.ksr}: {exc}") from None
            request = parse(text, KSR, zone, args.ksr)
            validity = Validity(args.signature_lifetime, 0, args.signature_refresh)
            slots = sign(request, load_ksks(directory, zone), validity, args.cds == "always", args.digest.upper())
            _write(args.output, render(SKR, slots))
    except (KeyStoreError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="inspect and drive DNSSEC keys of authoritative zones")
    keys.add_argument("action", choices=["list", "rollover", "ds", "ds-seen", "generate-ksr", "import-skr"])
    keys.add_argument("zone")
    keys.add_argument("file", nargs="?", help="for import-skr: the SKR file")
    keys.add_argument("--from", dest="start", default="+0", help="for generate-ksr: Unix time or +duration (+0)")
    keys.add_argument("--to", dest="end", default="+60d", help="for generate-ksr: Unix time or +duration (+60d)")
    keys.add_argument("--output", help="for generate-ksr: write the KSR here (default: standard output)")
    keys.add_argument("--role", choices=["ksk", "zsk", "csk"], help="for rollover (default: zsk, or csk)")
    keys.add_argument("--digest", choices=["sha256", "sha384"], default="sha256", help="for ds (default sha256)")
    keys.add_argument("--config", required=True, help="TOML configuration file")
    keys.set_defaults(func=_keys)

    offline = sub.add_parser("offline-ksk", help="the offline KSK signer: KSK files, DS records, KSR → SKR")
    offline.add_argument("action", choices=["generate", "ds", "sign-ksr"])
    offline.add_argument("zone")
    offline.add_argument("ksr", nargs="?", help="for sign-ksr: the KSR file")
    offline.add_argument("--dir", required=True, help="directory of the zone's KSK files (PEM, 0600)")
    offline.add_argument("--algorithm", choices=["ecdsap256sha256", "ed25519"], default="ecdsap256sha256")
    offline.add_argument("--digest", choices=["sha256", "sha384"], default="sha256", help="of DS and CDS records")
    offline.add_argument("--signature-lifetime", type=_seconds, default="14d", help="of the SKR's RRSIGs (14d)")
    offline.add_argument(
        "--signature-refresh", type=_seconds, default="5d", help="a new slot this long before they expire (5d)"
    )
    offline.add_argument("--cds", choices=["always", "none"], default="always", help="publish CDS/CDNSKEY of the KSKs")
    offline.add_argument("--output", help="for sign-ksr: write the SKR here (default: standard output)")
    offline.set_defaults(func=_offline_ksk)
