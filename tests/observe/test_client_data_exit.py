"""Client-derived data (addresses, identities, query names) leaves the process only through observe/.

Two checks: a scan of every ``log.*(...)`` call outside observe/ for arguments built from client data, and a run
of hostile and failing queries (in-process and over a real UDP socket) that looks at every log record.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.config.listen import ListenConfig
from ztdns.handler import Frontend
from ztdns.model import EDE, Question, Reason, Resolution
from ztdns.transport import Peer
from ztdns.transport.udp import UdpListener

SOURCE = Path(__file__).resolve().parents[2] / "src" / "ztdns"
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
# Names and attributes that hold, or are built from, what a client sent or who it is.
_CLIENT_NAMES = {"client", "addr", "peer", "qname", "question", "identity", "query", "wire", "ctx", "request"}
_CLIENT_ATTRIBUTES = {"certificate_identity", "qname", "question", "client", "identity", "wire"}


def _client_derived(node: ast.AST) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id in _CLIENT_NAMES:
            return True
        if isinstance(child, ast.Attribute) and child.attr in _CLIENT_ATTRIBUTES:
            return True
    return False


def _log_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _LOG_METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"log", "logger", "logging"}
        ):
            calls.append(node)
    return calls


def client_data_logged(source: Path) -> list[str]:
    """``file:line`` of every log call outside observe/ with an argument derived from client data."""
    found = []
    for path in sorted(source.rglob("*.py")):
        if path.relative_to(source).parts[0] == "observe":
            continue
        for call in _log_calls(ast.parse(path.read_text(), str(path))):
            arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
            if any(_client_derived(argument) for argument in arguments):
                found.append(f"{path.relative_to(source)}:{call.lineno}")
    return found


def test_no_module_but_observe_logs_client_data() -> None:
    assert client_data_logged(SOURCE) == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    (tmp_path / "observe").mkdir()
    (tmp_path / "observe" / "stage.py").write_text('log.info("from %s", client.address)\n')
    (tmp_path / "udp.py").write_text(
        'log.exception("failed for %s", addr[0])\nlog.info("ok %s", self.config.address)\n'
        'logger.warning("x", extra={"qname": str(ctx.question.name)})\n'
    )
    assert client_data_logged(tmp_path) == ["udp.py:1", "udp.py:3"]


CONFIG = """
[resolver]
mode = "recursive"

[identities.test]
networks = ["127.0.0.0/8"]
policies = ["test"]

[policies.test]
allow = ["**.test"]

[log.query_log]
output = "off"
"""

CLIENT = "127.0.0.77"
SECRET = "secret-client-name"


class FailingResolver:
    """Raises with the name in the message (for the pipeline), or answers bogus, or SERVFAIL."""

    async def resolve(self, question: Question) -> Resolution:
        text = question.name.to_text()
        if text.startswith("raise."):
            raise RuntimeError(f"cannot resolve {text}")
        if text.startswith("bogus."):
            query = dns.message.make_query(question.name, dns.rdatatype.RdataType.make(question.rdtype))
            return Resolution(
                dns.message.make_response(query),
                Reason(EDE.DNSSEC_BOGUS, f"{text}: signature does not verify"),
                security="bogus",
            )
        return Resolution(None, Reason(EDE.NETWORK_ERROR, f"no answer for {text}"))

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


def _leaks(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter()
    leaked = []
    for record in records:
        if record.name.startswith("ztdns.observe") or record.name == "ztdns.dnssec":  # observe/'s loggers
            continue
        text = formatter.format(record)
        if CLIENT in text or SECRET in text:
            leaked.append(f"{record.name}: {text}")
    return leaked


def _hostile_queries() -> list[bytes]:
    good = dns.message.make_query(f"www.{SECRET}.test", "A", use_edns=0).to_wire()
    return [
        b"",
        b"\x00" * 5,
        good[:15],  # cut in the question
        good[:2] + b"\x80" + good[3:],  # a response
        good[:2] + b"\x28" + good[3:],  # opcode UPDATE
        good + b"\xff" * 7,  # trailing garbage
        dns.message.make_query(f"{SECRET}.example", "A").to_wire(),  # denied by policy
        dns.message.make_query(f"raise.{SECRET}.test", "A").to_wire(),  # the resolver raises
        dns.message.make_query(f"bogus.{SECRET}.test", "A").to_wire(),  # a DNSSEC failure
        dns.message.make_query(f"fail.{SECRET}.test", "A").to_wire(),  # upstream failure
        dns.message.make_query(f"www.{SECRET}.test", "AXFR").to_wire(),
        good,
    ]


def test_failing_and_hostile_queries_log_no_client_data_outside_observe(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: FailingResolver())
        frontend.bind_loop(asyncio.get_running_loop())
        for transport in (Transport.UDP, Transport.TCP):
            client = ClientInfo(transport, CLIENT, 5300, stream=transport is Transport.TCP)
            for wire in _hostile_queries():
                frontend.fast(wire, client)
                await frontend.handle(wire, client)
                await asyncio.sleep(0)
                frontend.fast(wire, client)
        await frontend.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    assert _leaks(caplog.records) == []
    # The failures were reported — through observe/ (the pipeline's exception, the bogus answer).
    observed = [
        record.getMessage() for record in caplog.records if record.name.startswith(("ztdns.observe", "ztdns.dnssec"))
    ]
    assert any("failed inside the pipeline" in message and CLIENT in message for message in observed)
    bogus = [record for record in caplog.records if getattr(record, "event", None) == "dnssec_bogus"]
    assert any(str(getattr(record, "qname", "")).startswith("bogus.") for record in bogus)


class BrokenFastPath(Frontend):
    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        raise RuntimeError("replay lookup broke")

    def fast_batch(
        self,
        batch: list[tuple[bytes, Peer]],
        client_of: Callable[[Peer], ClientInfo],
        answers: list[tuple[bytes, Peer]],
    ) -> list[tuple[bytes, Peer]]:
        raise RuntimeError("replay lookup broke")


def test_the_udp_lane_logs_a_failing_fast_path_without_the_address(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        frontend = BrokenFastPath(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda c: FailingResolver())
        listener = UdpListener(ListenConfig(address="127.0.0.1:0", transport="udp"), frontend, reuse_port=False)
        listener.start(asyncio.get_running_loop())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((CLIENT, 0))
            for wire in _hostile_queries():
                sock.sendto(wire or b"\x00", listener.address)
            deadline = time.monotonic() + 5
            while listener.completed < listener.submitted or listener.submitted < len(_hostile_queries()):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        listener.stop()
        listener.close()
        await frontend.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    assert any(record.getMessage() == "fast path failed" for record in caplog.records)
    assert _leaks(caplog.records) == []
