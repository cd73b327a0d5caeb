"""Pre-rendered signed answers: replayed with the client's ID and name case, never after a zone change or a
key event, never larger than a UDP client accepts."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.update

from authority_lab import ORIGIN, ZONE_TEXT, keyring, signed_zone
from ztdns.authority.handler import KIND_ANSWERED, KIND_REPLAYED, Authority, ServedZone
from ztdns.authority.update import Grant
from ztdns.authority.zone import rrset_of
from ztdns.client import ClientInfo, Transport

UDP = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
TCP = ClientInfo(Transport.TCP, "127.0.0.1", 5353, stream=True)
WEB = "spiffe://corp/ns/prod/sa/web"


def ask(
    authority: Authority, name: str, rdtype: str, ident: int = 1, client: ClientInfo = UDP, **kw: object
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    query.id = ident
    wire = authority.fast(query.to_wire(), client)
    assert wire
    return dns.message.from_wire(wire)


def kinds(authority: Authority) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (_, kind, _), value in authority.metrics.totals().queries.items():
        counts[kind] = counts.get(kind, 0) + value
    return counts


def validate(zone: ServedZone, response: dns.message.Message, name: str, rdtype: str) -> dns.rrset.RRset:
    owner = dns.name.from_text(name)
    rrset = response.find_rrset(response.answer, owner, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
    sigs = response.find_rrset(
        response.answer, owner, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.from_text(rdtype)
    )
    dnskey = zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
    assert dnskey is not None
    dns.dnssec.validate(rrset, sigs, {ORIGIN: rrset_of(ORIGIN, dnskey)})
    return rrset


def test_replay_splices_id_and_case(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path)
    authority = Authority([zone])
    first = ask(authority, "www.corp.internal.", "A", ident=1, want_dnssec=True)
    again = ask(authority, "WwW.CoRp.InTeRnAl.", "A", ident=0xBEEF, want_dnssec=True)
    third = ask(authority, "WwW.CoRp.InTeRnAl.", "A", ident=7, want_dnssec=True)  # by the exact bytes now
    assert kinds(authority) == {KIND_ANSWERED: 1, KIND_REPLAYED: 2}
    assert again.id == 0xBEEF and third.id == 7
    assert again.question[0].name.to_text() == "WwW.CoRp.InTeRnAl."
    assert again.flags & dns.flags.AA and again.answer == first.answer
    validate(zone, again, "www.corp.internal.", "A")
    # DO=0 is another question: no signatures, answered (not replayed from the DO=1 answer).
    plain = ask(authority, "www.corp.internal.", "A", ident=9)
    assert all(r.rdtype != dns.rdatatype.RRSIG for r in plain.answer)
    assert kinds(authority)[KIND_ANSWERED] == 2


def test_zone_change_and_key_event_invalidate_replays(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, grants=(Grant(WEB, ("web.prod.svc.corp.internal",)),))
    authority = Authority([zone], keyring=keyring(), identities={dns.name.from_text("web-key."): WEB})
    name = "web.prod.svc.corp.internal."
    assert ask(authority, name, "A", want_dnssec=True).rcode() == dns.rcode.NXDOMAIN
    assert ask(authority, name, "A", want_dnssec=True).rcode() == dns.rcode.NXDOMAIN  # replayed
    update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=dns.name.from_text("web-key."))
    update.replace("web.prod.svc", 30, "A", "10.1.2.3")
    assert authority.fast(update.to_wire(), TCP) is None  # UPDATE goes the full way
    authority.respond(update.to_wire(), TCP)
    answer = validate(zone, ask(authority, name, "A", want_dnssec=True), name, "A")
    assert answer[0].address == "10.1.2.3"

    assert zone.keys is not None
    before = ask(authority, "corp.internal.", "DNSKEY", want_dnssec=True)
    ask(authority, "corp.internal.", "DNSKEY", want_dnssec=True)  # replayed
    zone.keys.rollover("zsk", zone.base.max_ttl())  # the new ZSK is published at once
    assert authority.tick() == [zone]
    after = validate(zone, ask(authority, "corp.internal.", "DNSKEY", want_dnssec=True), "corp.internal.", "DNSKEY")
    assert len(after) == len(before.answer[0]) + 1


def test_replay_respects_udp_size(tmp_path: Path) -> None:
    strings = " ".join(f'"{letter * 200}"' for letter in "abc")
    zone = signed_zone(tmp_path, text=ZONE_TEXT + f"big TXT {strings}\n")
    authority = Authority([zone])
    big = ask(authority, "big.corp.internal.", "TXT", want_dnssec=True, payload=1232)
    assert not big.flags & dns.flags.TC and big.answer
    # The same question from a client taking 512 bytes is truncated, also after the answer was rendered.
    for ident in (2, 3):
        small = ask(authority, "big.corp.internal.", "TXT", ident=ident, want_dnssec=True, payload=512)
        assert small.flags & dns.flags.TC and not small.answer and small.id == ident
    # Over TCP the full answer, from the replay.
    full = ask(authority, "big.corp.internal.", "TXT", ident=4, client=TCP, want_dnssec=True, payload=512)
    assert not full.flags & dns.flags.TC and full.answer == big.answer
