"""Scenario replay for recursion and validation, in the spirit of Unbound's testbound ``.rpl`` files: mock
authoritative servers behind the resolver's injected exchange, a faked clock, client queries and the answers
expected. Plain pytest: no root, no sockets, no processes.

A mock server answers from zones (signed here, with the lab's signer, when the scenario says so) the way an
authoritative server does — answers, referrals with glue and DS or its denial, NXDOMAIN/NODATA/wildcard proofs
with NSEC or NSEC3, DNAME synthesis — and from scripted entries, which win over the zones (lame, broken or
lying servers). The scenario format (``scenarios/*.rpl``)::

    SCENARIO one line saying what is shown
    CONFIG qname_minimisation false      ; [resolver.recursion] setting (JSON value)
    DNSSEC nsec3_max_iterations 50       ; [dnssec] setting (JSON value)
    SIGNED example. nsec3 optout         ; sign this zone (NSEC unless nsec3 [optout]); its parent carries the DS
    ANCHOR example. [dnskey]             ; trust anchor: that zone's DS or DNSKEY (default: the root's DS, if "."
                                         ; is signed); loaded from a file as [dnssec] trust_anchors are
    SERVER 192.0.2.1 [down]              ; down: every query times out
    ZONE example.                        ; zone file text (absolute names) up to END
    ...
    END
    ENTRY www.example. A [subdomain]     ; scripted answer for this name (or anything below) and type (or ANY)
    FLAGS AA [TC]
    RCODE NXDOMAIN
    SECTION ANSWER|AUTHORITY|ADDITIONAL  ; records up to the next SECTION or END
    END
    QUERY www.example. A [DO] [CD]       ; a client question, then what the resolver must answer:
    EXPECT rcode NOERROR [AD] [ede 22|noede] [text "substring of the EDE text"] [rrsets 2]
                                         ; [denials 3]: NSEC/NSEC3 RRsets in the authority section
    ANSWER                               ; the answer section without RRSIGs (TTLs ignored), up to END
    END
    NOQUERY example. DS                  ; no upstream query for this name and type so far
    ASKED www.example. A 2               ; exactly this many upstream queries for this name and type so far
    CACHE max_ttl 60                     ; [cache] max_ttl or negative_max_ttl
    STEP 3600                            ; advance the clock
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import dns.zonefile
from dns.dnssectypes import Algorithm, DSDigest
from dns.rdtypes.ANY.DNAME import DNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3

from ztdns.config.dnssec import DnssecConfig
from ztdns.config.resolver import RecursionConfig
from ztdns.dnssec.trust import TrustAnchors
from ztdns.dnssec.validator import Validator
from ztdns.lab.sign import Denial, LabKey, generate_key, sign_zone
from ztdns.model import Question, Resolution
from ztdns.resolver.recursive import RecursiveResolver

EPOCH = 1_780_000_000.0  # the faked clock's start (2026-05-28)
DAY = 86_400


class FakeClock:
    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ----- mock authoritative servers ------------------------------------------------------------------------------


@dataclass
class Entry:
    """A scripted answer: for ``qname`` (or any name below it) and ``qtype`` (None: any)."""

    qname: dns.name.Name
    qtype: int | None
    subdomain: bool = False
    flags: int = 0
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    sections: dict[str, list[dns.rrset.RRset]] = field(default_factory=dict)
    drop: bool = False  # no answer: the query times out

    def matches(self, qname: dns.name.Name, qtype: int) -> bool:
        name_ok = qname.is_subdomain(self.qname) if self.subdomain else qname == self.qname
        return name_ok and (self.qtype is None or self.qtype == qtype)


@dataclass
class MockServer:
    address: str
    zones: dict[dns.name.Name, dns.zone.Zone] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    down: bool = False

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query``, or None for no answer (timeout)."""
        question = query.question[0]
        qname, qtype = question.name.canonicalize(), question.rdtype
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RD
        for entry in self.entries:
            if entry.matches(qname, qtype):
                if entry.drop:
                    return None
                response.flags |= entry.flags
                response.set_rcode(entry.rcode)
                response.answer = [r.copy() for r in entry.sections.get("ANSWER", [])]
                response.authority = [r.copy() for r in entry.sections.get("AUTHORITY", [])]
                response.additional = [r.copy() for r in entry.sections.get("ADDITIONAL", [])]
                return response
        zone = self._zone_for(qname, qtype)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        _ZoneAnswer(zone, bool(query.ednsflags & dns.flags.DO), response).run(qname, dns.rdatatype.RdataType(qtype))
        return response

    def _zone_for(self, qname: dns.name.Name, qtype: int) -> dns.zone.Zone | None:
        candidates = [origin for origin in self.zones if qname.is_subdomain(origin)]
        if qtype == dns.rdatatype.DS:  # DS is the parent's: answer from the zone above the cut if we serve it
            parents = [origin for origin in candidates if origin != qname]
            candidates = parents or candidates
        if not candidates:
            return None
        return self.zones[max(candidates, key=len)]


