"""Sinks, formats and privacy modes, in-process: ipcrypt against the draft's vectors, key rotation, aggregates that
never name a name below k clients, retention, a stalled sink that drops instead of slowing answers, and the ECS and
OCSF records of real answers (through ``Frontend``) checked against their published field sets."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric

from ztdns.client import ClientInfo, Transport
from ztdns.config import ConfigError, parse_config
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution
from ztdns.observe.events import Answered, Event, QueryEvent
from ztdns.observe.metrics import Metrics
from ztdns.observe.privacy import Aggregate, IpcryptDeterministic, IpcryptNdx, Pseudonyms, address_block
from ztdns.observe.querylog import expire
from ztdns.observe.sinks import QueueSink

# draft-denis-ipcrypt, test vectors (ipcrypt-deterministic, ipcrypt-ndx).
DETERMINISTIC = [
    ("0123456789abcdeffedcba9876543210", "0.0.0.0", "bde9:6789:d353:824c:d7c6:f58a:6bd2:26eb"),
    ("1032547698badcfeefcdab8967452301", "255.255.255.255", "aed2:92f6:ea23:58c3:48fd:8b8:74e8:45d8"),
    ("2b7e151628aed2a6abf7158809cf4f3c", "192.0.2.1", "1dbd:c1b9:fff1:7586:7d0b:67b4:e76e:4777"),
]
NDX = [
    (
        "0123456789abcdeffedcba98765432101032547698badcfeefcdab8967452301",
        "0.0.0.0",
        "21bd1834bc088cd2b4ecbe30b70898d7",
        "21bd1834bc088cd2b4ecbe30b70898d782db0d4125fdace61db35b8339f20ee5",
    ),
    (
        "1032547698badcfeefcdab89674523010123456789abcdeffedcba9876543210",
        "192.0.2.1",
        "08e0c289bff23b7cb4ecbe30b70898d7",
        "08e0c289bff23b7cb4ecbe30b70898d7766a533392a69edf1ad0d3ce362ba98a",
    ),
    (
        "2b7e151628aed2a6abf7158809cf4f3c3c4fcf098815f7aba6d2ae2816157e2b",
        "192.0.2.1",
        "21bd1834bc088cd2b4ecbe30b70898d7",
        "21bd1834bc088cd2b4ecbe30b70898d7259e85ebaa000667d2437ac7e2208d71",
    ),
]


@pytest.mark.parametrize(("key", "address", "expected"), DETERMINISTIC)
def test_ipcrypt_deterministic_matches_the_draft(key: str, address: str, expected: str) -> None:
    assert IpcryptDeterministic(bytes.fromhex(key)).encrypt(address) == expected


@pytest.mark.parametrize(("key", "address", "tweak", "expected"), NDX)
def test_ipcrypt_ndx_matches_the_draft(key: str, address: str, tweak: str, expected: str) -> None:
    assert IpcryptNdx(bytes.fromhex(key)).encrypt_with(bytes.fromhex(tweak), address).hex() == expected


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=32, max_size=32).filter(lambda key: key[:16] != key[16:]),
    st.binary(min_size=16, max_size=16),
    st.sampled_from(["0.0.0.0", "192.0.2.1", "2001:db8::7", "fe80::1%eth0", "::ffff:10.0.0.1"]),
)
def test_ipcrypt_ndx_is_aes_xts_of_one_block(key: bytes, tweak: bytes, address: str) -> None:
    """The two-block-encryptions form of XTS against ``cryptography``'s AES-XTS (what it replaces)."""
    xts = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
    assert IpcryptNdx(key).encrypt_with(tweak, address) == tweak + xts.update(address_block(address))


def test_ndx_tweaks_are_fresh_for_every_record() -> None:
    ndx = IpcryptNdx(bytes(range(32)))
    made = {ndx.encrypt("192.0.2.1") for _ in range(1000)}  # past one pool of random bytes
    assert len(made) == 1000
    assert all(len(bytes.fromhex(text)) == 32 for text in made)


