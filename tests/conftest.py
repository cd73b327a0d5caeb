"""Shared pytest fixtures. Keep each one small; the peers themselves live in tests/fixtures/."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.unbound import UNBOUND, UnboundFactory
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab, missing_tools

# Markers (CONTRIBUTING.md): a test that starts a process is `slow`, so `-m "not slow"` is a quick run; one that
# makes network namespaces or talks to nftables is `root`. Audit events see what the test's thread does (process
# starts by subprocess, asyncio, fork or exec; netfilter netlink sockets), fixtures included: a test that does
# one of these without its marker fails the session, which names it.
_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system"})
_ROOT_COMMANDS = frozenset({"nft", "unshare", "nsenter", "conntrack"})
_NETLINK_NETFILTER = 12
_running: pytest.Item | None = None
_unmarked: dict[tuple[str, str], str] = {}


def _needs_root(event: str, args: tuple[Any, ...]) -> bool:
    if event == "socket.__new__":
        return bool(args[1] == socket.AF_NETLINK and args[3] == _NETLINK_NETFILTER)
    if event == "subprocess.Popen" and isinstance(args[1], list | tuple) and args[1]:
        argv = [str(arg) for arg in args[1]]
        return os.path.basename(argv[0]) in _ROOT_COMMANDS or (os.path.basename(argv[0]) == "ip" and "netns" in argv)
    return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    item = _running
    if item is None or (event not in _PROCESS_EVENTS and event != "socket.__new__"):
        return
    if threading.current_thread() is not threading.main_thread():
        return  # a thread another test left running would be blamed on this one
    if event in _PROCESS_EVENTS and item.get_closest_marker("slow") is None:
        _unmarked.setdefault((item.nodeid, "slow"), f"{event} {str(args[1:2])[:100]}")
    if _needs_root(event, args) and item.get_closest_marker("root") is None:
        _unmarked.setdefault((item.nodeid, "root"), f"{event} {str(args[1] if len(args) > 1 else '')[:80]}")


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _watching(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _watching(item)


def _watching(item: pytest.Item) -> Generator[None, None, None]:
    """Setup and call only: teardown also finishes shared fixtures (the lab's namespace), whoever ran last."""
    global _running
    _running = item
    try:
        yield
    finally:
        _running = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _unmarked:
        lines = [
            f"  {nodeid}: needs @pytest.mark.{marker} ({what})" for (nodeid, marker), what in sorted(_unmarked.items())
        ]
        print("\ntests without the markers they need:\n" + "\n".join(lines), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def unbound_upstream(tmp_path: Path) -> Iterator[UnboundFactory]:
    """Factory: ``unbound_upstream(local_data_lines, zones=("test.",), extra=())`` → "127.0.0.1:PORT" of a real
    Unbound serving those records (zones are ``static``: other names in them are NXDOMAIN)."""
    if UNBOUND is None:
        pytest.skip("unbound is not installed (Debian package unbound)")
    factory = UnboundFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def signed_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The signed test internet (docs/lab.md) in a private network namespace, shared by every lab test."""
    problem = netns.available() or missing_tools()
    if problem:
        pytest.skip(problem)
    with Lab(Path(tmp_path_factory.mktemp("lab")), netns_name="auto") as running:
        yield running


@pytest.fixture(scope="session")
def lab_loop(signed_lab: Lab) -> Iterator[NetnsLoop]:
    """An event loop running inside the lab's namespace: ``lab_loop.run(coro)``."""
    with NetnsLoop(signed_lab.netns) as running:
        yield running
