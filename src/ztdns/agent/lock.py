"""One agent per state directory: an exclusive ``flock`` on ``state_dir/agent.lock``, taken before anything else.

A second ``ztdns agent`` start finds it held and stops before touching the table, the state or resolv.conf;
``uninstall`` takes it too, so that it never races a running agent. The kernel releases the lock when the holder
dies, however it dies. The file holds the holder's pid (for messages and ``uninstall --stop``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK = "agent.lock"


class AgentRunning(OSError):
    """Another process holds the state directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"an agent is running ({holder} holds {path}); nothing was changed")
        self.pid = pid


def holder(state_dir: Path) -> int | None:
    """The pid written by the lock's holder, if any."""
    try:
        text = (state_dir / LOCK).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def acquire(state_dir: Path) -> int:
    """The locked file descriptor (keep it open for as long as the lock must hold), or :class:`AgentRunning`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentRunning(path, holder(state_dir)) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(fd: int, state_dir: Path, remove: bool = False) -> None:
    """Unlock (``remove``: delete the file first, while still holding it — uninstall leaves nothing behind)."""
    if remove:
        with contextlib.suppress(OSError):
            (state_dir / LOCK).unlink()
    os.close(fd)
