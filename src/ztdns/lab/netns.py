"""Network namespaces for the lab: a private loopback where port 53 on any 127.0.0.x is free.

Processes run inside with ``ip netns exec``; Python code runs inside through :class:`NetnsLoop`, an event
loop on a thread that has joined the namespace (``setns`` is per thread, and a socket stays in the namespace
it was created in).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True, check=False).returncode != 0:
        return "the ip command (iproute2) is missing"
    return None


def create(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)


def delete(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def exec_prefix(name: str | None) -> list[str]:
    return ["ip", "netns", "exec", name] if name else []


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as handle:
        if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")


class NetnsLoop:
    """An asyncio loop running on its own thread inside a namespace (or the current one for None)."""

    def __init__(self, name: str | None) -> None:
        self._loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def run() -> None:
            try:
                if name:
                    enter(name)
            except OSError as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            asyncio.set_event_loop(self._loop)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
        self._thread.start()
        ready.result()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> NetnsLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
