"""The ``ztdns`` command. Each capability registers its own sub-commands; the list of them is below."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ztdns import __version__
from ztdns.config import ConfigError, load_config
from ztdns.pki.cli import register as register_pki

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _check(args: argparse.Namespace) -> int:
    from ztdns.daemon import verify

    try:
        verify(load_config(args.config))
    except ConfigError as exc:
        if _is_agent_config(args.config):
            print(
                f"{args.config}: this is an agent configuration: check it with `ztdns agent check --config "
                f"{args.config}`",
                file=sys.stderr,
            )
        else:
            print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: ok")
    return 0


def _check_bundle(path: Path) -> str:
    """``ztdns check`` (or ``ztdns agent check``) for ``ztdns control publish``: the bundle's role."""
    from ztdns.config.agent import load_agent_config
    from ztdns.daemon import verify

    try:
        verify(load_config(path))
    except ConfigError:
        if not _is_agent_config(str(path)):
            raise
        from ztdns.agent.ruleset import build_ruleset

        build_ruleset(load_agent_config(path))
        return "agent"
    return "resolver"


def _register_control(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ztdns.control.cli import register

    register(sub, _check_bundle)


def _is_agent_config(path: str) -> bool:
    """Whether a file the server's schema rejects is a valid agent configuration (a common mix-up)."""
    from ztdns.config.agent import load_agent_config

    try:
        load_agent_config(path)
    except ConfigError:
        return False
    return True


def _serve(args: argparse.Namespace) -> int:

    from ztdns.config import default_config
    from ztdns.daemon import serve

    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        return serve(config, Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


def _authority_serve(args: argparse.Namespace) -> int:
    """``ztdns serve`` without the resolver's listeners: the same service, signals and metrics endpoint."""

    from ztdns.daemon import serve

    try:
        config = load_config(args.config)
        if not config.authority.listen:
            raise ConfigError([f"{args.config}: [authority] listen is empty"])
        return serve(config, Path(args.config), resolver=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


def _explain(args: argparse.Namespace) -> int:
    from ztdns.explain import run

    try:
        at = None
        if args.at is not None:
            import datetime

            moment = datetime.datetime.fromisoformat(args.at)
            at = (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()
        print(run(load_config(args.config), args.client, args.name, args.type, args.resolve, at))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError:
        print(f"--at {args.at!r} is not an ISO 8601 time (2026-12-07T10:30 or 2026-12-07T10:30+01:00)", file=sys.stderr)
        return 2
    return 0


def _privacy_statement(args: argparse.Namespace) -> int:
    from ztdns.observe.statement import privacy_statement

    try:
        print(privacy_statement(load_config(args.config)))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _register_privacy_statement(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "privacy-statement", help="print what the config collects, keeps and exports (RFC 8932 section 6 shape)"
    )
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.set_defaults(func=_privacy_statement)


def _register_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="run the protective resolver")
    parser.add_argument("--config", help="TOML configuration file (default: the built-in development config)")
    parser.set_defaults(func=_serve)


def _register_authority_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("authority", help="serve only the [authority] zones (ztdns serve without the resolver)")
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.set_defaults(func=_authority_serve)


def _register_explain(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("explain", help="show the decision and answer a client would get for a name")
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.add_argument("--client", required=True, help="IP address, identity name or certificate identity")
    parser.add_argument("name", help="the name to ask for")
    parser.add_argument("type", nargs="?", default="A", help="record type (default A)")
    parser.add_argument(
        "--resolve", action="store_true", help="ask the upstreams for allowed names (default: send nothing)"
    )
    parser.add_argument(
        "--at", metavar="TIME", help="decide as at this time (ISO 8601, e.g. 2026-12-07T10:30+01:00; UTC if no zone)"
    )
    parser.set_defaults(func=_explain)


def _register_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check", help="validate a configuration file")
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.set_defaults(func=_check)


def _registrations() -> list[Register]:
    # Imported here so that `ztdns check` does not pay for loading the server, agent or signer.
    from ztdns.admin.client import register as register_api
    from ztdns.agent.cli import register as register_agent
    from ztdns.attest.cli import register as register_attest
    from ztdns.authority.cli import register as register_authority
    from ztdns.feeds.cli import register as register_lists
    from ztdns.lab.cli import register as register_lab

    return [
        _register_serve,
        _register_check,
        _register_explain,
        _register_privacy_statement,
        register_lists,
        register_pki,
        register_lab,
        register_authority,
        _register_authority_serve,
        register_agent,
        register_attest,
        register_api,
        _register_control,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ztdns", description="Zero Trust DNS")
    parser.add_argument("--version", action="version", version=f"ztdns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrations():
        register(sub)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`ztdns explain ... | head`): not an error of ours. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except KeyboardInterrupt:
        return 128 + 2
    return result
