"""``ztdns attest show|verify`` and ``ztdns version`` (docs/attestation.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ztdns import __version__


def _show(args: argparse.Namespace) -> int:
    from ztdns.attest.measure import spki_sha256
    from ztdns.attest.report import Attestor, report_text
    from ztdns.config import ConfigError, default_config, load_config

    try:
        config = load_config(args.config) if args.config else default_config()
        nonce = bytes.fromhex(args.nonce)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError:
        print(f"--nonce {args.nonce!r} is not hex", file=sys.stderr)
        return 2
    # Measured here, not by the server: evidence from this process would prove nothing about the server (and a
    # TPM start would reset the server's PCR), so the report is software-only; its digests are reference values.
    attestor = Attestor(config, evidence="none")
    attestor.measure(config, "show")
    spki = b""
    for listen in config.listen:
        if listen.cert:
            try:
                spki = spki_sha256((config.base_dir / listen.cert).read_bytes())
            except (OSError, ValueError):
                continue
            break
    sys.stdout.write(report_text(attestor.report(nonce, spki)))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ztdns.attest.verify import FetchError, References, client_context, fetch, summary, verify_report

    try:
        ak = Path(args.ak).read_bytes() if args.ak else None
        context = client_context(args.ca, args.cert, args.key)
    except OSError as exc:
        print(f"ztdns attest verify: {exc}", file=sys.stderr)
        return 2
    references = References(
        frozenset(d.lower().removeprefix("sha256:") for d in args.code_digest),
        frozenset(d.lower().removeprefix("sha256:") for d in args.config_digest),
        ak,
        args.allow_unattested,
    )
    try:
        fetched = fetch(args.url, context, timeout=args.timeout)
    except FetchError as exc:
        print(f"FAILED fetch: {exc}")
        return 1
    checks = verify_report(fetched.report, fetched.nonce, fetched.spki, references)
    ok, line = summary(checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [vars(check) for check in checks], "report": fetched.report}, indent=2))
        return 0 if ok else 1
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    print(line)
    return 0 if ok else 1


def _version(args: argparse.Namespace) -> int:
    print(f"ztdns {__version__}")
    if args.verbose:
        from ztdns.attest.measure import measure_code, sbom_path

        code = measure_code()
        print(f"code digest: {code.digest}")
        for component in code.components:
            notes = f" ({'; '.join(component.notes)})" if component.notes else ""
            print(f"  {component.name}: {component.digest} {component.source}{notes}")
        sbom = sbom_path()
        print(f"sbom: {sbom if sbom is not None else 'not found (scripts/dev.sh test writes build/sbom.cdx.json)'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attest = sub.add_parser("attest", help="attestation reports: show this config's, verify a server's")
    commands = attest.add_subparsers(dest="attest_command", required=True)
    show = commands.add_parser("show", help="measure the code and a config here and print the report (JSON)")
    show.add_argument("--config", help="TOML configuration file (default: the built-in development config)")
    show.add_argument("--nonce", default="", help="hex nonce to put in the report")
    show.set_defaults(func=_show)
    verify = commands.add_parser("verify", help="fetch a server's report with a fresh nonce and check it")
    verify.add_argument("url", help="https://HOST:PORT (the well-known path is added) or the report's full URL")
    verify.add_argument("--code-digest", action="append", default=[], help="an accepted code digest (repeatable)")
    verify.add_argument("--config-digest", action="append", default=[], help="an accepted config digest (repeatable)")
    verify.add_argument("--ak", help="PEM public key of the server's TPM attestation key (pins it)")
    verify.add_argument("--ca", help="CA bundle the server's certificate must chain to (default: not checked)")
    verify.add_argument("--cert", help="client certificate, for servers that require one")
    verify.add_argument("--key", help="the client certificate's key")
    verify.add_argument("--allow-unattested", action="store_true", help="accept evidence 'none' and unverified tsm")
    verify.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    verify.add_argument("--json", action="store_true", help="print the checks and the report as JSON")
    verify.set_defaults(func=_verify)
    version = sub.add_parser("version", help="print the version (--verbose: the code digest and the SBOM)")
    version.add_argument("--verbose", "-v", action="store_true")
    version.set_defaults(func=_version)
