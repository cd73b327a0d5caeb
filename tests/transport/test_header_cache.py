"""The DoH answer path caches header blocks per response shape (``hpack.encode_headers``) and header lists per
answer (``doh.dns_response``): each cached result must be what the uncached path makes, and decode (with the
``hpack`` library, an independent decoder) to exactly the headers given."""

from __future__ import annotations

import dns.message
import dns.rrset
import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from ztdns.transport import doh
from ztdns.transport.http2 import hpack as our_hpack

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
_STATUS = st.sampled_from([100, 200, 204, 206, 304, 400, 404, 405, 413, 415, 431, 500, 503, 599])
_NAMES = st.one_of(st.sampled_from(["content-type", "content-length", "cache-control", "allow", "age"]), _TOKEN)


@settings(max_examples=300)
@given(_STATUS, st.lists(st.tuples(_NAMES, _VALUE), max_size=6))
def test_a_cached_header_block_is_the_uncached_one_and_decodes_to_the_headers(
    status: int, headers: list[tuple[str, str]]
) -> None:
    first = our_hpack.encode_headers(status, headers)
    again = our_hpack.encode_headers(status, list(headers))  # an equal list: found in the cache
    assert first == again == our_hpack._encode_headers(status, headers)
    decoded = hpack.Decoder().decode(first, raw=True)
    expected = [(b":status", str(status).encode()), *((n.encode(), v.encode("latin-1")) for n, v in headers)]
    assert decoded == expected


def _answer(ttl: int, query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", "192.0.2.1"))
    return response.to_wire()


def test_cached_answer_headers_are_those_of_a_fresh_answer() -> None:
    for ttl in (0, 1, 300, 86400):
        query = dns.message.make_query(f"ttl{ttl}.example.", "A")
        answer = _answer(ttl, query)
        doh._ANSWER_HEADERS.clear()
        fresh = doh.dns_response(query.to_wire(), answer)
        query.id ^= 0x5A5A  # another client's ID: the cache is keyed past it
        cached = doh.dns_response(query.to_wire(), _answer(ttl, query))
        assert (
            cached.headers
            == fresh.headers
            == [
                ("content-type", "application/dns-message"),
                ("content-length", str(len(answer))),
                ("cache-control", f"max-age={ttl}"),
            ]
        )
        assert cached.body[2:] == fresh.body[2:] and cached.body[:2] == query.to_wire()[:2]