def test_pseudonyms_are_stable_within_a_key_and_unlinkable_after_rotation() -> None:
    now = [1000.0]
    pseudonyms = Pseudonyms("deterministic", 3600, clock=lambda: now[0])
    first = pseudonyms.address("192.0.2.7")
    assert first != "192.0.2.7" and ipaddress.ip_address(first)
    assert pseudonyms.address("192.0.2.7") == first
    port, certificate = pseudonyms.port(40000), pseudonyms.text("spiffe://corp/ns/prod/web")
    assert certificate != "spiffe://corp/ns/prod/web" and len(certificate) == 32
    now[0] += 3601
    assert pseudonyms.address("192.0.2.7") != first
    assert pseudonyms.text("spiffe://corp/ns/prod/web") != certificate
    assert pseudonyms.rotations == 2
    assert (pseudonyms.port(40000), pseudonyms.port(40000)) == (pseudonyms.port(40000),) * 2
    del port
    ndx = Pseudonyms("ndx", 3600)
    assert ndx.address("192.0.2.7") != ndx.address("192.0.2.7")  # a new tweak for every record
    assert len(bytes.fromhex(ndx.address("2001:db8::1"))) == 32


def _event(qname: str, address: str, rcode: str = "NOERROR") -> QueryEvent:
    answer = Answered("resolved", rcode, "lab", qname, "A", "allow")
    return QueryEvent(time.time(), ClientInfo(Transport.UDP, address, 5000), answer, 0.001, b"\0\1", None)


def test_aggregate_names_a_name_only_when_k_distinct_clients_asked() -> None:
    aggregate = Aggregate(k=3, window=60)
    # One client asks for its secret many times; two clients ask for shared; three for popular.
    events = [_event("secret.example.", "10.0.0.1") for _ in range(50)]
    events += [_event("shared.example.", f"10.0.0.{n}") for n in (1, 2) for _ in range(10)]
    events += [_event("popular.example.", f"10.0.0.{n}") for n in (1, 2, 3)]
    aggregate.add(events)
    record = aggregate.close(time.time())
    text = json.dumps(record)
    assert "secret" not in text and "shared" not in text
    assert record["names"] == {"popular.example.": 3}
    assert record["queries"] == 73 and record["names_below_k"] == 2
    assert record["rcodes"] == {"NOERROR": 73} and record["decisions"] == {"allow": 73}
    assert aggregate.close(time.time())["queries"] == 0  # a new window starts empty


