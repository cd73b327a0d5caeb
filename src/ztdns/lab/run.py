"""Running the lab: zone files, Knot DNS configs, the processes, and readiness checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from itertools import count
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from ztdns.lab import netns
from ztdns.lab.zones import POISON, ROOT, SERVERS, SLD, SLOW, SLOW_DELAY, TLD, LabZones, build

_HOSTS = {ROOT: 10, TLD: 11, SLD: 12, SLOW: 13, POISON: 14}
_names = count()


class LabError(RuntimeError):
    pass


def missing_tools() -> str | None:
    """None if the lab can run here, else what is missing."""
    if shutil.which("knotd") is None:
        return "knotd (Debian package knot) is not installed"
    return None


def _knot_conf(directory: Path, server: str, address: str, port: int, zones: list[str]) -> str:
    zone_lines = "".join(f'  - domain: "{name}"\n    file: "{_file_name(name)}"\n' for name in zones)
    return (
        "server:\n"
        f'    rundir: "{directory}/run/{server}"\n'
        f'    listen: "{address}@{port}"\n'
        "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
        f'database:\n    storage: "{directory}/db/{server}"\n'
        "log:\n  - target: stderr\n    any: warning\n"
        "template:\n  - id: default\n"
        f'    storage: "{directory}/zones/{server}"\n'
        "    semantic-checks: off\n    zonefile-sync: -1\n    zonefile-load: whole\n"
        "    journal-content: none\n"
        "zone:\n" + zone_lines
    )


def _file_name(zone: str) -> str:
    return "root.zone" if zone == "." else f"{zone}zone"


class Lab:
    """A signed test internet. Use as a context manager; ``netns="auto"`` makes a private namespace.

    In a namespace every server listens on port 53 (as real resolvers expect); without one, pass a free
    ``port`` and only resolvers that can be told the port (ztdns, with ``query_port``) can use it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int = 53,
        netns_name: str | None = None,
        base: str = "127.0.0.",
        now: float | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.netns = f"ztlab-{os.getpid()}-{next(_names)}" if netns_name == "auto" else netns_name
        self._own_netns = netns_name == "auto"
        self.addresses = {server: f"{base}{host}" for server, host in _HOSTS.items()}
        self.now = now
        self.zones: LabZones | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def root_hints(self) -> Path:
        return self.directory / "root.hints"

    @property
    def trust_anchor(self) -> Path:
        return self.directory / "root.ds"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key"

    def start(self) -> None:
        problem = missing_tools() or (netns.available() if self._own_netns else None)
        if problem:
            raise LabError(problem)
        self.zones = build(self.addresses, self.now)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root_hints.write_text(self.zones.root_hints)
        self.trust_anchor.write_text(self.zones.root_ds)
        self.root_key.write_text(self.zones.root_dnskey)
        for server, zones in self.zones.zones.items():
            folder = self.directory / "zones" / server
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in zones:
                (folder / _file_name(name)).write_text(text)
            for sub in ("run", "db"):
                (self.directory / sub / server).mkdir(parents=True, exist_ok=True)
        if self._own_netns:
            assert self.netns is not None
            netns.create(self.netns)
        try:
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        assert self.zones is not None
        prefix = netns.exec_prefix(self.netns)
        for server in (ROOT, TLD, SLD):
            names = [name for name, _ in self.zones.zones[server]]
            conf = self.directory / f"knot-{server}.conf"
            conf.write_text(_knot_conf(self.directory, server, self.addresses[server], self.port, names))
            self._processes.append(subprocess.Popen([*prefix, "knotd", "-c", str(conf)], stdin=subprocess.DEVNULL))
        poison_file = self.directory / "poison.records"
        poison_file.write_text(self.zones.poison)
        for server, delay, extra in ((SLOW, SLOW_DELAY, []), (POISON, 0.0, [str(poison_file)])):
            zone = self.zones.zones[server][0][0]
            zone_file = self.directory / "zones" / server / _file_name(zone)
            address = self.addresses[server]
            command = [sys.executable, "-m", "ztdns.lab.rogue", str(zone_file), zone, address, str(self.port)]
            self._processes.append(
                subprocess.Popen(
                    [*prefix, *command, str(delay), *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
            )

    def _wait_ready(self, timeout: float = 15.0) -> None:
        assert self.zones is not None
        probes = [(self.addresses[server], name) for server in SERVERS for name, _ in self.zones.zones[server]]
        errors: list[BaseException] = []

        def check() -> None:
            try:
                if self.netns:
                    netns.enter(self.netns)
                deadline = time.monotonic() + timeout
                for address, name in probes:
                    while not self._answers(address, name):
                        if time.monotonic() > deadline:
                            raise LabError(f"no answer for {name} SOA from {address}@{self.port}")
                        for process in self._processes:
                            if process.poll() is not None:
                                raise LabError(f"{process.args!r} exited with {process.returncode}")
                        time.sleep(0.05)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=check)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    def _answers(self, address: str, name: str) -> bool:
        try:
            response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.SOA), address, 1.0, port=self.port)
        except (dns.exception.DNSException, OSError):
            return False
        return bool(response.answer)

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        if self._own_netns and self.netns:
            netns.delete(self.netns)

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
