"""The ``ztdns`` command. Each capability registers its own sub-commands; the list of them is below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ztdns import __version__
from ztdns.config import ConfigError, load_config

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _check(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: ok")
    return 0


def _register_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("check", help="validate a configuration file")
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.set_defaults(func=_check)


def _registrations() -> list[Register]:
    # Imported here so that `ztdns check` does not pay for loading the server, agent or signer.
    from ztdns.agent.cli import register as register_agent

    return [_register_check, register_agent]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ztdns", description="Zero Trust DNS")
    parser.add_argument("--version", action="version", version=f"ztdns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrations():
        register(sub)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