def test_retention_deletes_rotated_files_older_than_the_age(tmp_path: Path) -> None:
    output = tmp_path / "query.log"
    for name in ("query.log", "query.log.1", "query.log.2.gz", "other.log"):
        (tmp_path / name).write_text("x")
    old = time.time() - 7200
    for name in ("query.log", "query.log.2.gz", "other.log"):
        os.utime(tmp_path / name, (old, old))
    deleted = expire(output, 3600, time.time())
    assert deleted == [tmp_path / "query.log.2.gz"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.log", "query.log", "query.log.1"]


class StalledSink(QueueSink):
    """A sink whose output never returns (a collector that stopped reading)."""

    def __init__(self, limit: int) -> None:
        super().__init__("stalled", limit, interval=0.001)
        self.release = threading.Event()
        self.start()

    def emit(self, batch: list[Event], now: float) -> None:
        self.release.wait()
        self.written += len(batch)


def test_a_stalled_sink_drops_and_counts_without_slowing_put() -> None:
    sink = StalledSink(limit=1000)
    event = _event("www.example.", "10.0.0.1")
    try:
        started = time.perf_counter()
        for _ in range(100_000):
            sink.put(event)
        per_put = (time.perf_counter() - started) / 100_000
        assert sink.dropped >= 100_000 - 2 * 1000  # at most the queue and one batch taken by the stalled thread
        # A deque append (~0.1 µs): no waiting on the output, which would take a millisecond or for ever per put.
        assert per_put < 5e-5, per_put
    finally:
        sink.release.set()
        sink.close()


class Upstream:
    async def resolve(self, question: Question) -> Resolution:
        name = question.name.to_text()
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA
        response.answer = [
            dns.rrset.from_text(name, 300, "IN", "CNAME", "edge.cdn.test."),
            dns.rrset.from_text("edge.cdn.test.", 300, "IN", "A", "192.0.2.10", "192.0.2.11"),
        ]
        return Resolution(response)

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


CONFIG = """
[identities.lab]
networks = ["127.0.0.0/8"]
policies = ["all"]
[policies.all]
allow = ["**"]
deny = ["blocked.test"]
[log]
instance = "resolver-1"
[log.query_log]
output = "off"
[[log.sinks]]
type = "json"
output = "{output}"
format = "{format}"
privacy = "{privacy}"
"""

# ECS 8.x field reference (https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html): the fields we
# write. Anything else must sit under the custom ``ztdns`` namespace.
ECS_FIELDS = {
    "@timestamp",
    "ecs.version",
    "event.kind",
    "event.category",
    "event.type",
    "event.action",
    "event.outcome",
    "event.duration",
    "event.dataset",
    "dns.type",
    "dns.id",
    "dns.op_code",
    "dns.response_code",
    "dns.question.name",
    "dns.question.type",
    "dns.question.class",
    "dns.answers",
    "dns.answers.name",
    "dns.answers.type",
    "dns.answers.class",
    "dns.answers.ttl",
    "dns.answers.data",
    "dns.resolved_ip",
    "source.ip",
    "source.address",
    "source.port",
    "network.protocol",
    "network.transport",
    "network.application",
    "observer.name",
    "observer.product",
    "observer.vendor",
    "observer.type",
    "rule.name",
    "rule.ruleset",
    "tls.client.x509.alternative_names",
}
ECS_ALLOWED = {
    "event.kind": {"alert", "enrichment", "event", "metric", "state", "pipeline_error", "signal"},
    "event.category": {"network", "intrusion_detection"},
    "event.type": {"protocol", "allowed", "denied", "connection", "info"},
    "event.outcome": {"success", "failure", "unknown"},
}
# OCSF 1.1.0 DNS Activity (class 4003): its attributes, and the ones the class requires.
OCSF_ATTRIBUTES = {
    "activity_id",
    "activity_name",
    "answers",
    "category_name",
    "category_uid",
    "class_name",
    "class_uid",
    "connection_info",
    "dst_endpoint",
    "duration",
    "metadata",
    "observables",
    "query",
    "rcode",
    "rcode_id",
    "severity_id",
    "src_endpoint",
    "status_id",
    "time",
    "type_uid",
    "unmapped",
}
OCSF_REQUIRED = {"activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid"}


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            flat[path] = value
            for item in value:
                flat.update(_flatten(item, path + "."))
        else:
            flat[path] = value
    return flat


def _records(tmp_path: Path, format_name: str, privacy: str) -> list[dict[str, Any]]:
    output = tmp_path / f"{format_name}-{privacy}.log"
    config = parse_config(CONFIG.format(output=output, format=format_name, privacy=privacy), "test", tmp_path)
    client = ClientInfo(Transport.TCP, "127.0.0.9", 40123, certificate_identity="spiffe://corp/ns/prod/web")

    async def run() -> None:
        frontend = Frontend(config, resolver_factory=lambda _: Upstream())
        frontend.bind_loop(asyncio.get_running_loop())
        wire = dns.message.make_query("www.example.com", "A", use_edns=0, id=4242).to_wire()
        assert await frontend.handle(wire, client) is not None
        await asyncio.sleep(0)  # the replay is stored
        assert frontend.fast(wire, client) is not None
        await frontend.handle(dns.message.make_query("blocked.test", "A", id=7).to_wire(), client)
        await frontend.close()

    asyncio.run(run())
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_native_records_carry_what_investigations_need(tmp_path: Path) -> None:
    first, replayed, blocked = _records(tmp_path, "native", "full")
    assert first["client"] == "127.0.0.9" and first["client_port"] == 40123
    assert first["certificate"] == "spiffe://corp/ns/prod/web" and first["transport"] == "tcp"
    assert first["query_id"] == 4242 and first["response_size"] > 0
    assert first["cname_chain"] == ["edge.cdn.test."]
    assert [r["data"] for r in first["records"]] == ["edge.cdn.test.", "192.0.2.10", "192.0.2.11"]
    assert first["dnssec"] == "insecure" and first["instance"] == "resolver-1"  # validating, no AD
    assert replayed["kind"] == "cached" and replayed["records"] == first["records"]
    assert blocked["decision"] == "deny" and blocked["ede"] == 15 and "blocked.test" in str(blocked["ede_text"])


def test_ecs_records_use_ecs_fields_and_pseudonyms(tmp_path: Path) -> None:
    records = _records(tmp_path, "ecs", "pseudonymised")
    assert len(records) == 3
    for record in records:
        flat = _flatten(record)
        unknown = {key for key in flat if key not in ECS_FIELDS and not key.startswith("ztdns.")}
        assert unknown == set(), unknown
        for key, allowed in ECS_ALLOWED.items():
            values = flat[key] if isinstance(flat[key], list) else [flat[key]]
            assert set(values) <= allowed, (key, values)
        assert "127.0.0.9" not in json.dumps(record) and "spiffe" not in json.dumps(record)
        assert ipaddress.ip_address(str(flat["source.ip"]))
        assert flat["source.port"] != 40123
    first = _flatten(records[0])
    assert first["dns.question.name"] == "www.example.com" and first["dns.response_code"] == "NOERROR"
    assert first["dns.resolved_ip"] == ["192.0.2.10", "192.0.2.11"] and first["dns.id"] == "4242"
    assert first["ztdns.cname_chain"] == ["edge.cdn.test."] and first["observer.name"] == "resolver-1"
    assert records[0]["source"] == records[1]["source"]  # deterministic: one pseudonym per client per key
    assert _flatten(records[2])["ztdns.ede.code"] == 15


def test_ocsf_records_are_dns_activity(tmp_path: Path) -> None:
    records = _records(tmp_path, "ocsf", "full")
    for record in records:
        assert set(record) <= OCSF_ATTRIBUTES and set(record) >= OCSF_REQUIRED
        assert (record["class_uid"], record["category_uid"], record["type_uid"]) == (4003, 4, 400302)
    first = records[0]
    assert first["query"] == {"hostname": "www.example.com", "type": "A", "class": "IN", "packet_uid": 4242}
    assert first["rcode_id"] == 0 and first["src_endpoint"] == {"ip": "127.0.0.9", "port": 40123}
    assert [answer["rdata"] for answer in first["answers"]] == ["edge.cdn.test.", "192.0.2.10", "192.0.2.11"]
    assert records[2]["rcode_id"] == 3 and records[2]["unmapped"]["ede"]["code"] == 15


def test_aggregate_sink_writes_no_per_query_record(tmp_path: Path) -> None:
    # k = 5 (the default) and one client: the window's record, written when the sink closes, names nothing.
    [record] = _records(tmp_path, "native", "aggregate")
    assert record["event"] == "aggregate" and record["queries"] == 3 and record["names"] == {}
    assert record["names_below_k"] == 2 and "example" not in json.dumps(record)


def test_sink_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="dnstap sink needs one of"):
        parse_config('[[log.sinks]]\ntype = "dnstap"\n')
    with pytest.raises(ConfigError, match="aggregate"):
        parse_config('[[log.sinks]]\ntype = "dnstap"\nsocket = "x"\nprivacy = "aggregate"\n')
    with pytest.raises(ConfigError, match="syslog sink needs 'address'"):
        parse_config('[[log.sinks]]\ntype = "syslog"\n')


