"""Record formats of query events: ``native`` (the query log's own fields), ``ecs`` (Elastic Common Schema) and
``ocsf`` (OCSF DNS Activity, class 4003), each with the privacy of its sink applied as the record is made.

Every format carries what an investigation needs: query name and type, rcode, EDE code and text, the CNAME chain,
every answer record, DNSSEC status, query ID, client address and port, response size, transport, certificate
identity, identity and policy, decision, detection verdict, and the instance name. Made on a sink's thread.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, TypeGuard

import dns.rdatatype
import dns.rrset

from ztdns.client import ClientInfo

try:
    from ztdns.observe import _lines
except ImportError:  # built without a C compiler: lines are made in Python
    _lines = None  # type: ignore[assignment]
from ztdns.observe.events import Answered, Item, QueryEvent, RawQuery, SecurityEvent
from ztdns.observe.privacy import Pseudonyms
from ztdns.observe.ring import Chunk

if TYPE_CHECKING:
    from typing_extensions import Buffer

ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.1.0"
OCSF_DNS_ACTIVITY = 4003
OCSF_NETWORK_ACTIVITY = 4
OCSF_RESPONSE = 2  # activity_id: the record describes an answered query


def line(event: QueryEvent, clock: Clock, instance: str, who: Who | None = None) -> str:
    """The native line, made without a dict per query; key order and spelling are the documented query log
    format (the members of the answer are made once per answer, replays share them). ``who``: the sink's
    privacy for the client fields (None: full)."""
    client = event.client
    if who is None:
        address, port, certificate = client.address, client.port, client.certificate_identity
    else:
        address, port, certificate = who.address(event), who.port(event), who.certificate(event)
    proven = "null" if certificate is None else json.dumps(certificate)
    query, response = event.query, event.response
    qid = "null" if len(query) < 2 else query[0] << 8 | query[1]
    return (
        f'{{"time": "{clock.format(event.time)}", "transport": "{client.transport}", '
        f'"client": {json.dumps(address)}, "certificate": {proven}, {members(event.answer)}, '
        f'"latency_ms": {event.latency * 1000:.3f}, "client_port": {port}, "query_id": {qid}, '
        f'"response_size": {0 if response is None else len(response)}, {details(event.answer, who)}, '
        f'"instance": {json.dumps(instance)}}}'
    )


# ZTDNS_NATIVE_LINES=python makes the native log's lines and dnstap's frames in Python even when the _lines
# extension is built.
NATIVE_LINES_IN_C = os.environ.get("ZTDNS_NATIVE_LINES", "c") != "python"

# The parts of native lines that are the same for every query of one client ([client, the members before the
# answer's, those between the latency and the query ID]) and of one answer ([answer, its members up to the
# latency's name, those after the response size with the line's end]). Keyed by the objects' ids: an entry keeps
# its object, so the id is not reused while the entry lives, and the entry is checked to be its object's. Two
# memos, not one per client and answer: dnsperf's 16 sockets asking 1,000 names would be 16,000 pairs.
_CLIENT_PARTS_MEMO = 65_536
_ANSWER_PARTS_MEMO = 16_384
MAX_SIZE = sys.maxsize  # a stop index past any batch's end


def native_extension() -> ModuleType | None:
    """The ``_lines`` extension, unless it is not built or ``ZTDNS_NATIVE_LINES=python`` turns it off."""
    return _lines if NATIVE_LINES_IN_C else None


def only_queries(batch: list[Item]) -> TypeGuard[list[RawQuery]]:
    """Whether ``batch`` holds the serving thread's query tuples only (the extension declines any other event)."""
    return all(type(item) is tuple for item in batch)


def made_into(make: Callable[[bytearray], int | None], out: bytearray) -> tuple[memoryview | None, bytearray]:
    """Run an extension's ``make(out)`` (it writes from ``out``'s start, growing it); the bytes made (None: the
    extension declined) and the buffer to keep for the next batch: a new one when a view of the old one is still
    held (it cannot grow then)."""
    try:
        size = make(out)
    except BufferError:
        out = bytearray()
        size = make(out)
    return (None if size is None else memoryview(out)[:size]), out