class _ZoneAnswer:
    """RFC 1034 §4.3.2 with RFC 4035 §3.1 proofs, from a zone holding its own RRSIG/NSEC/NSEC3 records."""

    def __init__(self, zone: dns.zone.Zone, dnssec: bool, response: dns.message.Message) -> None:
        assert zone.origin is not None
        self.zone = zone
        self.origin: dns.name.Name = zone.origin
        self.dnssec = dnssec
        self.response = response
        param = zone.get_rdataset(self.origin, dns.rdatatype.NSEC3PARAM)
        self.nsec3 = param[0] if param is not None else None
        self.signed = zone.get_rdataset(self.origin, dns.rdatatype.DNSKEY) is not None

    # -- sections
    def _add(
        self,
        section: list[dns.rrset.RRset],
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        owner: dns.name.Name | None = None,
    ) -> bool:
        rdataset = self.zone.get_rdataset(name, rdtype)
        if rdataset is None:
            return False
        shown = owner or name
        if not any(r.name == shown and r.rdtype == rdtype for r in section):
            section.append(dns.rrset.from_rdata_list(shown, rdataset.ttl, list(rdataset)))
            if self.dnssec:
                sigs = self.zone.get_rdataset(name, dns.rdatatype.RRSIG, rdtype)
                if sigs is not None:
                    section.append(dns.rrset.from_rdata_list(shown, sigs.ttl, list(sigs)))
        return True

    def _exists(self, name: dns.name.Name) -> bool:
        """A node with data (NSEC3 owners aside), or an empty non-terminal above one."""
        for owner, node in self.zone.nodes.items():
            if owner.is_subdomain(name) and any(
                r.rdtype not in (dns.rdatatype.NSEC3, dns.rdatatype.RRSIG) for r in node.rdatasets
            ):
                return True
        return False

    def _proof(self, names: list[tuple[dns.name.Name, bool]]) -> None:
        """NSEC/NSEC3 records matching (True) or covering (False) each name, into the authority section."""
        if not (self.dnssec and self.signed):
            return
        for name, matching in names:
            owner = self._nsec3_for(name, matching) if self.nsec3 is not None else self._nsec_for(name, matching)
            if owner is not None:
                self._add(
                    self.response.authority,
                    owner,
                    dns.rdatatype.NSEC3 if self.nsec3 is not None else dns.rdatatype.NSEC,
                )

    def _nsec_for(self, name: dns.name.Name, matching: bool) -> dns.name.Name | None:
        if matching:
            return name if self.zone.get_rdataset(name, dns.rdatatype.NSEC) is not None else None
        for owner, node in self.zone.nodes.items():
            nsec = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)
            if nsec is None:
                continue
            rdata = nsec[0]
            assert isinstance(rdata, NSEC)
            following = rdata.next
            if owner < name < following or (following == self.origin and owner < name):
                return owner
        return None

    def _nsec3_for(self, name: dns.name.Name, matching: bool) -> dns.name.Name | None:
        param = self.nsec3
        assert param is not None
        digest = base64.b32hexdecode(dns.dnssec.nsec3_hash(name, param.salt, param.iterations, 1))
        chain: list[tuple[bytes, bytes, dns.name.Name]] = []
        for owner, node in self.zone.nodes.items():
            nsec3 = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)
            if nsec3 is not None:
                rdata = nsec3[0]
                assert isinstance(rdata, NSEC3)
                chain.append((base64.b32hexdecode(owner.labels[0].upper()), rdata.next, owner))
        for hashed, following, owner in chain:
            if matching and hashed == digest:
                return owner
            if not matching and (
                hashed < digest < following or (following <= hashed and (digest > hashed or digest < following))
            ):
                return owner
        return None

    def _nodata_proof(self, name: dns.name.Name) -> None:
        if self.nsec3 is None:
            self._proof([(name, self.zone.get_node(name) is not None)])  # an empty non-terminal is covered
        elif self._nsec3_for(name, True) is not None:
            self._proof([(name, True)])
        else:  # opt-out: the closest provable encloser and the span covering the next closer name
            encloser = self._closest_encloser(name)
            self._proof([(encloser, True), (dns.name.Name(name.labels[-(len(encloser) + 1) :]), False)])

    def _closest_encloser(self, name: dns.name.Name) -> dns.name.Name:
        candidate = name.parent()
        while candidate != self.origin and not self._exists(candidate):
            candidate = candidate.parent()
        return candidate

    # -- the algorithm
    def run(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> None:
        response = self.response
        # Cuts and DNAMEs on the way down from the apex.
        for depth in range(len(self.origin) + 1, len(qname) + 1):
            name = dns.name.Name(qname.labels[-depth:])
            if self.zone.get_rdataset(name, dns.rdatatype.NS) is not None and not (
                name == qname and qtype == dns.rdatatype.DS
            ):
                self._referral(name)
                return
            dname = self.zone.get_rdataset(name, dns.rdatatype.DNAME)
            if dname is not None and name != qname:
                response.flags |= dns.flags.AA
                self._add(response.answer, name, dns.rdatatype.DNAME)
                rdata = dname[0]
                assert isinstance(rdata, DNAME)
                target = qname.relativize(name).derelativize(rdata.target)
                response.answer.append(dns.rrset.from_text(qname, dname.ttl, "IN", "CNAME", target.to_text()))
                return
        response.flags |= dns.flags.AA
        if qtype == dns.rdatatype.RRSIG and self.zone.get_node(qname) is not None:
            node = self.zone.get_node(qname)
            assert node is not None
            sigs = [r for r in node.rdatasets if r.rdtype == dns.rdatatype.RRSIG]
            response.answer += [dns.rrset.from_rdata_list(qname, r.ttl, list(r)) for r in sigs]
            if sigs:
                return
        if self._exists(qname):
            if self._add(response.answer, qname, qtype):
                return
            if qtype != dns.rdatatype.CNAME and self._add(response.answer, qname, dns.rdatatype.CNAME):
                return
            self._negative(dns.rcode.NOERROR)
            self._nodata_proof(qname)
            return
        encloser = self._closest_encloser(qname)
        wildcard = dns.name.Name((b"*", *encloser.labels))
        next_closer = dns.name.Name(qname.labels[-(len(encloser) + 1) :])
        if self.zone.get_node(wildcard) is not None:
            if self._add(response.answer, wildcard, qtype, qname) or (
                qtype != dns.rdatatype.CNAME and self._add(response.answer, wildcard, dns.rdatatype.CNAME, qname)
            ):
                self._proof([(next_closer if self.nsec3 is not None else qname, False)])
                return
            self._negative(dns.rcode.NOERROR)
            if self.nsec3 is not None:
                self._proof([(encloser, True), (next_closer, False), (wildcard, True)])
            else:
                self._proof([(qname, False), (wildcard, True)])
            return
        self._negative(dns.rcode.NXDOMAIN)
        if self.nsec3 is not None:
            self._proof([(encloser, True), (next_closer, False), (wildcard, False)])
        else:
            self._proof([(qname, False), (wildcard, False)])

    def _negative(self, rcode: dns.rcode.Rcode) -> None:
        self.response.set_rcode(rcode)
        self._add(self.response.authority, self.origin, dns.rdatatype.SOA)

    def _referral(self, cut: dns.name.Name) -> None:
        response = self.response
        ns = self.zone.get_rdataset(cut, dns.rdatatype.NS)
        assert ns is not None
        response.authority.append(dns.rrset.from_rdata_list(cut, ns.ttl, list(ns)))
        if not self._add(response.authority, cut, dns.rdatatype.DS):
            self._nodata_proof(cut)
        for rdata in ns:
            assert isinstance(rdata, NS)
            if rdata.target.is_subdomain(self.origin):
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    glue = self.zone.get_rdataset(rdata.target, rdtype)
                    if glue is not None:
                        response.additional.append(dns.rrset.from_rdata_list(rdata.target, glue.ttl, list(glue)))


class ReplayExchange:
    """The resolver's :class:`~ztdns.resolver.upstream.Exchange` over mock servers; every query is logged."""

    def __init__(self, servers: dict[str, MockServer], clock: FakeClock) -> None:
        self.servers = servers
        self.clock = clock
        self.log: list[tuple[str, dns.name.Name, int]] = []  # (address, name as asked, type)
        self.payloads: list[int] = []  # EDNS UDP payload size of each query (0: no EDNS)

    async def exchange(self, query: bytes, address: str, port: int, timeout: float, tcp: bool = False) -> bytes:
        message = dns.message.from_wire(query)
        self.log.append((address, message.question[0].name, message.question[0].rdtype))
        self.payloads.append(message.payload if message.edns >= 0 else 0)
        server = self.servers.get(address)
        answer = None if server is None or server.down else server.answer(message)
        if answer is None:
            self.clock.now += timeout
            raise TimeoutError
        await asyncio.sleep(0)
        return answer.to_wire()

    def asked(self, name: dns.name.Name, rdtype: int) -> bool:
        return any(asked == name and asked_type == rdtype for _, asked, asked_type in self.log)


# ----- scenarios --------------------------------------------------------------------------------------------------


@dataclass
class Step:
    kind: str  # QUERY, NOQUERY, STEP
    args: list[str]
    expect: list[str] = field(default_factory=list)
    answer: list[str] | None = None
    authority: list[str] | None = None
    line: int = 0


@dataclass
class Scenario:
    title: str
    path: str
    config: dict[str, object] = field(default_factory=dict)
    dnssec: dict[str, object] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # [cache] max_ttl / negative_max_ttl
    signed: dict[dns.name.Name, Denial] = field(default_factory=dict)
    anchors: list[dns.name.Name] | None = None
    dnskey_anchors: bool = False  # anchors as DNSKEY records instead of DS
    servers: dict[str, MockServer] = field(default_factory=dict)
    zone_texts: list[tuple[str, dns.name.Name, str]] = field(default_factory=list)  # (server, origin, text)
    steps: list[Step] = field(default_factory=list)


def _blocks(lines: list[str]) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line number, words of a directive, the lines of its block up to END when it has one)."""
    index = 0
    while index < len(lines):
        raw = lines[index].split(";", 1)[0].rstrip()
        index += 1
        if not raw.strip():
            continue
        if raw.startswith("SCENARIO"):
            words = raw.split()
        elif raw.startswith(("CONFIG", "DNSSEC")):
            words = raw.split(maxsplit=2)  # the value is JSON: kept as written
        else:
            words = shlex.split(raw)
        body: list[str] = []
        if words[0] in ("ZONE", "ENTRY", "ANSWER", "AUTHORITY"):
            while lines[index].strip() != "END":
                body.append(lines[index])
                index += 1
            index += 1
        yield index, words, body


def parse(text: str, path: str = "<text>") -> Scenario:
    scenario = Scenario("", path)
    server: MockServer | None = None
    for line, words, body in _blocks(text.splitlines()):
        directive, args = words[0], words[1:]
        if directive == "SCENARIO":
            scenario.title = " ".join(args)
        elif directive in ("CONFIG", "DNSSEC"):
            target = scenario.config if directive == "CONFIG" else scenario.dnssec
            target[args[0]] = json.loads(args[1])
        elif directive == "CACHE":
            scenario.cache[args[0]] = int(args[1])
        elif directive == "SIGNED":
            scenario.signed[dns.name.from_text(args[0])] = Denial(nsec3="nsec3" in args, opt_out="optout" in args)
        elif directive == "ANCHOR":
            scenario.anchors = [dns.name.from_text(name) for name in args if name not in ("none", "dnskey")]
            scenario.dnskey_anchors = "dnskey" in args
        elif directive == "SERVER":
            server = scenario.servers.setdefault(args[0], MockServer(args[0]))
            server.down = "down" in args
        elif directive == "ZONE":
            assert server is not None, f"{path}:{line}: ZONE outside SERVER"
            scenario.zone_texts.append((server.address, dns.name.from_text(args[0]), "\n".join(body)))
        elif directive == "ENTRY":
            assert server is not None, f"{path}:{line}: ENTRY outside SERVER"
            server.entries.append(_entry(args, body))
        elif directive in {"QUERY", "NOQUERY", "ASKED", "STEP"}:
            scenario.steps.append(Step(directive, args, line=line))
        elif directive == "EXPECT":
            scenario.steps[-1].expect = args
        elif directive == "ANSWER":
            scenario.steps[-1].answer = body
        elif directive == "AUTHORITY":
            scenario.steps[-1].authority = body
        else:
            raise ValueError(f"{path}:{line}: unknown directive {directive}")
    return scenario


def _entry(args: list[str], body: list[str]) -> Entry:
    entry = Entry(
        dns.name.from_text(args[0]),
        None if args[1] == "ANY" else dns.rdatatype.from_text(args[1]),
        subdomain="subdomain" in args[2:],
        drop="drop" in args[2:],
    )
    section = ""
    records: dict[str, list[str]] = {}
    for raw in body:
        words = raw.split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "FLAGS":
            for flag in words[1:]:
                entry.flags |= dns.flags.from_text(flag)
        elif words[0] == "RCODE":
            entry.rcode = dns.rcode.from_text(words[1])
        elif words[0] == "SECTION":
            section = words[1]
        else:
            records.setdefault(section, []).append(raw)
    for name, lines in records.items():
        entry.sections[name] = _rrsets(lines)
    return entry


def _rrsets(lines: list[str]) -> list[dns.rrset.RRset]:
    """Records in zone-file syntax (absolute owner names), one RRset per name and type. Read line by line, each
    with its owner as origin: dnspython refuses an SOA whose owner is not the origin."""
    merged: dict[tuple[dns.name.Name, int, int], dns.rrset.RRset] = {}
    for line in lines:
        text = line.split(";", 1)[0].strip()
        if not text:
            continue
        owner = dns.name.from_text(text.split()[0])
        for rrset in dns.zonefile.read_rrsets(text, default_ttl=3600, rdclass=None, origin=owner):
            key = (rrset.name, rrset.rdtype, rrset.covers)
            if key in merged:
                merged[key].union_update(rrset)
            else:
                merged[key] = rrset
    return list(merged.values())


# ----- building and running -----------------------------------------------------------------------------------


def build_zones(scenario: Scenario, now: float) -> dict[dns.name.Name, LabKey]:
    """Load every ZONE into its server, signing those marked SIGNED, children first so parents get their DS."""
    keys: dict[dns.name.Name, LabKey] = {
        origin: generate_key(Algorithm.ECDSAP256SHA256, True) for origin in scenario.signed
    }
    texts = sorted(scenario.zone_texts, key=lambda item: -len(item[1]))
    for address, origin, text in texts:
        zone = dns.zone.from_text(f"$TTL 3600\n{text}", origin=origin, relativize=False, check_origin=True)
        for child, key in keys.items():
            if (
                child != origin
                and child.is_subdomain(origin)
                and zone.get_rdataset(child, dns.rdatatype.NS) is not None
            ):
                ds = dns.dnssec.make_ds(child, key.dnskey, DSDigest.SHA256)
                node = zone.find_node(child)
                node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.DS, create=True).add(ds, 3600)
        if origin in scenario.signed:
            sign_zone(
                zone, [keys[origin]], inception=now - DAY, expiration=now + 14 * DAY, denial=scenario.signed[origin]
            )
        scenario.servers[address].zones[origin] = zone
    return keys


def hints_text(scenario: Scenario) -> str:
    """Root hints: every server that serves the root zone (or has scripted entries for it)."""
    roots = [address for address, server in scenario.servers.items() if dns.name.root in server.zones]
    if not roots:
        roots = [
            address
            for address, server in scenario.servers.items()
            if any(e.qname == dns.name.root for e in server.entries)
        ]
    assert roots, f"{scenario.path}: no server for the root zone"
    lines = [
        f". 3600000 IN NS root{index}.hint.\nroot{index}.hint. 3600000 IN {'AAAA' if ':' in address else 'A'} {address}"
        for index, address in enumerate(roots)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Replay:
    scenario: Scenario
    resolver: RecursiveResolver
    exchange: ReplayExchange
    clock: FakeClock

    async def ask(self, question: Question) -> Resolution:
        return await self.resolver.resolve(question)


def start(scenario: Scenario, tmp: Path, clock: FakeClock | None = None) -> Replay:
    clock = clock or FakeClock()
    keys = build_zones(scenario, clock.now)
    hints = tmp / "hints.zone"
    hints.write_text(hints_text(scenario))
    config = RecursionConfig(root_hints=str(hints), **scenario.config)
    dnssec = DnssecConfig(**scenario.dnssec)
    exchange = ReplayExchange(scenario.servers, clock)
    resolver = RecursiveResolver(config, exchange=exchange, clock=clock, **scenario.cache)
    anchors = scenario.anchors
    if anchors is None:
        anchors = [dns.name.root] if dns.name.root in scenario.signed else []
    if anchors and dnssec.validation:
        # As `ztdns serve` loads [dnssec] trust_anchors: files of DS records.
        if scenario.dnskey_anchors:
            lines = [f"{zone} IN DNSKEY {keys[zone].dnskey}" for zone in anchors]
        else:
            lines = [f"{zone} IN DS {dns.dnssec.make_ds(zone, keys[zone].dnskey, DSDigest.SHA256)}" for zone in anchors]
        anchor_file = tmp / "anchors.zone"
        anchor_file.write_text("\n".join(lines) + "\n")
        trust = TrustAnchors.load(files=[anchor_file], negative=dnssec.negative_trust_anchors)
        resolver.validator = Validator(
            resolver,
            trust,
            nsec3_max_iterations=dnssec.nsec3_max_iterations,
            clock=clock,
            algorithms=dnssec.algorithm_numbers(),
        )
    return Replay(scenario, resolver, exchange, clock)


def rrset_lines(rrsets: list[dns.rrset.RRset], with_rrsig: bool = False) -> set[str]:
    return {
        f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rdata.to_text().lower()}"
        for rrset in rrsets
        if with_rrsig or rrset.rdtype != dns.rdatatype.RRSIG
        for rdata in rrset
    }


def outcome(resolution: Resolution) -> tuple[str, bool, int | None, str]:
    response = resolution.response
    rcode = dns.rcode.to_text(response.rcode()) if response is not None else "SERVFAIL"
    secure = bool(response is not None and response.flags & dns.flags.AD)
    reason = resolution.reason
    return rcode, secure, int(reason.ede) if reason else None, reason.text if reason else ""


def run(scenario: Scenario, tmp: Path, on_step: Callable[[Step, Resolution], None] | None = None) -> None:
    replay = start(scenario, tmp)

    async def steps() -> None:
        for step in scenario.steps:
            where = f"{scenario.path}:{step.line}"
            if step.kind == "STEP":
                replay.clock.now += float(step.args[0])
            elif step.kind == "ASKED":
                name, rdtype = dns.name.from_text(step.args[0]), dns.rdatatype.from_text(step.args[1])
                count = sum(asked == name and asked_type == rdtype for _, asked, asked_type in replay.exchange.log)
                assert count == int(step.args[2]), f"{where}: {name} {step.args[1]} asked {count} times upstream"
            elif step.kind == "NOQUERY":
                name, rdtype = dns.name.from_text(step.args[0]), dns.rdatatype.from_text(step.args[1])
                assert not replay.exchange.asked(name, rdtype), f"{where}: {name} {step.args[1]} was asked upstream"
            else:
                flags = set(step.args[2:])
                question = Question(
                    dns.name.from_text(step.args[0]),
                    dns.rdatatype.from_text(step.args[1]),
                    1,
                    "DO" in flags,
                    "CD" in flags,
                )
                resolution = await replay.ask(question)
                _check(where, step, resolution)
                if on_step is not None:
                    on_step(step, resolution)

    asyncio.run(steps())


def _check(where: str, step: Step, resolution: Resolution) -> None:
    rcode, secure, ede, text = outcome(resolution)
    words = step.expect
    detail = f"{where}: {rcode} AD={secure} EDE={ede} {text!r}"
    if "rcode" in words:
        assert rcode == words[words.index("rcode") + 1], detail
    assert secure == ("AD" in words), detail
    if "ede" in words:
        assert ede == int(words[words.index("ede") + 1]), detail
    elif "noede" in words:
        assert ede is None, detail
    for index, word in enumerate(words):
        if word == "text":
            assert words[index + 1] in text, detail
    if "denials" in words:
        assert resolution.response is not None, detail
        denials = [r for r in resolution.response.authority if r.rdtype in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3)]
        assert len(denials) == int(words[words.index("denials") + 1]), f"{detail}: denials {denials}"
    if "rrsets" in words:
        assert resolution.response is not None, detail
        count = len(resolution.response.answer)
        assert count == int(words[words.index("rrsets") + 1]), f"{detail}: {count} RRsets in the answer"
    response = resolution.response
    if step.answer is not None:
        assert response is not None, detail
        assert rrset_lines(response.answer) == rrset_lines(_rrsets(step.answer)), f"{where}: answer {response.answer}"
    if step.authority is not None:
        assert response is not None, detail
        assert rrset_lines(response.authority) == rrset_lines(_rrsets(step.authority)), (
            f"{where}: authority {response.authority}"
        )


def scenario_files() -> list[Path]:
    return sorted((Path(__file__).parent / "scenarios").glob("*.rpl"))
