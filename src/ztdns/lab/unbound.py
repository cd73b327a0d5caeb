"""Unbound as the reference peer: a validating recursor pointed at the lab's root hints and trust anchor."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query

from ztdns.lab import netns
from ztdns.lab.run import Lab, LabError


def missing() -> str | None:
    return None if shutil.which("unbound") else "unbound (Debian package unbound) is not installed"


class Unbound:
    """Runs ``unbound -d`` inside the lab's namespace, listening on ``address``:``port``."""

    def __init__(self, lab: Lab, address: str = "127.0.0.1", port: int = 53) -> None:
        self.lab = lab
        self.address = address
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        directory = self.lab.directory
        return (
            "server:\n"
            f"  interface: {self.address}\n  port: {self.port}\n"
            '  do-daemonize: no\n  username: ""\n  chroot: ""\n  pidfile: ""\n  use-syslog: no\n'
            f'  directory: "{directory}"\n'
            f'  root-hints: "{self.lab.root_hints}"\n'
            f'  trust-anchor-file: "{self.lab.trust_anchor}"\n'
            "  do-not-query-localhost: no\n  ede: yes\n  num-threads: 1\n  verbosity: 0\n"
            "  qname-minimisation: yes\n  minimal-responses: yes\n"
            "remote-control:\n  control-enable: no\n"
        )

    def start(self) -> None:
        conf = self.lab.directory / "unbound.conf"
        conf.write_text(self.config())
        log = (self.lab.directory / "unbound.log").open("wb")
        self._process = subprocess.Popen(
            [*netns.exec_prefix(self.lab.netns), "unbound", "-d", "-c", str(conf)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 10
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(f"unbound did not start: {Path(log.name).read_text()[-500:]}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        result: list[bool] = []

        def probe() -> None:
            if self.lab.netns:
                netns.enter(self.lab.netns)
            try:
                query = dns.message.make_query(".", "SOA")
                dns.query.udp(query, self.address, 0.5, port=self.port)
                result.append(True)
            except (dns.exception.DNSException, OSError):
                result.append(False)

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return result[0]

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
            self._process = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Unbound:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
