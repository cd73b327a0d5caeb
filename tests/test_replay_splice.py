"""A replay is the stored answer with the client's ID and spelling of the name, whether the query is found by its
normal form (parsed) or by its bytes (the exact index), and after its TTLs were counted down."""

from __future__ import annotations

import dns.message
import dns.rrset

from ztdns.observe.events import Answered
from ztdns.replay import Replay, Replays
from ztdns.wire.query import parse_query
from ztdns.wire.records import ttl_offsets


def _expected(query: bytes, stored: bytes) -> bytes:
    """The stored answer with the query's ID and question name (same length: only the case differs)."""
    parsed = parse_query(query)
    assert parsed is not None
    end = parsed.name_end
    return query[:2] + stored[2:12] + query[12:end] + stored[end:]


def test_replays_carry_the_clients_id_and_spelling_by_either_lookup() -> None:
    stored_query = dns.message.make_query("www.example.", "A")
    response = dns.message.make_response(stored_query)
    response.answer.append(dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1"))
    stored = response.to_wire()
    parsed = parse_query(stored_query.to_wire())
    assert parsed is not None
    replays = Replays(limit=100)
    replay = Replay(parsed.key, stored, 1000.0, Answered("cached", "NOERROR"))
    replay.offsets = [(offset, ttl) for offset, ttl in ttl_offsets(stored)]
    replay.rerender_at = 1.0
    replays.put(None, replay)
    for spelling in ("www.example.", "WwW.ExAmple."):
        query = dns.message.make_query(spelling, "A")
        for qid in (1, 0xBEEF, 7):  # the first parsed, the next by their bytes
            query.id = qid
            wire = query.to_wire()
            found = replays.answer(None, wire, False, 0.5)
            assert found is not None and found[0] == _expected(wire, stored)
    counted = replays.answer(None, wire, False, 3.5)  # 3 s after it was stored: TTLs counted down by 3
    assert counted is not None
    assert counted[0] == _expected(wire, replay.wire) and dns.message.from_wire(counted[0]).answer[0].ttl == 297
