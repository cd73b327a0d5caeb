"""Test support: free loopback ports and a real `ztdns serve` subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import dns.message
import dns.query
import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package needed; scripts/dev.sh installs it)")
    return path


class ServerProcess:
    """`ztdns serve --config FILE` in a subprocess; stderr is collected into ``log``."""

    def __init__(self, config_text: str, directory: Path, name: str = "ztdns.toml") -> None:
        self.config_path = directory / name
        self.config_path.write_text(config_text)
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_for: str = "ztdns: listening", timeout: float = 20.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ztdns", "serve", "--config", str(self.config_path)],
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while wait_for not in self.stderr:
            if self.proc.poll() is not None:
                raise AssertionError(f"ztdns serve exited with {self.proc.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ztdns serve did not start:\n{self.stderr}")
            time.sleep(0.05)
        return self

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def udp_query(port: int, name: str, rdtype: str = "A", host: str = "127.0.0.1", **kwargs: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, **kwargs)  # type: ignore[arg-type]
    return dns.query.udp(query, host, port=port, timeout=3)


def tcp_query(port: int, name: str, rdtype: str = "A", host: str = "127.0.0.1") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0)
    return dns.query.tcp(query, host, port=port, timeout=3)