def _same(metrics: Metrics) -> Metrics:
    return metrics


def test_decisions_are_counted_by_identity_and_policy_with_or_without_sinks(tmp_path: Path) -> None:
    from ztdns.observe.metrics import MetricsCollector

    for sinks in ("", f'[[log.sinks]]\ntype = "json"\noutput = "{tmp_path / "q.log"}"\n'):
        text = CONFIG.split("[log]", maxsplit=1)[0] + '[log.query_log]\noutput = "off"\n' + sinks
        config = parse_config(text, "test", tmp_path)
        client = ClientInfo(Transport.UDP, "127.0.0.9", 40123)

        async def run(config: Any = config, client: ClientInfo = client) -> Frontend:
            frontend = Frontend(config, resolver_factory=lambda _: Upstream())
            frontend.bind_loop(asyncio.get_running_loop())
            wire = dns.message.make_query("www.example.com", "A").to_wire()
            await frontend.handle(wire, client)
            await asyncio.sleep(0)
            assert frontend.fast(wire, client) is not None
            await frontend.handle(dns.message.make_query("blocked.test", "A").to_wire(), client)
            await frontend.handle(
                dns.message.make_query("x.test", "A").to_wire(), ClientInfo(Transport.UDP, "10.9.9.9", 1)
            )
            await frontend.close()
            return frontend

        frontend = asyncio.run(run())
        families = {
            family.name: family for family in MetricsCollector(functools.partial(_same, frontend.metrics)).collect()
        }
        samples = {tuple(s.labels.values()): s.value for s in families["ztdns_decisions"].samples}
        assert samples == {("lab", "all", "allow"): 2, ("lab", "all", "deny"): 1, ("", "", "refuse"): 1}, sinks
        results = {tuple(s.labels.values()): s.value for s in families["ztdns_dnssec_answers"].samples}
        assert results[("insecure", "")] >= 3


