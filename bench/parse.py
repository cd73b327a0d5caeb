"""Hand-written response parsing against dnspython: ``ztdns.wire.parse.parse_message`` vs ``dns.message.from_wire``.

The messages are the ones the resolver parses most: a client's query, a positive answer with its RRSIG, a signed
NODATA (SOA, NSEC and their RRSIGs) and a referral with DS. Both sides give the same Message (checked here before
timing; tests/wire/test_response_parse.py checks it broadly). ztdns is timed twice: *cold*, with a fresh memo per
message (names and records never seen before, as in a cold cache), and *warm*, with the process-wide memo that
reuses names and records seen in earlier responses. Prints µs per message and the ratio to dnspython.

    .venv/bin/python bench/parse.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
from functools import partial

import dns.flags
import dns.message
import dns.rrset

from encode import nodata, per_call, positive
from ztdns.wire.parse import _Memo, _read, parse_message

_SIGNATURE = "20300101000000 20200101000000 4711 com. " + "A" * 86 + "=="
_DS = "12345 13 2 " + "AB" * 32


def referral() -> dns.message.Message:
    message = dns.message.make_response(dns.message.make_query("www.example.com.", "A", want_dnssec=True))
    message.flags &= ~dns.flags.AA
    message.authority += [
        dns.rrset.from_text("example.com.", 86400, "IN", "NS", "a.iana-servers.net.", "b.iana-servers.net."),
        dns.rrset.from_text("example.com.", 86400, "IN", "DS", _DS),
        dns.rrset.from_text("example.com.", 86400, "IN", "RRSIG", "DS 13 2 86400 " + _SIGNATURE),
    ]
    message.additional += [
        dns.rrset.from_text("a.iana-servers.net.", 86400, "IN", "A", "199.43.135.53"),
        dns.rrset.from_text("a.iana-servers.net.", 86400, "IN", "AAAA", "2001:500:8f::53"),
    ]
    return message


def cold(wire: bytes) -> dns.message.Message:
    return _read(wire, _Memo())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per measurement")
    args = parser.parse_args()
    messages = {
        "client query (A, EDNS)": dns.message.make_query("www.example.com.", "A", use_edns=0),
        "positive A + RRSIG": positive(),
        "signed NODATA": nodata(),
        "referral with DS": referral(),
    }
    for what, message in messages.items():
        wire = message.to_wire()
        theirs = partial(dns.message.from_wire, wire)
        assert cold(wire) == parse_message(wire) == theirs(), what
        peer = per_call(theirs, args.seconds)
        fresh, memo = per_call(partial(cold, wire), args.seconds), per_call(partial(parse_message, wire), args.seconds)
        print(
            f"{what:24s} dnspython {peer:6.1f} µs   ztdns cold {fresh:6.1f} µs ({peer / fresh:3.1f}x)"
            f"   warm {memo:6.1f} µs ({peer / memo:3.1f}x)"
        )


if __name__ == "__main__":
    main()
