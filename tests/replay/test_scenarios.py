"""Every scenario in tests/replay/scenarios/ (format: tests/replay/harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.harness import parse, run, scenario_files


@pytest.mark.parametrize("path", scenario_files(), ids=lambda path: path.stem)
def test_scenario(path: Path, tmp_path: Path) -> None:
    run(parse(path.read_text(), str(path)), tmp_path)
