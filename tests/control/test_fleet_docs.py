"""docs/fleet.md's walkthrough works as written: its shell blocks run in order in an empty directory."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tools import require_tool

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"


def walkthrough() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL))


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    for tool in ("nats-server", "dig"):
        require_tool(tool)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        ["bash", "-e", "-c", walkthrough()],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever the script left running if it stopped early
    assert process.returncode == 0, stdout + stderr
    assert "policy/fleet.toml: ok" in stdout
    assert "published revision 1" in stdout
    assert stdout.count("(resolver): runs it") == 3
    assert "192.0.2.80" in stdout
    assert "\n1\n" in stdout  # grep -c NXDOMAIN
    assert "not published" in stdout and "policies.office.allow[0]" in stderr
    status = stdout.rsplit("published: resolver revision 1", 1)[1]
    rows = [line.split() for line in status.splitlines() if line.startswith("r")]
    assert [(row[0], row[3], row[4]) for row in rows] == [("r1", "1", "ok"), ("r2", "1", "ok"), ("r3", "1", "ok")]