class ChunkParts:
    """The parts a formatter made for the objects of the chunk it is making records of (``Chunk.source``), kept
    while it goes through the chunk a write's worth of records at a time."""

    def __init__(self) -> None:
        self._chunk: Chunk | None = None
        self._parts: list[object] = []

    def source(self, chunk: Chunk) -> tuple[int, Buffer, Buffer, list[object], list[object]]:
        if chunk is not self._chunk:
            self._chunk, self._parts = chunk, chunk.new_parts()
        return chunk.source(self._parts)


class NativeLines:
    """Native lines (the same text as :func:`line` with full privacy) made straight from the serving thread's
    tuples, a batch at a time, from parts made once per client and per answer: per query only the latency, the
    query ID and the response size are formatted (the time stamp's date and time once per second), and the pieces
    of the whole batch are joined once — by the ``_lines`` extension, when it is built, into a buffer kept from
    batch to batch."""

    def __init__(self, clock: Clock, instance: str) -> None:
        self.clock = clock
        self.instance = json.dumps(instance)
        self._clients: dict[int, list[object]] = {}
        self._answers: dict[int, list[object]] = {}
        self._milli = -1
        self._stamp = ""
        self._out = bytearray()
        self._chunk_parts = ChunkParts()

    def _client_parts(self, client: ClientInfo) -> list[object]:
        if len(self._clients) >= _CLIENT_PARTS_MEMO:
            self._clients.clear()
        certificate = client.certificate_identity
        proven = "null" if certificate is None else json.dumps(certificate)
        head = f'"transport": "{client.transport}", "client": {json.dumps(client.address)}, "certificate": {proven}, '
        parts: list[object] = [client, head, f', "client_port": {client.port}, "query_id": ']
        self._clients[id(client)] = parts
        return parts

    def _answer_parts(self, answer: Answered) -> list[object]:
        if len(self._answers) >= _ANSWER_PARTS_MEMO:
            self._answers.clear()
        tail = f', {details(answer)}, "instance": {self.instance}}}\n'
        parts: list[object] = [answer, f'{members(answer)}, "latency_ms": ', tail]
        self._answers[id(answer)] = parts
        return parts

    def _stamp_of(self, when: float) -> str:
        """A line's start up to its first member, for ``when``'s millisecond."""
        return f'{{"time": "{self.clock.format(when)}", '

    def _second_of(self, second: int) -> str:
        """A line's start up to its time stamp's milliseconds, for ``second`` (the extension adds the rest)."""
        return f'{{"time": "{self.clock.second(second)}'

    def data(self, batch: list[Item] | Chunk, start: int = 0, stop: int = MAX_SIZE) -> memoryview | None:
        """:meth:`text` of records ``start`` to ``stop`` of a batch (a list of items, or a chunk of the C ring)
        encoded; made by the ``_lines`` extension when it is built (the same bytes), in a buffer reused by the next
        call (release the view before it); None when that part holds other events."""
        extension = native_extension()
        if extension is not None:
            source = self._chunk_parts.source(batch) if isinstance(batch, Chunk) else batch
            memos = (self._clients, self._answers, self._client_parts, self._answer_parts, self._second_of)
            made, self._out = made_into(lambda out: extension.native(source, start, stop, *memos, out), self._out)
            if made is not None:
                return made
        part = batch.items(start, stop) if isinstance(batch, Chunk) else batch[start:stop]
        if not only_queries(part):
            return None
        return memoryview(self.text(part).encode())

    def text(self, batch: list[RawQuery]) -> str:
        """The lines of ``batch``, each ending in a newline."""
        clients, answers = self._clients, self._answers
        pieces: list[str] = []
        add = pieces.extend
        for when, client, answer, latency, query, response in batch:
            by_client = clients.get(id(client))
            if by_client is None or by_client[0] is not client:
                by_client = self._client_parts(client)
            by_answer = answers.get(id(answer))
            if by_answer is None or by_answer[0] is not answer:
                by_answer = self._answer_parts(answer)
            milli = int(when * 1000)
            if milli != self._milli:
                self._milli = milli
                self._stamp = self._stamp_of(when)
            qid = str(query[0] << 8 | query[1]) if len(query) >= 2 else "null"
            size = 0 if response is None else len(response)
            add(
                (
                    self._stamp,
                    by_client[1],
                    by_answer[1],
                    f"{latency * 1000:.3f}",
                    by_client[2],
                    qid,
                    f', "response_size": {size}',
                    by_answer[2],
                )  # type: ignore[arg-type]
            )
        return "".join(pieces)

    def lines(self, batch: list[RawQuery]) -> list[str]:
        """The lines of ``batch`` one by one, without their newlines (JSON text holds none of its own)."""
        return self.text(batch).split("\n")[:-1]


