"""A replay that expired is replaced by the next one the full path stores, also for clients whose exact query
bytes were indexed: found again by those bytes, the expired replay must not hide (or delete) its successor."""

from __future__ import annotations

import dns.message
import dns.rrset

from ztdns.observe.events import Answered
from ztdns.replay import Replay, Replays
from ztdns.wire.query import parse_query


def _rendered(query: dns.message.Message, address: str) -> bytes:
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("www.example.", 300, "IN", "A", address))
    return response.to_wire()


def test_a_replay_stored_after_expiry_is_served_by_the_exact_bytes() -> None:
    query = dns.message.make_query("www.example.", "A")
    wire = query.to_wire()
    parsed = parse_query(wire)
    assert parsed is not None
    replays = Replays(limit=100)
    answered = Answered("cached", "NOERROR")
    replays.put("team", Replay(parsed.key, _rendered(query, "192.0.2.1"), 10.0, answered))
    assert replays.answer("team", wire, False, 1.0) is not None  # parsed, then indexed by its bytes
    assert replays.answer("team", wire, False, 2.0) is not None  # by its bytes
    assert replays.answer("team", wire, False, 11.0) is None  # expired: the full path answers and stores anew
    replays.put("team", Replay(parsed.key, _rendered(query, "192.0.2.2"), 100.0, answered))
    for now in (12.0, 13.0, 14.0):
        found = replays.answer("team", wire, False, now)
        assert found is not None, f"the new replay is not served at {now}"
        assert dns.message.from_wire(found[0]).answer[0][0].address == "192.0.2.2"
    assert replays.size() == 1


def test_an_expired_replay_found_by_its_bytes_does_not_delete_a_newer_one() -> None:
    query = dns.message.make_query("www.example.", "A")
    wire = query.to_wire()
    parsed = parse_query(wire)
    assert parsed is not None
    replays = Replays(limit=100)
    answered = Answered("cached", "NOERROR")
    replays.put(None, Replay(parsed.key, _rendered(query, "192.0.2.1"), 10.0, answered))
    assert replays.answer(None, wire, False, 1.0) is not None
    # Stored anew (another client's full-path answer) while this client's bytes still point at the old one.
    replays.put(None, Replay(parsed.key, _rendered(query, "192.0.2.2"), 100.0, answered))
    found = replays.answer(None, wire, False, 11.0)
    assert found is not None and dns.message.from_wire(found[0]).answer[0][0].address == "192.0.2.2"
    assert replays.size() == 1
