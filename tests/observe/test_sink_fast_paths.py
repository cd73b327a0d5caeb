"""The sinks' batch paths from the serving thread's tuples (``QueueSink.raw``) against the per-event code they
replace: native query log lines against :func:`formats.line`, dnstap frames against the generic encoder, and the
feed handing each kind of sink what it reads."""

from __future__ import annotations

import time
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from ztdns.client import ClientInfo, Transport
from ztdns.observe import formats
from ztdns.observe.dnstap import (
    CLIENT_QUERY,
    CLIENT_RESPONSE,
    INET6,
    PROTOCOLS,
    DnstapSink,
    _address,
    data_frame,
    dnstap,
    message,
)
from ztdns.observe.events import Answered, Event, Item, QueryEvent, RawQuery, SecurityEvent
from ztdns.observe.formats import Clock, Formatter, line
from ztdns.observe.privacy import Pseudonyms
from ztdns.observe.ring import Batch, Chunk, PyRecords, items, take
from ztdns.observe.sinks import Feed, QueueSink


def _answers() -> list[Answered]:
    records = (dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"),)
    return [
        Answered("cached", "NOERROR", "lab", "www.example.", "A", "allow", "p", "allow:**", None, (), True, None,
                 None, records, "insecure"),
        Answered("blocked", "NXDOMAIN", None, "ads.example.", "AAAA", "deny", "p", 'deny:"x"', 15, (), False,
                 "192.0.2.53", "blocked by \"list\"", (), "off", "detect=dga score 0.9"),
    ]  # fmt: skip


def _clients() -> list[ClientInfo]:
    return [
        ClientInfo(Transport.UDP, "127.0.0.1", 5353),
        ClientInfo(Transport.DOT, "2001:db8::7", 40000, certificate_identity='spiffe://corp/ns/"q"/web'),
        ClientInfo(Transport.DOH, "fe80::1%eth0", 443),
    ]


def _raw() -> list[RawQuery]:
    query = dns.message.make_query("www.example.", "A").to_wire()
    response = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    now = time.time()
    raw: list[RawQuery] = []
    for index, (client, answer) in enumerate((c, a) for c in _clients() for a in _answers()):
        raw.append((now + index * 0.0004, client, answer, 0.000123 * index, query, response))
        raw.append((now + index * 0.0004, client, answer, 0.5, b"\x01", None))  # cut query, dropped
    return raw


def test_native_lines_from_tuples_are_the_per_event_lines() -> None:
    formatter = Formatter("native", None, 'node "1"')
    assert formatter.native is not None
    raw = _raw()
    made = formatter.native.lines(raw + raw)  # the second time from the memo of parts
    expected = [line(QueryEvent(*item), Clock(), 'node "1"') for item in raw]
    assert made == expected + expected
    assert formatter.native.text(raw) == "".join(text + "\n" for text in expected)


def test_native_lines_in_c_are_the_python_lines() -> None:
    lines = pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    formatter = Formatter("native", None, "node ü")  # json.dumps escapes it: every piece is ASCII
    native = formatter.native
    assert native is not None
    raw = _raw()
    memos = (native._clients, native._answers, native._client_parts, native._answer_parts, native._second_of)
    out = bytearray()
    size = lines.native(raw + raw, 0, 2 * len(raw), *memos, out)
    assert size is not None
    assert out[:size] == (native.text(raw) * 2).encode()
    assert native.data([*raw]) == memoryview(out)[: size // 2]
    # A piece that is not ASCII (never made by json.dumps): the extension declines and the caller uses Python.
    client = raw[0][1]
    native._clients[id(client)] = [client, "ü", ""]
    assert lines.native(raw, 0, 1, *memos, out) is None
    assert native.data([raw[0]]) == memoryview(native.text(raw[:1]).encode())


def test_native_lines_are_made_only_with_full_privacy() -> None:
    assert Formatter("native", Pseudonyms("deterministic", 3600), "x").native is None
    assert Formatter("ecs", None, "x").native is None


def _reference_frames(sink: DnstapSink, event: QueryEvent) -> bytes:
    """The frames of a query as the generic encoder makes them (what the sink wrote before its batch path)."""
    client = event.client
    family, address = _address(client.address)
    port = client.port
    if sink.pseudonyms is not None:
        family, address = INET6, sink.pseudonyms.address_bytes(client.address)
        port = sink.pseudonyms.port(port)
    protocol = PROTOCOLS.get(str(client.transport), 1)
    started = event.time - event.latency
    query = message(CLIENT_QUERY, family, protocol, address, port, started, event.query)
    out = data_frame(dnstap(sink.identity, sink.version, query))
    if event.response is not None:
        response = message(CLIENT_RESPONSE, family, protocol, address, port, event.time, event.response, started)
        out += data_frame(dnstap(sink.identity, sink.version, response))
    return out


def test_dnstap_frames_from_tuples_are_the_generic_encoders(tmp_path: Path) -> None:
    for pseudonyms in (None, Pseudonyms("deterministic", 3600)):
        sink = DnstapSink("tap", 100, "node", "ztdns test", str(tmp_path / "nobody.sock"), pseudonyms=pseudonyms)
        try:
            raw = _raw()
            client, answer = raw[0][1], raw[0][2]
            raw.append((time.time(), client, answer, 0.25, bytes(20_000), bytes(40_000)))  # lengths beyond the table
            expected = b"".join(_reference_frames(sink, QueryEvent(*item)) for item in raw)
            assert sink.raw_frames(raw) == expected
            assert sink.raw_frames(raw) == expected  # from the memo of clients
        finally:
            sink.close()


class Collecting(QueueSink):
    """A sink that keeps what it is given (``raw`` as asked)."""

    def __init__(self, raw: bool) -> None:
        super().__init__("collecting", 1000, interval=3600)
        self.raw = raw
        self.got: list[Item] = []

    def emit(self, batch: list[Event], now: float) -> None:
        self.got += batch

    def emit_raw(self, batch: Batch, now: float) -> None:
        self.got += items(batch)


@pytest.mark.parametrize("lines", ["c", "python"])
def test_the_feed_hands_raw_sinks_its_records_and_others_events(lines: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever ring the feed has (the C one, or the Python one of ``ZTDNS_NATIVE_LINES=python``), raw sinks
    read the queries as added, and the others get QueryEvents, in order with the other events."""
    if lines == "c":
        pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    monkeypatch.setattr(formats, "NATIVE_LINES_IN_C", lines == "c")
    raw_sink, event_sink = Collecting(True), Collecting(False)
    feed = Feed([raw_sink, event_sink], interval=3600)
    assert isinstance(feed.ring, PyRecords) == (lines == "python")
    security = SecurityEvent(time.time(), "detect", {"detector": "dga"})
    queries = _raw()[:3]
    for when, client, answer, latency, query, response in queries[:2]:
        feed.add(when, latency, client, answer, query, response)
    feed.ring.add_event(security)
    when, client, answer, latency, query, response = queries[2]
    feed.ring.add_replies(when, latency, client, [(answer, query, response or b"", b"peer")])
    feed._dispatch()
    for sink in (raw_sink, event_sink):
        sink._drain()
    assert raw_sink.got == [*queries[:2], security, queries[2]]
    assert event_sink.got == [QueryEvent(*item) for item in queries[:2]] + [security, QueryEvent(*queries[2])]
    feed.close()


@pytest.mark.parametrize("lines", ["c", "python"])
def test_a_full_ring_drops_and_counts_until_the_feed_takes_it(lines: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if lines == "c":
        pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    monkeypatch.setattr(formats, "NATIVE_LINES_IN_C", lines == "c")
    sink = Collecting(True)
    sink.limit = 3
    feed = Feed([sink], interval=3600)
    when, client, answer, latency, query, response = _raw()[0]
    added = [feed.add(when, latency, client, answer, query, response) for _ in range(4)]
    assert added == [True, True, True, False]
    assert feed.ring.add_replies(when, latency, client, [(answer, query, response or b"", None)] * 2) == 0
    assert feed.ring.add_event(SecurityEvent(when, "detect", {})) is False
    assert feed.dropped == 4
    feed._dispatch()
    assert feed.add(when, latency, client, answer, query, response) is True  # room again once taken
    sink._drain()
    assert len(sink.got) == 3
    feed.close()


def test_a_full_queue_keeps_what_fits_and_counts_the_rest() -> None:
    sink = Collecting(True)
    sink.limit = 5
    batch: list[Item] = list(_raw()[:4])
    sink.offer(batch)
    sink.offer(batch)
    assert (sink.offered, sink.dropped) == (5, 3)
    sink._drain()
    assert len(sink.got) == 5
    sink.offer(batch)  # room again once the sink's thread took its batch
    assert (sink.offered - sink.taken, sink.dropped) == (4, 3)


def test_native_line_parts_are_kept_per_client_and_per_answer_not_per_pair() -> None:
    """16 sockets asking 1,000 names are 16 + 1,000 sets of parts, not 16,000 (which overflowed the memo)."""
    formatter = Formatter("native", None, "n")
    native = formatter.native
    assert native is not None
    clients = [ClientInfo(Transport.UDP, "127.0.0.1", 40000 + n) for n in range(16)]
    answers = [Answered("cached", "NOERROR", None, f"n{n}.example.", "A") for n in range(1000)]
    now = time.time()
    batch: list[RawQuery] = [(now, c, a, 0.0001, b"\0\1", b"") for a in answers for c in clients]
    assert len(native.text(batch).splitlines()) == 16_000
    assert (len(native._clients), len(native._answers)) == (16, 1000)


def test_the_c_ring_takes_any_bytes_like_message_and_drops_what_is_not() -> None:
    """A record is never worth failing an answer for: a message that is not bytes-like is dropped and counted."""
    lines = pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    ring = lines.Records(10)
    when, client, answer, latency, query, response = _raw()[0]
    assert ring.add(when, latency, client, answer, bytearray(query), memoryview(response or b""))
    assert not ring.add(when, latency, client, answer, "not bytes", None)
    assert not ring.add(when, latency, client, answer, query, 12)
    assert ring.dropped == 2
    taken = take(ring)
    assert isinstance(taken, Chunk)
    assert taken.items() == [(when, client, answer, latency, query, response)]


def test_the_c_ring_lists_each_object_of_a_batch_about_once() -> None:
    """16 clients asking 1,000 names in turn: the batch's list names each about once (a formatter then looks up
    each one's parts once a batch), not once per record."""
    lines = pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    ring = lines.Records(20_000)
    clients = [ClientInfo(Transport.UDP, "127.0.0.1", 40000 + n) for n in range(16)]
    answers = [Answered("cached", "NOERROR", None, f"n{n}.example.", "A") for n in range(1000)]
    for n in range(16_000):
        assert ring.add(1e9 + n, 0.0001, clients[n % 16], answers[n % 1000], b"\0\1", b"")
    taken = take(ring)
    assert isinstance(taken, Chunk)
    assert 1016 <= len(taken.objects) < 1100  # an object is listed again only if 8 slots in a row were taken
    assert [item[1:3] for item in taken.items(0, 32)] == [(clients[n % 16], answers[n]) for n in range(32)]  # type: ignore[index]


def test_the_c_ring_hands_its_memory_over_and_reuses_what_sinks_are_done_with() -> None:
    """A take hands the ring's blocks over as they are (read only), and the ring goes on in memory from its pool:
    memory a dropped chunk gave back is written again, never a chunk still held (each keeps its records)."""
    lines = pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")
    ring = lines.Records(10_000)
    client = ClientInfo(Transport.UDP, "127.0.0.1", 40000)
    answers = [Answered("cached", "NOERROR", None, f"n{n}.example.", "A") for n in range(3)]

    def chunk(mark: int, count: int) -> tuple[Chunk, list[Item]]:
        added: list[Item] = [
            (1e9 + n, client, answers[mark], 0.0001 * mark, bytes([mark, n % 256]), bytes([mark]) * (n % 50))
            for n in range(count)
        ]
        for when, who, answer, latency, query, response in added:  # type: ignore[misc]
            assert ring.add(when, latency, who, answer, query, response)
        taken = take(ring)
        assert isinstance(taken, Chunk)
        return taken, added

    first, first_added = chunk(0, 3000)
    second, second_added = chunk(1, 5000)  # beyond the first's room: the ring grew new memory
    assert memoryview(first.records).readonly and memoryview(first.wires).readonly
    del first, first_added  # back to the pool
    for mark, count in ((2, 3000), (0, 100), (1, 8000)):
        again, added = chunk(mark, count)
        assert again.items() == added
        assert second.items() == second_added  # still held: never written over
