"""`ztdns serve` (recursive, validating) against the signed lab: the whole pipeline — policy, message cache,
replays, AD rules, EDE — compared with Unbound, bogus answers seen by the client, aggressive NSEC, metrics,
and poisoning resistance (forged-response floods, out-of-bailiwick referral data)."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator

import dns.asyncquery
import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fixtures.labcases import answer_set, covered_by_same_span, generated_queries, known_difference
from ztdns.lab import netns
from ztdns.lab.netns import NetnsLoop
from ztdns.lab.run import Lab
from ztdns.lab.serve import LabServer
from ztdns.lab.unbound import Unbound
from ztdns.lab.unbound import missing as unbound_missing
from ztdns.lab.zones import CASES, POISONED_ADDRESS, Case

pytestmark = [pytest.mark.slow, pytest.mark.root]

ZTDNS, UNBOUND = "127.0.0.2", "127.0.0.3"
_BOGUS = [c for c in CASES if c.ede is not None and c.rcode == "SERVFAIL" and 6 <= c.ede <= 12]


@pytest.fixture(scope="module")
def server(signed_lab: Lab) -> Iterator[LabServer]:
    running = LabServer(signed_lab, address=ZTDNS)
    running.start()
    yield running
    assert running.stop() == 0, running.log[-2000:]  # exits 0 on SIGTERM


def ask(
    loop: NetnsLoop,
    server: str,
    qname: str,
    qtype: str = "A",
    *,
    do: bool = True,
    ad: bool = False,
    cd: bool = False,
    edns: bool = True,
) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, want_dnssec=do, use_edns=0 if edns or do else False)
    if ad:
        query.flags |= dns.flags.AD
    if cd:
        query.flags |= dns.flags.CD
    return loop.run(dns.asyncquery.udp(query, server, 5))


def ede(response: dns.message.Message) -> tuple[int, str] | None:
    for option in response.options:
        if isinstance(option, dns.edns.EDEOption):
            return int(option.code), option.text or ""
    return None


def outcome(response: dns.message.Message) -> tuple[str, bool, set[str]]:
    rcode = dns.rcode.to_text(response.rcode())
    return rcode, bool(response.flags & dns.flags.AD), answer_set(response) if rcode != "SERVFAIL" else set()


def scrape(loop: NetnsLoop, lab_server: LabServer) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(lab_server.metrics_url, timeout=5) as reply:
            return str(reply.read().decode())

    async def in_namespace() -> str:
        # Executor threads are started by the loop's thread, so they are inside the lab's namespace too.
        return await asyncio.to_thread(fetch)

    return loop.run(in_namespace())


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def addresses(response: dns.message.Message) -> set[str]:
    return {rdata.to_text() for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset}


@pytest.mark.skipif(unbound_missing() is not None, reason=unbound_missing() or "")
def test_serve_agrees_with_unbound(signed_lab: Lab, lab_loop: NetnsLoop, server: LabServer) -> None:
    """Every lab case and 120 generated queries: rcode, AD and answer RRsets match Unbound's, on the first
    answer (resolved) and on the repeat (cache or replay)."""
    queries = [(c.qname, c.qtype) for c in CASES] + generated_queries(120)
    disagreements: list[tuple[object, ...]] = []
    with Unbound(signed_lab, address=UNBOUND):
        for qname, qtype in queries:
            first = outcome(ask(lab_loop, ZTDNS, qname, qtype))
            again = outcome(ask(lab_loop, ZTDNS, qname, qtype))
            theirs = outcome(ask(lab_loop, UNBOUND, qname, qtype))
            if again != first:
                disagreements.append((qname, qtype, "repeat differs", first, again))
            if first != theirs and not known_difference(qname, first, theirs):
                disagreements.append((qname, qtype, first, theirs))
    assert disagreements == [], "\n".join(map(str, disagreements))


@pytest.mark.parametrize("case", _BOGUS, ids=lambda c: c.qname)
def test_bogus_answers_servfail_with_ede_naming_zone_and_record(
    lab_loop: NetnsLoop, server: LabServer, case: Case
) -> None:
    qname, zone = case.qname, case.qname.split(".", 1)[1]
    for _ in range(2):  # the second answer comes from what the first one left in the caches
        response = ask(lab_loop, ZTDNS, qname, case.qtype)
        assert response.rcode() == dns.rcode.SERVFAIL
        assert not response.answer and not response.flags & dns.flags.AD
        found = ede(response)
        assert found is not None and found[0] == case.ede, found
        text = found[1]
        assert text.startswith(f"{zone}: "), text
        record = re.search(r": (\S+) (A|DNSKEY|DS|NXDOMAIN)\b", text)
        assert record is not None and dns.name.from_text(record.group(1)).is_subdomain(dns.name.from_text(zone)), text
    # CD=1: the client validates itself and gets the data as published, without AD.
    unchecked = ask(lab_loop, ZTDNS, qname, case.qtype, cd=True)
    assert unchecked.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert not unchecked.flags & dns.flags.AD
    if unchecked.rcode() == dns.rcode.NOERROR:
        assert addresses(unchecked) == {"192.0.2.1"}


@pytest.mark.parametrize(
    ("do", "ad", "edns", "expect_ad"),
    [(True, False, True, True), (False, True, True, True), (False, True, False, True), (False, False, True, False)],
    ids=["DO", "AD", "AD-no-EDNS", "neither"],
)
def test_ad_only_for_secure_answers_to_clients_that_ask(
    lab_loop: NetnsLoop, server: LabServer, do: bool, ad: bool, edns: bool, expect_ad: bool
) -> None:
    for _ in range(3):  # resolved, then cached/replayed: every path keeps the rule
        secure = ask(lab_loop, ZTDNS, "www.nsec3.lab.", do=do, ad=ad, edns=edns)
        assert secure.rcode() == dns.rcode.NOERROR and addresses(secure) == {"192.0.2.1"}
        assert bool(secure.flags & dns.flags.AD) is expect_ad
        insecure = ask(lab_loop, ZTDNS, "www.insecure.lab.", do=do, ad=ad, edns=edns)
        assert insecure.rcode() == dns.rcode.NOERROR and addresses(insecure) == {"192.0.2.1"}
        assert not insecure.flags & dns.flags.AD


def test_validation_failures_are_security_events_counted_by_ede(lab_loop: NetnsLoop, server: LabServer) -> None:
    for case in _BOGUS:
        ask(lab_loop, ZTDNS, case.qname, case.qtype)
    text = scrape(lab_loop, server)
    for code in {int(c.ede) for c in _BOGUS if c.ede is not None}:
        assert metric(text, f'ztdns_dnssec_validation_failures_total{{ede="{code}"}}') >= 1, code
    assert server.wait_log("event=dnssec_bogus qname=www.bogus.lab. qtype=A ede=6")


def test_aggressive_nsec_answers_from_cached_denials(lab_loop: NetnsLoop, server: LabServer) -> None:
    """RFC 8198: once a validated NSEC/NSEC3 denial is cached, other names it covers are answered without
    any query to the authorities (counted by the server's upstream-query metric)."""
    first = ask(lab_loop, ZTDNS, "nxa.secure.lab.")
    assert first.rcode() == dns.rcode.NXDOMAIN and first.flags & dns.flags.AD
    nsec3_first = ask(lab_loop, ZTDNS, "nxa.nsec3.lab.")
    assert nsec3_first.rcode() == dns.rcode.NXDOMAIN and nsec3_first.flags & dns.flags.AD
    nsec3_other = covered_by_same_span(nsec3_first, "nxa.nsec3.lab.")
    assert ask(lab_loop, ZTDNS, "www.secure.lab.", "MX").flags & dns.flags.AD  # NODATA: the NSEC at www
    before = scrape(lab_loop, server)
    # Covered by the same NSEC ("ns" → "txt"): NXDOMAIN for A and TXT; NODATA for a type www lacks.
    answers = [
        ask(lab_loop, ZTDNS, "nxb.secure.lab."),
        ask(lab_loop, ZTDNS, "nxc.secure.lab.", "TXT"),
        ask(lab_loop, ZTDNS, nsec3_other),
    ]
    nodata = ask(lab_loop, ZTDNS, "www.secure.lab.", "SRV")
    after = scrape(lab_loop, server)
    for response in answers:
        assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AD
        assert any(r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3) for r in response.authority)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AD
    upstream = "ztdns_recursion_upstream_queries_total"
    assert metric(after, upstream) == metric(before, upstream)
    aggressive = "ztdns_recursion_aggressive_answers_total"
    assert metric(after, aggressive) - metric(before, aggressive) == 4
    # Not from a wildcard or an opt-out span (insecure): those must still be asked.
    wildcard = ask(lab_loop, ZTDNS, "fresh.wild.secure.lab.")
    assert addresses(wildcard) == {"192.0.2.2"}
    opt_out = ask(lab_loop, ZTDNS, "nxa.optout.lab.")
    assert opt_out.rcode() == dns.rcode.NXDOMAIN and not opt_out.flags & dns.flags.AD
    before = scrape(lab_loop, server)
    assert ask(lab_loop, ZTDNS, covered_by_same_span(opt_out, "nxa.optout.lab.")).rcode() == dns.rcode.NXDOMAIN
    after = scrape(lab_loop, server)
    assert metric(after, upstream) > metric(before, upstream)
    assert metric(after, aggressive) == metric(before, aggressive)


