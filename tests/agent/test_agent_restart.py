"""The restart gap (issue 14 item 11): an agent holding 26,000 grants is SIGKILLed and restarted at once; the stub
answers again within 100 ms of the new agent's start (the kernel's table is kept as the last run left it, the
grants are read back after the stub answers), and no granted flow is interrupted. In the namespace lab, against
the Unbound DoT resolver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent_lab import PYTHON, AgentProcess, Lab, Probe, agent_factory, lab, needs_root, probe

pytestmark = [needs_root(), pytest.mark.root, pytest.mark.slow]
__all__ = ["agent_factory", "lab", "probe"]

GRANTS = 26_000
# The target is 100 ms on an idle machine; the bound here leaves room for a loaded CI runner.
BOUND = 0.5

# Sends a query for allowed.test to the stub every 2 ms until one of them is answered; prints when (wall clock).
ASKER = """
import json, os, socket, sys, time
import dns.message
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.002)
print("ready", flush=True)
sys.stdin.readline()
sent = set()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    query = dns.message.make_query("allowed.test", "A")
    sent.add(query.id)
    try:
        sock.sendto(query.to_wire(), ("127.0.0.53", 53))
        while True:
            response = dns.message.from_wire(sock.recv(4096))
            if response.id in sent and response.answer:
                print(json.dumps({"answered": time.time()}), flush=True)
                sys.exit(0)
    except (OSError, dns.exception.DNSException):
        continue
print(json.dumps({"answered": None}), flush=True)
"""


def _live(state: Path) -> int:
    """The live addresses in the status file (written once a second)."""
    try:
        return int(json.loads((state / "status.json").read_text())["live_addresses"])
    except (OSError, ValueError):
        return 0


def test_a_killed_agent_with_26k_grants_answers_again_at_once(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    expires = time.time() + 600
    grants = [
        {
            "a": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "n": f"n{i}.test",
            "e": expires,
            "i": "spiffe://test/host",
        }
        for i in range(GRANTS)
    ]
    lines = [json.dumps(grants[start : start + 1000]) for start in range(0, GRANTS, 1000)]
    (state / "snapshot.jsonl").write_text("\n".join(lines) + "\n")
    config = lab.config(tmp_path)
    agent_factory.append(AgentProcess(lab, config))
    assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
    assert probe.connects("198.51.100.10", hold="kept")
    asker = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, PYTHON, "-c", ASKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert asker.stdout is not None and asker.stdin is not None
    assert asker.stdout.readline().strip() == "ready"
    agent_factory[-1].kill(signal.SIGKILL)
    # While it is down: what was granted stays reachable, new connections and flowing ones alike.
    assert probe.connects("198.51.100.10") and probe.ask(op="echo", id="kept")["ok"]
    asker.stdin.write("go\n")
    asker.stdin.flush()
    spawned = time.time()
    agent_factory.append(AgentProcess(lab, config))
    answered = json.loads(asker.stdout.readline())["answered"]
    asker.wait(10)
    status = json.loads((state / "status.json").read_text())
    assert answered is not None
    gap, from_exec = answered - float(status["started"]), answered - spawned
    print(
        f"restart gap with {GRANTS} grants: {1000 * gap:.0f} ms from the agent's start to the first answer, "
        f"{1000 * from_exec:.0f} ms from exec (Python's start and imports included)"
    )
    assert gap <= BOUND, f"first answer {1000 * gap:.0f} ms after the agent started"
    # The table was kept, with the kernel's elements: nothing was rebuilt or rewritten before answering.
    log = (tmp_path / "agent.log").read_text()
    assert "table inet ztdns kept as the last run left it" in log
    timeouts = lab.set_timeouts()
    assert "10.0.0.1" in timeouts and "198.51.100.10" in timeouts and len(timeouts) >= GRANTS
    assert probe.ask(op="echo", id="kept")["ok"] and probe.connects("198.51.100.10")
    assert not probe.connects("198.51.100.20")
    # The grants are read back into the agent's state shortly after.
    deadline = time.monotonic() + 20
    while "addresses read back" not in (tmp_path / "agent.log").read_text() or _live(state) < GRANTS:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # Another configuration builds another table: the next start rebuilds it with every grant before answering.
    agent_factory[-1].kill(signal.SIGKILL)
    config = lab.config(tmp_path, '[[exception]]\nname = "lab"\nnetworks = ["198.51.100.30/32"]\n')
    agent_factory.append(AgentProcess(lab, config))
    log = (tmp_path / "agent.log").read_text()
    assert log.count("kept as the last run left it") == 1 and log.count("addresses restored") == 2
    assert "10.0.0.1" in lab.set_timeouts() and probe.connects("198.51.100.30")


# Holds the stub's sockets as a service manager does (socket activation) and starts agents on them: one line on
# stdin ("start") starts an agent with LISTEN_FDS=2 (UDP, TCP on 127.0.0.53:53) and prints its pid.
HOLDER = """
import os, socket, subprocess, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.53", 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.53", 53))
tcp.listen(64)
def hand_over():
    os.dup2(udp.fileno(), 3)
    os.dup2(tcp.fileno(), 4)
command = ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=2 exec "$@"', "agent", sys.executable, "-m", "ztdns", "agent"]
print("ready", flush=True)
for line in sys.stdin:
    log = open(sys.argv[2], "a")
    agent = subprocess.Popen([*command, "--config", sys.argv[1]], pass_fds=(3, 4), preexec_fn=hand_over, stdout=log,
                             stderr=subprocess.STDOUT)
    print(agent.pid, flush=True)
"""


def test_with_socket_activation_queries_sent_in_the_gap_are_answered(
    lab: Lab, probe: Probe, agent_factory: list[AgentProcess], tmp_path: Path
) -> None:
    config = lab.config(tmp_path)
    log = tmp_path / "agent.log"
    holder = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, PYTHON, "-c", HOLDER, str(config), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    status = tmp_path / "state" / "status.json"
    pids: list[int] = []

    def start() -> int:
        status.unlink(missing_ok=True)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("start\n")
        holder.stdin.flush()
        pids.append(int(holder.stdout.readline()))
        return pids[-1]

    try:
        assert holder.stdout.readline().strip() == "ready"
        pid = start()
        deadline = time.monotonic() + 30
        while not status.exists():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert probe.resolve("allowed.test")["addresses"] == ["198.51.100.10"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        # In the gap: one query over UDP and one over TCP, each sent once, wait in the held sockets' buffers.
        sent = time.monotonic()
        waiting = [
            subprocess.Popen(
                ["ip", "netns", "exec", lab.client, PYTHON, str(Path(__file__).parent.parent / "agent_probe.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for process, tcp in zip(waiting, (False, True), strict=True):
            assert process.stdin is not None
            query = {"op": "dns", "name": "target.test", "type": "A", "server": "127.0.0.53", "timeout": 20, "tcp": tcp}
            process.stdin.write(json.dumps(query) + "\n")
            process.stdin.flush()
        time.sleep(0.3)
        start()
        for process in waiting:
            assert process.stdout is not None and process.stdin is not None
            answer = json.loads(process.stdout.readline())
            process.stdin.close()
            process.wait(5)
            assert answer["addresses"] == ["198.51.100.12"], answer
        print(f"queries sent in the gap answered {time.monotonic() - sent:.2f} s later (restart from exec included)")
        assert probe.connects("198.51.100.12")
        assert "socket activation" not in log.read_text()  # both handed-over sockets were used
    finally:
        for pid in pids:  # the agents are the holder's children: ended by their ids
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        holder.stdin.close()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
