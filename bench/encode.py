"""Hand-written wire encoding against dnspython: rendering responses and building RRSIG signed data.

Peers are dnspython's own calls the hot path used before: ``Message.to_wire(max_size=65535)`` for a signed
NODATA response (SOA, NSEC and their RRSIGs in authority, DO=1, EDE) and for a positive answer with its RRSIG;
``dns.dnssec._make_rrsig_signature_data`` for an A RRset, an NSEC record and a DNSKEY RRset. Both sides produce
the same bytes (checked here before timing; tests/wire/test_encode.py checks it broadly). Prints µs per call for
ztdns, for dnspython, and the ratio.

    python bench/encode.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.rrset
from dns.rdtypes.ANY.RRSIG import RRSIG

from ztdns.dnssec.signed import signed_data
from ztdns.wire.render import render

_SIG = "20300101000000 20200101000000 4711 example.com. " + "A" * 86 + "=="
_KEY = "AQID" * 21 + "AQ=="


def _response(qname: str, qtype: str) -> dns.message.Message:
    message = dns.message.make_response(dns.message.make_query(qname, qtype, want_dnssec=True))
    message.use_edns(0, dns.flags.DO, 1232)
    return message


def nodata() -> dns.message.Message:
    message = _response("www.example.com.", "AAAA")
    message.authority += [
        dns.rrset.from_text("example.com.", 300, "IN", "SOA", "ns1.example.com. hostmaster.example.com. 1 2 3 4 5"),
        dns.rrset.from_text("example.com.", 300, "IN", "RRSIG", f"SOA 13 2 300 {_SIG}"),
        dns.rrset.from_text("www.example.com.", 300, "IN", "NSEC", "zzz.example.com. A RRSIG NSEC"),
        dns.rrset.from_text("www.example.com.", 300, "IN", "RRSIG", f"NSEC 13 3 300 {_SIG}"),
    ]
    message.use_edns(0, dns.flags.DO, 1232, options=[dns.edns.EDEOption(dns.edns.EDECode.OTHER, "lab")])
    return message


def positive() -> dns.message.Message:
    message = _response("www.example.com.", "A")
    message.answer += [
        dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"),
        dns.rrset.from_text("www.example.com.", 300, "IN", "RRSIG", f"A 13 3 300 {_SIG}"),
    ]
    return message


def rrsets() -> dict[str, tuple[dns.rrset.RRset, RRSIG]]:
    def signed(rrset: dns.rrset.RRset) -> tuple[dns.rrset.RRset, RRSIG]:
        labels = len(rrset.name.labels) - 1
        (rrsig,) = dns.rrset.from_text(rrset.name, 300, "IN", "RRSIG", f"{rrset.rdtype.name} 13 {labels} 300 {_SIG}")
        assert isinstance(rrsig, RRSIG)
        return rrset, rrsig

    return {
        "A RRset (2)": signed(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")),
        "NSEC": signed(dns.rrset.from_text("www.example.com.", 300, "IN", "NSEC", "zzz.example.com. A RRSIG NSEC")),
        "DNSKEY RRset (2)": signed(
            dns.rrset.from_text(
                "example.com.", 3600, "IN", "DNSKEY", f"257 3 13 {_KEY}", "256 3 13 " + "BAUG" * 21 + "BA=="
            )
        ),
    }


def per_call(function: Callable[[], object], seconds: float) -> float:
    """µs per call, the best of a few rounds."""
    calls = 1000
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def row(what: str, ours: Callable[[], bytes], theirs: Callable[[], bytes], seconds: float) -> None:
    mine, peer = per_call(ours, seconds), per_call(theirs, seconds)
    print(f"{what:34s} ztdns {mine:7.1f} µs   dnspython {peer:7.1f} µs   ratio {peer / mine:4.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per measurement")
    args = parser.parse_args()
    for what, message in (("render signed NODATA", nodata()), ("render positive A + RRSIG", positive())):
        ours = partial(render, message, max_size=65535)
        theirs = partial(message.to_wire, max_size=65535)
        # dnspython shuffles the two A records: the same bytes up to their order, so the same length.
        assert ours() == theirs() if what.endswith("NODATA") else len(ours()) == len(theirs()), what
        row(what, ours, theirs, args.seconds)
    for what, (rrset, rrsig) in rrsets().items():
        ours = partial(signed_data, rrset, rrsig)
        theirs = partial(dns.dnssec._make_rrsig_signature_data, rrset, rrsig)
        assert ours() == theirs(), what
        row(f"signed data {what}", ours, theirs, args.seconds)


if __name__ == "__main__":
    main()