# A negative answer that brings the zone's signed SOA and, in nsec3.lab, the NSEC3 of *.wild.nsec3.lab: it
# covers the hash of *.nsec3.lab in nx.nsec3.lab's proof. The names asked below, b and z, hash into the span
# that starts at wild.nsec3.lab's own NSEC3, so b's answer brings the closest encloser's proof too (the lab's
# NSEC3 has no salt and no extra iterations: the hashes are fixed).
@pytest.mark.parametrize(("zone", "primer"), [("secure.lab.", "www.secure.lab."), ("nsec3.lab.", "nx.nsec3.lab.")])
def test_aggressive_wildcard_nodata(lab_loop: NetnsLoop, server: LabServer, zone: str, primer: str) -> None:
    """RFC 8198 §5.3: after a wildcard answer, another name under that wildcard asked for a type the wildcard
    lacks is a NODATA proven by the denials already held (no upstream query); a type it holds is still asked."""
    assert ask(lab_loop, ZTDNS, primer, "MX").flags & dns.flags.AD
    expanded = ask(lab_loop, ZTDNS, f"b.wild.{zone}")
    assert addresses(expanded) and expanded.flags & dns.flags.AD
    before = scrape(lab_loop, server)
    nodata = ask(lab_loop, ZTDNS, f"z.wild.{zone}", "MX")
    after = scrape(lab_loop, server)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AD
    upstream = "ztdns_recursion_upstream_queries_total"
    assert metric(after, upstream) == metric(before, upstream)
    assert metric(after, "ztdns_recursion_aggressive_answers_total") > metric(
        before, "ztdns_recursion_aggressive_answers_total"
    )
    positive = ask(lab_loop, ZTDNS, f"w.wild.{zone}")
    assert addresses(positive) == addresses(expanded) and positive.flags & dns.flags.AD
    # One query: QNAME minimisation already learnt that wild.{zone} is no zone cut, and does not ask it again.
    assert metric(scrape(lab_loop, server), upstream) == metric(after, upstream) + 1


