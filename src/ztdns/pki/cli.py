"""``ztdns pki init DIR``, ``ztdns pki issue DIR NAME ...`` and ``ztdns pki revoke DIR NAME``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ztdns.pki.authority import PkiError, init_ca, issue, revoke


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (days, counts), with a one-line error otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _init(args: argparse.Namespace) -> int:
    path = init_ca(Path(args.dir), common_name=args.name, days=args.days)
    print(f"CA certificate: {path}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    cert, key = issue(
        Path(args.dir),
        args.name,
        spiffe_id=args.spiffe_id,
        dns_names=tuple(args.dns),
        ip_addresses=tuple(args.ip),
        days=args.days,
        usage=args.usage,
    )
    print(f"certificate: {cert}\nkey: {key}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    print(f"CRL: {revoke(Path(args.dir), args.name)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        result: int = args.pki_func(args)
    except PkiError as exc:
        print(f"ztdns pki: {exc}", file=sys.stderr)
        return 1
    return result


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("pki", help="create a CA and issue server/client (SPIFFE) certificates")
    commands = parser.add_subparsers(dest="pki_command", required=True)
    parser.set_defaults(func=_run)

    init = commands.add_parser("init", help="create an ECDSA P-256 CA in DIR (ca.crt, ca.key)")
    init.add_argument("dir")
    init.add_argument("--name", default="ztdns CA", help="CA common name")
    init.add_argument("--days", type=positive_int, default=3650, help="validity (default 3650)")
    init.set_defaults(pki_func=_init)

    cert = commands.add_parser("issue", help="issue DIR/NAME.crt and DIR/NAME.key (0600)")
    cert.add_argument("dir")
    cert.add_argument("name")
    cert.add_argument("--spiffe-id", help="URI SAN, e.g. spiffe://corp.example/ns/prod/sa/web")
    cert.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
    cert.add_argument("--ip", action="append", default=[], help="IP address SAN (repeatable)")
    cert.add_argument("--days", type=positive_int, default=90, help="validity (default 90)")
    usage = cert.add_mutually_exclusive_group()
    usage.add_argument("--server", dest="usage", action="store_const", const="server", help="TLS server (default)")
    usage.add_argument("--client", dest="usage", action="store_const", const="client", help="TLS client (mTLS)")
    cert.set_defaults(pki_func=_issue, usage="server")

    rev = commands.add_parser("revoke", help="add DIR/NAME.crt to DIR/crl.pem")
    rev.add_argument("dir")
    rev.add_argument("name")
    rev.set_defaults(pki_func=_revoke)
