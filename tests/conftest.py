"""Shared pytest fixtures. Keep each one small; the peers themselves live in tests/fixtures/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.unbound import UNBOUND, UnboundFactory


@pytest.fixture
def unbound_upstream(tmp_path: Path) -> Iterator[UnboundFactory]:
    """Factory: ``unbound_upstream(local_data_lines, zones=("test.",), extra=())`` → "127.0.0.1:PORT" of a real
    Unbound serving those records (zones are ``static``: other names in them are NXDOMAIN)."""
    if UNBOUND is None:
        pytest.skip("unbound is not installed (Debian package unbound)")
    factory = UnboundFactory(tmp_path)
    yield factory
    factory.stop_all()