@pytest.mark.slow  # the stalled writes time out (2 s each) before the sink gives up
def test_a_dnstap_collector_that_stops_reading_costs_answers_nothing(tmp_path: Path) -> None:
    """Replays through the Frontend while the collector accepted the stream and then stopped reading: every query
    is answered, the sink's queue fills and the rest is dropped and counted."""
    import socket
    import struct

    path = tmp_path / "stalled.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []

    def accept_then_stall() -> None:
        connection, _ = server.accept()
        held.append(connection)
        connection.recv(4096)  # READY
        body = struct.pack("!III", 1, 1, 22) + b"protobuf:dnstap.Dnstap"
        connection.sendall(struct.pack("!II", 0, len(body)) + body)  # ACCEPT, then never another read

    threading.Thread(target=accept_then_stall, daemon=True).start()
    text = CONFIG.split("[log]", maxsplit=1)[0] + '[log.query_log]\noutput = "off"\n[[log.sinks]]\ntype = "dnstap"\n'
    text += f'socket = "{path}"\nqueue = 1000\n'
    config = parse_config(text, "test", tmp_path)
    client = ClientInfo(Transport.UDP, "127.0.0.9", 40123)

    async def run() -> tuple[int, int]:
        frontend = Frontend(config, resolver_factory=lambda _: Upstream())
        frontend.bind_loop(asyncio.get_running_loop())
        wire = dns.message.make_query("www.example.com", "A").to_wire()
        await frontend.handle(wire, client)
        await asyncio.sleep(0)
        answered = 0
        for _ in range(20):  # rounds with pauses, so the feed's and sink's threads fill the socket and the queue
            for _ in range(10_000):
                answered += frontend.fast(wire, client) is not None
            await asyncio.sleep(0.05)
        [sink] = frontend.outputs.sinks
        feed = frontend.outputs.feed
        assert feed is not None
        dropped = sink.dropped + feed.dropped  # by the sink's queue, or by the feed before any sink saw them
        await asyncio.get_running_loop().run_in_executor(None, frontend.outputs.close)
        return answered, dropped

    answered, dropped = asyncio.run(run())
    server.close()
    for connection in held:
        connection.close()
    assert answered == 200_000
    assert dropped > 100_000  # the socket buffer and a queue of 1000 hold the rest


def test_security_events_follow_the_sinks_privacy(tmp_path: Path) -> None:
    from ztdns.observe.events import SecurityEvent
    from ztdns.observe.formats import Formatter
    from ztdns.observe.querylog import QueryLog

    fields: dict[str, object] = {
        "detector": "dga",
        "key": "client=192.0.2.7",
        "text": "detect=dga client=192.0.2.7 rate=9q/s",
    }
    outputs = {}
    for privacy in ("full", "pseudonymised", "aggregate"):
        path = tmp_path / f"{privacy}.log"
        pseudonyms = Pseudonyms("deterministic", 3600) if privacy == "pseudonymised" else None
        aggregate = Aggregate(5, 3600) if privacy == "aggregate" else None
        sink = QueryLog(str(path), 100, Formatter("ecs", pseudonyms, "r1"), aggregate)
        sink.put(SecurityEvent(time.time(), "detect", fields))
        event = _event("dga-xkqzv.example.", "192.0.2.7")
        event.answer.detection = "detect=dga client=192.0.2.7 rate=9q/s"
        sink.put(event)
        sink.close()
        outputs[privacy] = path.read_text()
    assert outputs["full"].count("192.0.2.7") >= 2
    assert "192.0.2.7" not in outputs["pseudonymised"] and '"detection": "detect=dga"' in outputs["pseudonymised"]
    assert '"detector": "dga"' in outputs["pseudonymised"]
    [record] = [json.loads(line) for line in outputs["aggregate"].splitlines()]
    assert record["detections"] == {"detect:dga": 1} and "192.0.2.7" not in outputs["aggregate"]
    assert "dga-xkqzv" not in outputs["aggregate"]


def test_a_json_sink_reopens_its_file_by_name(tmp_path: Path) -> None:
    from ztdns.observe.formats import Formatter
    from ztdns.observe.querylog import QueryLog

    path = tmp_path / "query.log"
    sink = QueryLog(str(path), 100, Formatter("ocsf", None, "r1"), retention=3600)
    sink.put(_event("before.example.", "10.0.0.1"))
    deadline = time.monotonic() + 5
    while sink.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    path.rename(tmp_path / "query.log.1")  # logrotate
    sink.reopen()  # SIGHUP
    sink.put(_event("after.example.", "10.0.0.1"))
    sink.close()
    assert "before.example" in (tmp_path / "query.log.1").read_text()
    assert "after.example" in path.read_text() and "before" not in path.read_text()
