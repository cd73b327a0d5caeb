"""The admin tests' fixture: a server config with an [admin] section in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.admin import Setup, make_admin_setup


@pytest.fixture
def admin_setup(tmp_path: Path) -> Setup:
    return make_admin_setup(tmp_path)