class Forger(threading.Thread):
    """An off-path attacker that still learns each query's port and ID by sniffing loopback: every query to
    ``target`` gets forged answers from the target's address — wrong IDs, wrong ports, and the right ID and
    port with the question in another case than the resolver sent (0x20) — plus a blind flood of random IDs
    to random ports. All of them claim the name is at the poisoned address."""

    def __init__(self, namespace: str | None, target: str) -> None:
        super().__init__(daemon=True)
        self.namespace = namespace
        self.target = socket.inet_aton(target)
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.sniffed = 0
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.namespace:
                netns.enter(self.namespace)
            with (
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)) as sniff,
                socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw,
            ):
                sniff.bind(("lo", 0))
                sniff.settimeout(0.05)
                self.ready.set()
                seen: set[bytes] = set()
                while not self.stopping.is_set():
                    try:
                        frame = sniff.recv(65535)
                    except TimeoutError:
                        continue
                    self._forge(frame[14:], raw, seen)  # loopback frames carry an all-zero Ethernet header
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def _forge(self, packet: bytes, raw: socket.socket, seen: set[bytes]) -> None:
        header = (packet[0] & 0x0F) * 4
        if packet[9] != socket.IPPROTO_UDP or packet[16:20] != self.target:
            return
        source_port, port = struct.unpack("!HH", packet[header : header + 4])
        payload = packet[header + 8 :]
        if port != 53 or payload[:2] + packet[12:20] in seen:
            return
        seen.add(payload[:2] + packet[12:20])
        query = dns.message.from_wire(payload)
        if query.flags & dns.flags.QR:
            return
        self.sniffed += 1
        client, qid = socket.inet_ntoa(packet[12:16]), query.id
        for forged_id, forged_port, swap_case in (
            *[((qid + k) % 65536, source_port, False) for k in range(1, 40)],
            *[(qid, (source_port + k) % 65536 or 1, False) for k in range(1, 20)],
            (qid, source_port, True),
        ):
            self._send(raw, client, forged_port, self._answer(query, forged_id, swap_case))
        blind = self._answer(query, 0, False)
        for k in range(300):
            self._send(raw, client, 1024 + (k * 211) % 64000, bytes([k % 256, (k * 7) % 256]) + blind[2:])

    def _answer(self, query: dns.message.Message, qid: int, swap_case: bool) -> bytes:
        response = dns.message.make_response(query)
        response.id = qid
        response.flags |= dns.flags.AA
        name = query.question[0].name
        if swap_case:
            name = dns.name.Name([label.swapcase() for label in name.labels])
            response.question = [dns.rrset.RRset(name, dns.rdataclass.IN, query.question[0].rdtype)]
        response.answer.append(dns.rrset.from_text(name, 3600, "IN", "A", POISONED_ADDRESS))
        return response.to_wire()

    def _send(self, raw: socket.socket, client: str, port: int, payload: bytes) -> None:
        udp = struct.pack("!HHHH", 53, port, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, self.target,
                         socket.inet_aton(client))  # fmt: skip
        raw.sendto(ip + udp, (client, 0))
        self.sent += 1


