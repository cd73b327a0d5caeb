"""Shared pytest fixtures. Keep each one small; the peers themselves live in tests/fixtures/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.unbound import UNBOUND, UnboundFactory
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab, missing_tools


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
