"""The ``_lines`` extension (observe/_lines.c) against the pure-Python paths it replaces, on generated batches:
its ring of records against the serving thread's tuples (what a chunk holds is what was added), native query log
lines byte for byte against :func:`formats.line` and ``NativeLines.text``, dnstap frames against
``DnstapSink.raw_frames``, each from the tuples and from a chunk of the ring — odd names, addresses and
certificate identities (quotes, control characters, non-ASCII), latencies on a rounding tie, cut queries, dropped
answers, lengths beyond one varint byte — and the query log's file as written with the extension and with
``ZTDNS_NATIVE_LINES=python``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztdns.client import ClientInfo, Transport
from ztdns.observe import formats
from ztdns.observe.dnstap import DnstapSink
from ztdns.observe.events import Answered, Item, QueryEvent, RawQuery, SecurityEvent, UpstreamEvent
from ztdns.observe.formats import Clock, Formatter, NativeLines, line
from ztdns.observe.privacy import Pseudonyms
from ztdns.observe.querylog import RESERVE, QueryLog
from ztdns.observe.ring import Chunk, PyRecords, Ring, take
from ztdns.observe.sinks import RECORDS_PER_WRITE

lines = pytest.importorskip("ztdns.observe._lines", reason="the _lines extension is not built (no C compiler)")

texts = st.text(max_size=12)
optional_texts = st.none() | texts
clients = st.builds(
    ClientInfo,
    st.sampled_from(Transport),
    st.sampled_from(["127.0.0.1", "2001:db8::7", "fe80::1%eth0", "not an address"]) | texts,
    st.integers(0, 65535),
    optional_texts,
)
_RECORDS = (
    (),
    (dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"),),
    (
        dns.rrset.from_text("a.example.", 60, "IN", "CNAME", "b.example."),
        dns.rrset.from_text("b.example.", 60, "IN", "TXT", '"quote \\" and \\\\ backslash"'),
    ),
)
answers = st.builds(
    Answered,
    st.sampled_from(["cached", "resolved", "blocked", "failed"]),
    st.sampled_from(["NOERROR", "NXDOMAIN", "SERVFAIL", "DROPPED"]),
    identity=optional_texts,
    qname=optional_texts,
    qtype=st.sampled_from([None, "A", "TYPE65534"]),
    decision=st.sampled_from(["allow", "deny", "refuse", "none"]),
    policy=optional_texts,
    rule=optional_texts,
    ede=st.none() | st.integers(0, 65535),
    cache_hit=st.booleans(),
    upstream=optional_texts,
    ede_text=optional_texts,
    records=st.sampled_from(_RECORDS),
    dnssec=st.sampled_from(["off", "secure", "insecure", "bogus"]),
    detection=optional_texts,
)
# Latencies: any, and ones whose milliseconds sit on (or next to) a half of the third decimal, where rounding the
# double product by hand would differ from Python's correctly rounded formatting.
latencies = (
    st.floats(0, 1e4, allow_nan=False)
    | st.integers(0, 10**7).map(lambda n: (n + 0.5) / 1e6)
    | st.integers(0, 4096).map(lambda n: n / 65536)
    | st.sampled_from([0.0, 0.0000625, 0.0000005, 1e-300, 2e6, 5e5])
)
wires = st.binary(max_size=40) | st.integers(120, 20_000).map(bytes)


@st.composite
def batches(draw: st.DrawFn) -> list[RawQuery]:
    """A batch as the serving thread makes it: a few clients and answers, each seen several times."""
    who = draw(st.lists(clients, min_size=1, max_size=4))
    what = draw(st.lists(answers, min_size=1, max_size=4))
    start = draw(st.floats(1e7, 4e9))  # after every latency: a query starts after 1970
    batch: list[RawQuery] = []
    for _ in range(draw(st.integers(1, 12))):
        when = start + draw(st.floats(0, 2.0))
        client, answer = draw(st.sampled_from(who)), draw(st.sampled_from(what))
        batch.append((when, client, answer, draw(latencies), draw(wires), draw(st.none() | wires)))
    return batch


def added(ring: Ring, batch: list[Item]) -> Ring:
    """``ring`` with ``batch`` added in order: every other query as a lane's replies (``add_replies``)."""
    for index, item in enumerate(batch):
        if not isinstance(item, tuple):
            assert ring.add_event(item)  # type: ignore[arg-type]
            continue
        when, client, answer, latency, query, response = item
        if index % 2:
            assert ring.add_replies(when, latency, client, [(answer, query, response, b"peer")]) == 1  # type: ignore[list-item]
        else:
            assert ring.add(when, latency, client, answer, query, response)
    return ring