def test_forged_response_flood_never_reaches_the_cache(signed_lab: Lab, lab_loop: NetnsLoop) -> None:
    """While ztdns waits 300 ms for the slow (unsigned, so DNSSEC cannot help) server, a forger floods it."""
    slow = signed_lab.addresses["slow"]
    with LabServer(signed_lab, address="127.0.0.4") as fresh:
        forger = Forger(signed_lab.netns, slow)
        forger.start()
        assert forger.ready.wait(5) and forger.error is None, forger.error
        try:
            first = ask(lab_loop, fresh.address, "www.slow.lab.", do=False)
        finally:
            forger.stopping.set()
            forger.join(5)
        assert forger.error is None, forger.error
        assert forger.sniffed >= 1 and forger.sent > 300
        assert first.rcode() == dns.rcode.NOERROR and addresses(first) == {"192.0.2.5"}
        again = ask(lab_loop, fresh.address, "www.slow.lab.", do=False)
        assert addresses(again) == {"192.0.2.5"}
        with_do = ask(lab_loop, fresh.address, "www.slow.lab.", do=True)
        assert addresses(with_do) == {"192.0.2.5"}
        # Wrong IDs and the wrong-case echo reached the resolver's socket and were dropped, not accepted.
        assert metric(scrape(lab_loop, fresh), "ztdns_recursion_forged_dropped_total") >= 40


def test_out_of_bailiwick_referral_records_are_not_cached(signed_lab: Lab, lab_loop: NetnsLoop) -> None:
    poison = signed_lab.addresses["poison"]
    # The poisoning server really sends them: data for names outside poison.lab. in its referral.
    referral = ask(lab_loop, poison, "www.sub.poison.lab.", do=False)
    stuffed = {r.name.to_text() for r in (*referral.authority, *referral.additional)}
    assert {"www.insecure.lab.", "ns.insecure.lab.", "lab.", "ns.nic.lab."} <= stuffed
    with LabServer(signed_lab, address="127.0.0.5") as fresh:
        ask(lab_loop, fresh.address, "www.sub.poison.lab.")  # takes the poisoned referral (then finds it lame)
        assert addresses(ask(lab_loop, fresh.address, "www.poison.lab.")) == {"192.0.2.6"}
        insecure = ask(lab_loop, fresh.address, "www.insecure.lab.")
        assert addresses(insecure) == {"192.0.2.1"}
        assert addresses(ask(lab_loop, fresh.address, "ns.insecure.lab.")) == {signed_lab.addresses["sld"]}
        secure = ask(lab_loop, fresh.address, "www.secure.lab.")
        assert addresses(secure) == {"192.0.2.1"} and secure.flags & dns.flags.AD
        assert addresses(ask(lab_loop, fresh.address, "ns.nic.lab.")) == {signed_lab.addresses["tld"]}


@pytest.mark.parametrize("case", [c for c in CASES if c.ede in (1, 2)], ids=lambda c: c.qname)
def test_unsupported_algorithm_or_digest_is_insecure_with_ede(
    lab_loop: NetnsLoop, server: LabServer, case: Case
) -> None:
    """RFC 8624: a zone signed only with algorithms or digests we do not support counts as unsigned: the answer
    is served without AD, and the EDE says why."""
    zone = case.qname.split(".", 1)[1]
    for _ in range(2):
        response = ask(lab_loop, ZTDNS, case.qname, case.qtype)
        assert response.rcode() == dns.rcode.NOERROR and addresses(response) == {"192.0.2.1"}
        assert not response.flags & dns.flags.AD
        assert ede(response) is not None
        code, text = ede(response) or (0, "")
        assert code == case.ede and text.startswith(f"{zone}: {zone} DS: "), text