def members(answer: Answered) -> str:
    """The answer's JSON members up to ``upstream``, made once per answer (replays share it)."""
    made = answer.json
    if made is None:
        made = answer.json = json.dumps(
            {
                "identity": answer.identity,
                "qname": answer.qname,
                "qtype": answer.qtype,
                "decision": answer.decision,
                "kind": answer.kind,
                "policy": answer.policy,
                "rule": answer.rule,
                "rcode": answer.rcode,
                "ede": answer.ede,
                "answers": resolved(answer),
                "cache_hit": answer.cache_hit,
                "upstream": answer.upstream,
            }
        )[1:-1]
    return made


def details(answer: Answered, who: Who | None = None) -> str:
    """The answer's further members (EDE text, records, CNAME chain, DNSSEC, detection), made once per answer
    with full privacy (``who`` None); with pseudonyms, the detection verdict is reduced to its detector."""
    if who is not None:
        return _details(answer, who.detection(answer))
    made = answer.json_details
    if made is None:
        made = answer.json_details = _details(answer, answer.detection)
    return made


def _details(answer: Answered, detection: str | None) -> str:
    members = {
        "ede_text": answer.ede_text,
        "records": records(answer),
        "cname_chain": cname_chain(answer),
        "dnssec": answer.dnssec,
        "detection": detection,
    }
    return json.dumps(members)[1:-1]


class Clock:
    """ISO 8601 timestamps with milliseconds, re-formatting the seconds part once per second and the whole stamp
    once per millisecond (a batch of a busy second holds dozens of queries per millisecond)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._milli = -1
        self._stamp = ""

    def format(self, now: float) -> str:
        milli = int(now * 1000)
        if milli == self._milli:
            return self._stamp
        second, fraction = divmod(milli, 1000)
        self._milli = milli
        self._stamp = f"{self.second(second)}.{fraction:03d}Z"
        return self._stamp

    def second(self, second: int) -> str:
        """The stamp of ``second`` (since the epoch) up to its milliseconds."""
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix


def records(answer: Answered) -> list[dict[str, object]]:
    """Every record of the answer section as name, type, class, TTL and data (made once per answer)."""
    return [
        {
            "name": rrset.name.to_text().lower(),
            "type": dns.rdatatype.to_text(rrset.rdtype),
            "class": "IN",
            "ttl": rrset.ttl,
            "data": rdata.to_text(),
        }
        for rrset in answer.records
        for rdata in rrset
    ]


def cname_chain(answer: Answered) -> list[str]:
    return [
        rdata.to_text().lower() for rrset in answer.records if rrset.rdtype == dns.rdatatype.CNAME for rdata in rrset
    ]


def resolved(answer: Answered) -> list[str]:
    return [rdata.to_text() for rdata in answer.answers]


def _rrsets_rcode(event: QueryEvent) -> tuple[int | None, int | None, int]:
    """(query ID, rcode number, response size) from the bytes as received and sent."""
    query, response = event.query, event.response
    qid = int.from_bytes(query[:2], "big") if len(query) >= 2 else None
    rcode = response[3] & 0xF if response is not None and len(response) >= 4 else None
    return qid, rcode, 0 if response is None else len(response)


class Who:
    """The client fields of a record, with the sink's privacy applied (None: full)."""

    def __init__(self, pseudonyms: Pseudonyms | None) -> None:
        self.pseudonyms = pseudonyms

    def address(self, event: QueryEvent) -> str:
        address = event.client.address
        return address if self.pseudonyms is None else self.pseudonyms.address(address)

    def port(self, event: QueryEvent) -> int:
        port = event.client.port
        return port if self.pseudonyms is None else self.pseudonyms.port(port)

    def certificate(self, event: QueryEvent) -> str | None:
        certificate = event.client.certificate_identity
        if certificate is None or self.pseudonyms is None:
            return certificate
        return self.pseudonyms.text(certificate)

    def detection(self, answer: Answered) -> str | None:
        """The verdict a query met; with pseudonyms only its detector (``detect=dga``): a verdict's text names the
        client it is about (an address prefix, a certificate identity)."""
        text = answer.detection
        if text is None or self.pseudonyms is None:
            return text
        return text.split(" ", 1)[0]

    def security(self, fields: dict[str, object]) -> dict[str, object]:
        """A security event's members; with pseudonyms its key is keyed-hashed and its text (which names the key)
        left out."""
        if self.pseudonyms is None:
            return fields
        hidden = {name: value for name, value in fields.items() if name not in ("key", "text")}
        return {**hidden, "key": self.pseudonyms.text(str(fields.get("key", "")))}