def chunk_of(batch: list[Item]) -> Chunk:
    """``batch`` through the C ring."""
    taken = take(added(lines.Records(len(batch) + 1), batch))
    assert isinstance(taken, Chunk)
    return taken


def made_bytes(view: memoryview | None) -> bytes:
    assert view is not None  # None: the batch held something else than queries
    return bytes(view)


def _python(make: Callable[[], memoryview | bytes | None]) -> bytes:
    formats.NATIVE_LINES_IN_C = False
    try:
        made = make()
        return made if isinstance(made, bytes) else made_bytes(made)
    finally:
        formats.NATIVE_LINES_IN_C = True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_native_lines_in_c_are_the_python_lines(batch: list[RawQuery]) -> None:
    instance = 'node "ü"'
    in_c = NativeLines(Clock(), instance)
    items: list[Item] = [*batch]
    made = made_bytes(in_c.data(items))
    again = made_bytes(in_c.data(items))  # from the memos of parts, in the buffer of the first call
    in_python = NativeLines(Clock(), instance)
    assert made == again == _python(lambda: in_python.data(items)) == in_python.text(batch).encode()
    expected = "".join(line(QueryEvent(*item), Clock(), instance) + "\n" for item in batch)
    assert made == expected.encode()
    chunk = chunk_of(items)
    assert chunk.items() == items  # the C ring holds what was added
    assert take(added(PyRecords(len(items)), items)) == items
    assert made_bytes(in_c.data(chunk)) == made
    assert made_bytes(in_c.data(chunk, 1, 3)) == made_bytes(in_c.data(items, 1, 3))
    assert _python(lambda: in_python.data(chunk)) == made


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.booleans())
def test_dnstap_frames_in_c_are_the_python_frames(tmp_path_factory: pytest.TempPathFactory, batch: list[RawQuery],
                                                   pseudonymised: bool) -> None:  # fmt: skip
    pseudonyms = Pseudonyms("deterministic", 3600) if pseudonymised else None
    socket = str(tmp_path_factory.mktemp("tap") / "nobody.sock")
    sink = DnstapSink("tap", 100, "node ü", "ztdns test", socket, pseudonyms=pseudonyms)
    try:
        items: list[Item] = [*batch]
        made = made_bytes(sink.frames(items))
        assert made == made_bytes(sink.frames(items)) == sink.raw_frames(batch) == _python(lambda: sink.frames(items))
        chunk = chunk_of(items)
        assert made_bytes(sink.frames(chunk)) == made == _python(lambda: sink.frames(chunk))
    finally:
        sink.close()


def test_a_view_still_held_keeps_its_bytes() -> None:
    """The extension writes into a buffer kept from batch to batch; a caller still holding the last batch's view
    gets a new buffer rather than its bytes overwritten (or an error)."""
    native = NativeLines(Clock(), "n")
    client = ClientInfo(Transport.UDP, "127.0.0.1", 53)
    answer = Answered("cached", "NOERROR", qname="a.example.")
    first = native.data([(time.time(), client, answer, 0.001, b"\x00\x01", b"")])
    kept = made_bytes(first)
    second = native.data([(time.time(), client, answer, 0.002, b"\x00\x02", b"x" * 100_000)] * 200)
    assert made_bytes(first) == kept
    assert made_bytes(second).count(b"\n") == 200


