"""``ztdns serve`` against the lab: the real server, recursive and validating with the lab's hints and anchor.

The same process the lab's Unbound peer is compared with (tests and ``bench/recursion.py``): every stage of
the pipeline, the message cache and the replay fast path are in the path, not only the resolver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import TracebackType

from ztdns.lab import netns
from ztdns.lab.run import Lab, LabError


class LabServer:
    """``ztdns serve --config`` inside the lab's namespace on ``address``:``port`` (UDP and TCP).

    Every client on loopback is one identity whose policy allows ``**``; metrics are served on
    ``address``:``metrics_port``; ``extra`` is appended to the config (more TOML sections).
    """

    def __init__(
        self, lab: Lab, address: str = "127.0.0.2", port: int = 53, metrics_port: int = 9153, extra: str = ""
    ) -> None:
        self.lab = lab
        self.address = address
        self.port = port
        self.metrics_port = metrics_port
        self.extra = extra
        self.config_path = lab.directory / f"ztdns-{address}-{port}.toml"
        self.stderr_path = lab.directory / f"ztdns-{address}-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        directory = self.lab.directory
        return f"""
[server]
state_dir = "{directory}"
drain_seconds = 0.5

[[listen]]
transport = "udp"
address = "{self.address}:{self.port}"

[[listen]]
transport = "tcp"
address = "{self.address}:{self.port}"

[resolver]
mode = "recursive"

[resolver.recursion]
root_hints = "{self.lab.root_hints}"
allow_query_localhost = true
query_port = {self.lab.port}

[dnssec]
validation = true
trust_anchors = ["{self.lab.trust_anchor}"]

[identities.lab]
networks = ["127.0.0.0/8"]
policies = ["everything"]

[policies.everything]
allow = ["**"]

[log]
level = "warning"

[log.query_log]
output = "off"

[metrics]
address = "{self.address}:{self.metrics_port}"
{self.extra}
"""

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 5.0) -> bool:
        """Wait until ``text`` appears in the server's stderr."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start(self, timeout: float = 20.0) -> None:
        self.config_path.write_text(self.config())
        command = [sys.executable, "-m", "ztdns", "serve", "--config", str(self.config_path)]
        self._process = subprocess.Popen(
            [*netns.exec_prefix(self.lab.netns), *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr_path.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while "ztdns: listening" not in self.log:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"ztdns serve did not start:\n{self.log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        process.terminate()
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> LabServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
