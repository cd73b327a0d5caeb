"""Runs inside a test namespace: reads JSON commands on stdin, answers one JSON line each (used by the agent tests).

Ops: connect (optionally held open under an id), echo (over a held connection), udp (echo round trip), dns
(UDP, TCP, or DoT with ``ca`` and optionally a client ``cert``/``key``).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def main() -> None:
    held: dict[str, socket.socket] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            result = run(cmd, held)
        except (OSError, EOFError, ssl.SSLError, dns.exception.DNSException) as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


def run(cmd: dict[str, object], held: dict[str, socket.socket]) -> dict[str, object]:
    op = cmd["op"]
    timeout = float(cmd.get("timeout", 0.5))  # type: ignore[arg-type]
    if op == "connect":
        sock = socket.create_connection((str(cmd["host"]), int(cmd["port"])), timeout=timeout)  # type: ignore[call-overload]
        if cmd.get("hold"):
            held[str(cmd["hold"])] = sock
        else:
            sock.close()
        return {"ok": True}
    if op == "echo":
        sock = held[str(cmd["id"])]
        sock.settimeout(timeout)
        sock.sendall(b"ping")
        return {"ok": sock.recv(16) == b"ping"}
    if op == "udp":
        family = socket.AF_INET6 if ":" in str(cmd["host"]) else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(b"ping", (str(cmd["host"]), int(cmd["port"])))  # type: ignore[call-overload]
            return {"ok": sock.recv(16) == b"ping"}
    if op == "dns":
        # EDNS so that extended errors (RFC 8914) can come back.
        # ("edns": -1 asks without EDNS.)
        edns = int(cmd.get("edns", 0))  # type: ignore[call-overload]
        qtype = dns.rdatatype.from_text(str(cmd.get("type", "A")))
        query = dns.message.make_query(str(cmd["name"]), qtype, use_edns=edns)
        server, port = str(cmd["server"]), int(cmd.get("port", 53))  # type: ignore[call-overload]
        if cmd.get("ca"):  # DoT, with a client certificate when one is given
            context = ssl.create_default_context(cafile=str(cmd["ca"]))
            if cmd.get("cert"):
                context.load_cert_chain(str(cmd["cert"]), str(cmd["key"]))
            response = dns.query.tls(
                query, server, port=port, timeout=timeout, ssl_context=context, server_hostname="dns.test"
            )
        elif cmd.get("tcp"):
            response = dns.query.tcp(query, server, port=port, timeout=timeout)
        else:
            response = dns.query.udp(query, server, port=port, timeout=timeout)
        addresses = [r.address for rrset in response.answer for r in rrset if hasattr(r, "address")]
        ttls = [rrset.ttl for rrset in response.answer]
        ede = [[int(o.code), o.text or ""] for o in response.options if isinstance(o, dns.edns.EDEOption)]
        return {
            "ok": True,
            "rcode": dns.rcode.to_text(response.rcode()),
            "addresses": addresses,
            "ttls": ttls,
            "ede": ede,
            "options": [int(o.otype) for o in response.options],
            "opt": response.edns >= 0,
        }
    raise ValueError(f"unknown op {op}")


if __name__ == "__main__":
    main()