def ecs(event: QueryEvent, who: Who, instance: str, clock: Clock) -> dict[str, object]:
    """Elastic Common Schema: ``dns.*``, ``source.*``, ``network.*``, ``tls.client.*``, ``observer.*``,
    ``event.*``, ``rule.*``; what ECS has no field for is under ``ztdns.*`` (custom fields stay in a namespace)."""
    answer = event.answer
    qid, _, size = _rrsets_rcode(event)
    transport = str(event.client.transport)
    address = who.address(event)
    record: dict[str, object] = {
        "@timestamp": clock.format(event.time),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["protocol", "denied" if answer.decision in ("deny", "refuse") else "allowed"],
            "action": answer.decision,
            "outcome": "success" if answer.rcode in ("NOERROR", "NXDOMAIN") else "failure",
            "duration": int(event.latency * 1e9),
            "dataset": "ztdns.queries",
        },
        "dns": {
            "type": "answer",
            "id": None if qid is None else str(qid),
            "op_code": "QUERY",
            "response_code": answer.rcode,
            "question": {"name": (answer.qname or "").rstrip(".") or None, "type": answer.qtype, "class": "IN"},
            "answers": records(answer),
            "resolved_ip": resolved(answer),
        },
        "source": {"ip": address, "address": address, "port": who.port(event)},
        "network": {
            "protocol": "dns",
            "transport": "udp" if transport in ("udp", "doq") else "tcp",
            "application": transport,
        },
        "observer": {"name": instance, "product": "ztdns", "vendor": "ztdns", "type": "dns"},
        "rule": {"name": answer.rule, "ruleset": answer.policy},
        "ztdns": _extra(answer, size, who),
    }
    certificate = who.certificate(event)
    if certificate is not None:
        record["tls"] = {"client": {"x509": {"alternative_names": [certificate]}}}
    return record


def ocsf(event: QueryEvent, who: Who, instance: str, clock: Clock) -> dict[str, object]:
    """OCSF DNS Activity (class 4003, category 4 Network Activity), activity 2 (Response); what the class has no
    attribute for is in ``unmapped``."""
    answer = event.answer
    qid, rcode, size = _rrsets_rcode(event)
    millis = int(event.time * 1000)
    transport = str(event.client.transport)
    record: dict[str, object] = {
        "class_uid": OCSF_DNS_ACTIVITY,
        "class_name": "DNS Activity",
        "category_uid": OCSF_NETWORK_ACTIVITY,
        "category_name": "Network Activity",
        "activity_id": OCSF_RESPONSE,
        "activity_name": "Response",
        "type_uid": OCSF_DNS_ACTIVITY * 100 + OCSF_RESPONSE,
        "severity_id": 1,
        "status_id": 1 if answer.rcode in ("NOERROR", "NXDOMAIN") else 2,
        "time": millis,
        "duration": int(event.latency * 1000),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "ztdns", "vendor_name": "ztdns"},
            "logged_time": millis,
        },
        "query": {
            "hostname": (answer.qname or "").rstrip(".") or None,
            "type": answer.qtype,
            "class": "IN",
            "packet_uid": qid,
        },
        "answers": [
            {"rdata": item["data"], "type": item["type"], "class": "IN", "ttl": item["ttl"], "packet_uid": qid}
            for item in records(answer)
        ],
        "rcode": answer.rcode,
        "rcode_id": 99 if rcode is None else rcode,
        "src_endpoint": {"ip": who.address(event), "port": who.port(event)},
        "dst_endpoint": {"hostname": instance},
        "connection_info": {"protocol_name": "udp" if transport in ("udp", "doq") else "tcp", "direction_id": 1},
        "observables": [],
        "unmapped": {**_extra(answer, size, who), "transport": transport, "certificate": who.certificate(event)},
    }
    return record