def test_the_query_log_file_is_the_same_with_and_without_the_extension(tmp_path: Path) -> None:
    """Through the sink: a batch longer than one write, with a security event among the queries (the extension
    declines that part, which is made in Python in order), the file's bytes with the extension and without it."""
    clients = [ClientInfo(Transport.UDP, "127.0.0.1", 40000 + n) for n in range(3)]
    answers = [Answered("cached", "NOERROR", None, f"n{n}.example.", "A") for n in range(5)]
    now = time.time()
    batch: list[Item] = [
        (now + n * 0.0001, clients[n % 3], answers[n % 5], n * 1e-6, bytes([n % 256, 7]), b"r" * (n % 90))
        for n in range(RECORDS_PER_WRITE * 2 + 7)
    ]
    batch.insert(RECORDS_PER_WRITE + 3, SecurityEvent(now, "detect", {"detector": "dga", "key": "127.0.0.1"}))
    written = []
    for in_c, chunked in ((True, True), (True, False), (False, True), (False, False)):
        formats.NATIVE_LINES_IN_C = in_c
        try:
            output = tmp_path / f"log-{in_c}-{chunked}"
            sink = QueryLog(str(output), 10_000, Formatter("native", None, "n"))
            assert sink.raw
            sink.offer(chunk_of(batch) if chunked else list(batch))
            sink.close()
        finally:
            formats.NATIVE_LINES_IN_C = True
        written.append(output.read_bytes())
    assert written[0] == written[1] == written[2] == written[3]
    lines = written[0].decode().splitlines()
    assert len(lines) == len(batch)
    assert '"event": "detect"' in lines[RECORDS_PER_WRITE + 3]


def test_the_query_log_reserves_its_files_blocks_ahead_without_growing_it(tmp_path: Path) -> None:
    """The file's blocks are allocated RESERVE bytes ahead of its end (fallocate, size unchanged: readers see only
    lines); after a copytruncate, again from the new end; without the extension, nothing is reserved and the bytes
    written are the same."""
    clients = [ClientInfo(Transport.UDP, "127.0.0.1", 40000)]
    answers = [Answered("cached", "NOERROR", None, "n.example.", "A")]
    batch: list[Item] = [(time.time(), clients[0], answers[0], 1e-4, b"\x00\x07", b"r" * 40) for _ in range(50)]
    if not lines.reserve(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT), 0, 4096):
        pytest.skip("this file system cannot allocate ahead (fallocate)")
    written = []
    for in_c in (True, False):
        formats.NATIVE_LINES_IN_C = in_c
        output = tmp_path / f"log-{in_c}"
        try:
            sink = QueryLog(str(output), 10_000, Formatter("native", None, "n"))
            sink.send_queries(chunk_of(batch), time.time())
            allocated = os.stat(output).st_blocks * 512
            size = os.stat(output).st_size
            os.truncate(output, 0)  # logrotate's copytruncate
            sink.send_queries(chunk_of(batch), time.time())
            sink.close()
        finally:
            formats.NATIVE_LINES_IN_C = True
        assert os.stat(output).st_size == size == len(output.read_bytes())
        reserved = os.stat(output).st_blocks * 512
        if in_c:
            assert allocated >= RESERVE and reserved >= RESERVE
        else:
            assert allocated < RESERVE and reserved < RESERVE
        written.append(output.read_bytes())
    assert written[0] == written[1] and written[0].count(b"\n") == 50


def test_dnstap_declines_a_mixed_batch(tmp_path: Path) -> None:
    """Upstream traffic among the queries: no frames from the batch path, in C or in Python (the sink then sends
    each in order)."""
    sink = DnstapSink("tap", 100, "node", "ztdns test", str(tmp_path / "nobody.sock"))
    try:
        query: RawQuery = (time.time(), ClientInfo(Transport.UDP, "127.0.0.1", 53), Answered("cached", "NOERROR"),
                           0.001, b"\x00\x01", b"")  # fmt: skip
        upstream = UpstreamEvent(time.time(), time.time(), "udp", "192.0.2.53", 53, b"\x00\x01", b"\x00\x01")
        assert sink.frames([query, upstream]) is None
        assert sink.frames(chunk_of([query, upstream])) is None
        assert _python(lambda: sink.frames([query, upstream]) or b"") == b""
    finally:
        sink.close()
