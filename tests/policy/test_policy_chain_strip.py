"""The resolver never relays a denied name's data inside an allowed answer (issue 14 item 7): through the whole
pipeline, around a resolver whose answers carry extra records."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution

CONFIG = """
[resolver]
mode = "recursive"

[identities.test]
networks = ["127.0.0.0/8"]
policies = ["test"]

[policies.test]
allow = ["allowed.test", "alias.test", "target.test", "mx.test"]
deny = ["denied.test"]

[log.query_log]
output = "off"
"""


def _rrset(name: str, rdtype: str, *values: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name, 300, "IN", rdtype, *values)


class PoisoningResolver:
    """Answers allowed names with extra records: other owners in the answer, denied names' addresses elsewhere."""

    async def resolve(self, question: Question) -> Resolution:
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA
        name = question.name.to_text()
        if name == "allowed.test.":
            response.answer = [_rrset(name, "A", "192.0.2.1"), _rrset("denied.test.", "A", "198.51.100.20")]
            response.additional = [_rrset("denied.test.", "AAAA", "2001:db8::20"), _rrset("mx.test.", "A", "192.0.2.9")]
        elif name == "alias.test.":
            response.answer = [
                _rrset("target.test.", "A", "192.0.2.2"),  # out of order: still on the chain
                _rrset(name, "CNAME", "target.test."),
                _rrset("unrelated.test.", "A", "198.51.100.30"),
            ]
            response.authority = [_rrset("denied.test.", "A", "198.51.100.21")]
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return Resolution(response)

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


def test_out_of_chain_and_denied_records_are_stripped_from_allowed_answers() -> None:
    async def run() -> list[dns.message.Message]:
        frontend = Frontend(
            parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: PoisoningResolver()
        )
        frontend.bind_loop(asyncio.get_running_loop())
        client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
        answers = []
        for _ in range(2):  # resolved, then from the cache (or replayed)
            for name in ("allowed.test", "alias.test"):
                query = dns.message.make_query(name, "A")
                wire = await frontend.handle(query.to_wire(), client)
                assert wire is not None
                answers.append(dns.message.from_wire(wire))
        return answers

    for response in asyncio.run(run()):
        assert response.rcode() == dns.rcode.NOERROR
        records = {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for s in response.sections[1:] for r in s}
        assert not {name for name, _ in records} & {"denied.test.", "unrelated.test."}, records
        qname = response.question[0].name.to_text()
        if qname == "allowed.test.":
            assert records == {("allowed.test.", "A"), ("mx.test.", "A")}  # an allowed name's glue stays
        else:
            assert records == {("alias.test.", "CNAME"), ("target.test.", "A")}