def _extra(answer: Answered, size: int, who: Who) -> dict[str, object]:
    return {
        "identity": answer.identity,
        "policy": answer.policy,
        "kind": answer.kind,
        "ede": {"code": answer.ede, "text": answer.ede_text},
        "cname_chain": cname_chain(answer),
        "dnssec": answer.dnssec,
        "detection": who.detection(answer),
        "cache_hit": answer.cache_hit,
        "upstream": answer.upstream,
        "response_size": size,
    }


# The SIEM formats as dicts; native lines are made by :func:`line`.
FORMATS: dict[str, Callable[[QueryEvent, Who, str, Clock], dict[str, object]]] = {
    "ecs": ecs,
    "ocsf": ocsf,
}


class Formatter:
    """Turns events into text records for one sink (format and privacy fixed): JSON objects, one per event."""

    def __init__(self, format_name: str, pseudonyms: Pseudonyms | None, instance: str) -> None:
        self.format_name = format_name
        self.make = FORMATS.get(format_name)
        self.who = Who(pseudonyms)
        self.line_who = None if pseudonyms is None else self.who
        self.instance = instance
        self.clock = Clock()
        # Native lines with full privacy can be made from the serving thread's tuples (QueueSink.raw).
        self.native = NativeLines(self.clock, instance) if format_name == "native" and pseudonyms is None else None

    def text(self, event: QueryEvent | SecurityEvent) -> str:
        if isinstance(event, SecurityEvent):
            fields = self.who.security(event.fields)
            if self.format_name == "native":
                return json.dumps({"time": self.clock.format(event.time), "event": event.kind, **fields})
            return json.dumps(self.security(event, fields))
        if self.make is None:
            return line(event, self.clock, self.instance, self.line_who)
        return json.dumps(self.make(event, self.who, self.instance, self.clock))

    def aggregate(self, record: dict[str, object]) -> str:
        """A window's counts (privacy ``aggregate``): the same members whatever the format."""
        return json.dumps(
            {"time": self.clock.format(time.time()), "event": "aggregate", **record, "instance": self.instance}
        )

    def security(self, event: SecurityEvent, fields: dict[str, object]) -> dict[str, object]:
        """A security event (a detection verdict) in the sink's format."""
        stamp = self.clock.format(event.time)
        if self.format_name == "ecs":
            return {
                "@timestamp": stamp,
                "ecs": {"version": ECS_VERSION},
                "event": {"kind": "alert", "category": ["network", "intrusion_detection"], "dataset": "ztdns.detect"},
                "observer": {"name": self.instance, "product": "ztdns", "vendor": "ztdns", "type": "dns"},
                "message": fields.get("text"),
                "ztdns": {"event": event.kind, **fields},
            }
        millis = int(event.time * 1000)
        return {  # OCSF Detection Finding (class 2004)
            "class_uid": 2004,
            "category_uid": 2,
            "activity_id": 1,
            "type_uid": 200401,
            "severity_id": 3,
            "time": millis,
            "metadata": {"version": OCSF_VERSION, "product": {"name": "ztdns", "vendor_name": "ztdns"}},
            "finding_info": {"title": f"{event.kind} {fields.get('detector', '')}".strip(), "uid": str(millis)},
            "message": fields.get("text"),
            "unmapped": {"event": event.kind, **fields},
        }


def stamp(now: float) -> str:
    """RFC 3339 UTC time with microseconds (syslog's TIMESTAMP)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
