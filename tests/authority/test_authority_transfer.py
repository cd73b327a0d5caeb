"""Zone transfers of big zones and big RRsets: messages packed by size (an RRset over 64 KB split by record),
streamed as they are made (the first message of a 50,000-name zone within 100 ms), taken by knotd."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.zone
import pytest

from authority_lab import ORIGIN, ZONE_TEXT, keyring, knot_secondary, serving, signed_zone, wait_serial
from fixtures.unbound import free_port
from ztdns.authority.handler import Authority, Quota, ServedZone, ZoneSettings
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.update import Grant
from ztdns.authority.zone import Zone
from ztdns.client import ClientInfo, Transport

XFR = dns.name.from_text("xfr.")
TCP_CLIENT = ClientInfo(Transport.TCP, "127.0.0.1", 5555, stream=True)
# A 4096-bit DKIM key record: ~730 bytes of TXT, in 255-byte strings.
DKIM = " ".join(f'"{chunk}"' for chunk in ["v=DKIM1; k=rsa; p=" + "A" * 236] + ["B" * 255] * 2)


def _big_zone() -> str:
    # 100 DKIM-sized TXT records in one RRset (~75 KB), and two 51 KB TXT sets.
    lines = [ZONE_TEXT]
    lines += [f'dkim TXT {DKIM} "{i}"' for i in range(100)]
    for owner in ("reg1", "reg2"):
        lines += [f'{owner} TXT "{owner}-{i:03d}-{"x" * 240}"' for i in range(200)]
    return "\n".join(lines) + "\n"


def _axfr(authority: Authority) -> list[dns.message.Message]:
    query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
    query.use_tsig(keyring(), XFR)
    messages = []
    ctx = None
    for wire in authority.respond(query.to_wire(), TCP_CLIENT):
        message = dns.message.from_wire(wire, keyring=keyring(), request_mac=query.mac, multi=True, tsig_ctx=ctx)
        ctx = message.tsig_ctx
        messages.append(message)
    return messages


def test_rrsets_over_64k_are_split_across_messages(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, _big_zone(), transfer=TransferAcl(keys=frozenset({XFR})))
    messages = _axfr(Authority([zone], keyring=keyring()))
    assert len(messages) >= 3
    records: dict[tuple[dns.name.Name, int], int] = {}
    for message in messages:
        assert len(message.to_wire()) <= 65535
        for rrset in message.answer:
            records[(rrset.name, rrset.rdtype)] = records.get((rrset.name, rrset.rdtype), 0) + len(rrset)
    assert records[(dns.name.from_text("dkim", ORIGIN), dns.rdatatype.TXT)] == 100
    assert records[(dns.name.from_text("reg1", ORIGIN), dns.rdatatype.TXT)] == 200
    assert messages[0].answer[0].rdtype == dns.rdatatype.SOA and messages[-1].answer[-1].rdtype == dns.rdatatype.SOA


def _names_zone(count: int) -> str:
    return ZONE_TEXT + "".join(f"h{i} A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(count))


@pytest.mark.slow
def test_big_rrsets_transfer_to_knot(tmp_path: Path) -> None:
    knot_port = free_port()
    zone = signed_zone(tmp_path / "state", _big_zone(), transfer=TransferAcl(keys=frozenset({XFR})))
    with serving(Authority([zone], keyring=keyring())) as (_, server), knot_secondary(tmp_path, knot_port, server.port):
        wait_serial(knot_port, zone.zone.serial)
        response = dns.query.tcp(dns.message.make_query("reg2.corp.internal.", "TXT"), "127.0.0.1", port=knot_port)
        assert len(response.answer[0]) == 200


@pytest.mark.slow
@pytest.mark.timeout(900)  # signing 100,000 RRsets once: minutes on a loaded 2-core machine
def test_50k_name_zone_streams_and_bootstraps_a_default_knot(tmp_path: Path) -> None:
    knot_port = free_port()
    zone = signed_zone(tmp_path / "state", _names_zone(50_000), transfer=TransferAcl(keys=frozenset({XFR})))
    with serving(Authority([zone], keyring=keyring())) as (_, server):
        query = dns.message.make_query(ORIGIN, dns.rdatatype.AXFR)
        query.use_tsig(keyring(), XFR)
        wire = query.to_wire()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            started = time.perf_counter()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            assert sock.recv(1)
            first_byte = time.perf_counter() - started
        # Streamed, not rendered whole first (6-11 s for this zone). Within 100 ms on a quiet machine
        # (docs/authority.md); the bound here leaves room for a loaded one.
        assert first_byte < 2.0, f"first byte after {first_byte * 1000:.0f} ms"
        with knot_secondary(tmp_path, knot_port, server.port):
            wait_serial(knot_port, zone.zone.serial, seconds=800)
            response = dns.query.udp(dns.message.make_query("h49999.corp.internal.", "A"), "127.0.0.1", port=knot_port)
            assert response.answer[0][0].to_text() == "10.0.195.79"


def _signed_query(rdtype: str, key: dns.name.Name, secret: str) -> dns.message.Message:
    query = dns.message.make_query(ORIGIN, rdtype)
    query.use_tsig(dns.tsigkeyring.from_text({key.to_text(): secret}), key)
    return query


def test_ixfr_at_the_current_serial_is_the_soa_alone(tmp_path: Path) -> None:
    zone = signed_zone(tmp_path, transfer=TransferAcl(keys=frozenset({XFR})))
    authority = Authority([zone], keyring=keyring())
    for serial, whole in ((zone.zone.serial, False), (zone.zone.serial + 5, False), (zone.zone.serial - 1, True)):
        query = dns.message.make_query(ORIGIN, dns.rdatatype.IXFR)
        soa = zone.zone.soa_rrset()
        query.authority.append(dns.rrset.from_rdata(ORIGIN, 0, soa[0].replace(serial=serial)))
        query.use_tsig(keyring(), XFR)
        wires = authority.respond(query.to_wire(), TCP_CLIENT)
        answer = dns.message.from_wire(wires[0], keyring=keyring(), request_mac=query.mac, multi=True).answer
        if whole:
            assert len(answer) > 1
        else:
            assert len(wires) == 1 and [r.rdtype for r in answer] == [dns.rdatatype.SOA]
            assert answer[0][0].serial == zone.zone.serial


def test_tsig_errors_carry_the_tsig_record(tmp_path: Path) -> None:
    authority = Authority([signed_zone(tmp_path)], keyring=keyring())
    other = "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="
    for query, error in (
        (_signed_query("SOA", dns.name.from_text("nobody."), other), dns.rcode.BADKEY),
        (_signed_query("SOA", XFR, other), dns.rcode.BADSIG),
    ):
        for client in (TCP_CLIENT, ClientInfo(Transport.UDP, "127.0.0.1", 5555)):
            (wire,) = authority.respond(query.to_wire(), client)
            response = dns.message.from_wire(wire, keyring=False)
            assert response.rcode() == dns.rcode.NOTAUTH and response.id == query.id
            assert response.tsig is not None and response.tsig[0].error == error
            assert response.tsig[0].mac == b"" and response.keyname == query.keyname
            assert response.question == query.question


def test_a_refused_notify_is_not_an_acknowledgement(tmp_path: Path) -> None:
    secondary = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    secondary.bind(("127.0.0.1", 0))
    secondary.settimeout(8)
    zone = signed_zone(tmp_path, notify=(("127.0.0.1", secondary.getsockname()[1]),), notify_key=XFR)
    authority = Authority([zone], keyring=keyring())
    with serving(authority) as (loop, _):
        loop.call(lambda: authority.on_change(zone))
        seen = 0
        for _ in range(2):
            wire, peer = secondary.recvfrom(65535)
            notify = dns.message.from_wire(wire, keyring=keyring())  # signed with the notify key
            assert notify.had_tsig and notify.keyname == XFR
            response = dns.message.make_response(notify)
            response.set_rcode(dns.rcode.REFUSED)
            secondary.sendto(response.to_wire(), peer)
            seen += 1
    secondary.close()
    assert seen == 2  # retried after REFUSED


def _primary_for(tmp_path: Path, knot_port: int, **settings: Any) -> ServedZone:
    """Our zone as knotd's primary: transfers with the xfr key, NOTIFY to knotd, xfr may register in svc."""
    return signed_zone(
        tmp_path / "state",
        transfer=TransferAcl(keys=frozenset({XFR})),
        notify=(("127.0.0.1", knot_port),),
        grants=(Grant("tsig:xfr.", ("**.svc.corp.internal",)),),
        **settings,
    )


@pytest.mark.slow
def test_knot_follows_a_tsig_signed_notify(tmp_path: Path) -> None:
    knot_port = free_port()
    zone = _primary_for(tmp_path, knot_port, notify_key=XFR)
    with (
        serving(Authority([zone], keyring=keyring())) as (_, server),
        knot_secondary(tmp_path, knot_port, server.port, notify_key=True),
    ):
        wait_serial(knot_port, zone.zone.serial)
        update = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=XFR)
        update.add("db.svc", 30, "A", "10.9.9.9")
        assert dns.query.tcp(update, "127.0.0.1", port=server.port, timeout=5).rcode() == dns.rcode.NOERROR
        wait_serial(knot_port, zone.zone.serial, seconds=8)  # only through the signed NOTIFY (SOA refresh: 1 h)


def _rrs(messages: list[dns.message.Message]) -> list[tuple[str, int, str]]:
    return [(str(rrset.name), rrset.rdtype, rd.to_text()) for m in messages for rrset in m.answer for rd in rrset]


def _transfer(authority: Authority, rdtype: str, serial: int | None = None) -> list[dns.message.Message]:
    query = dns.message.make_query(ORIGIN, rdtype)
    if serial is not None:
        soa = next(iter(authority.zones.values())).zone.soa_rrset()
        query.authority.append(dns.rrset.from_rdata(ORIGIN, 0, soa[0].replace(serial=serial)))
    query.use_tsig(keyring(), XFR)
    messages, ctx = [], None
    for wire in authority.respond(query.to_wire(), TCP_CLIENT):
        # One RRset per record: an IXFR deletes and adds records of the same RRset in one message.
        message = dns.message.from_wire(
            wire, keyring=keyring(), request_mac=query.mac, multi=True, tsig_ctx=ctx, one_rr_per_rrset=True
        )
        ctx = message.tsig_ctx
        messages.append(message)
    return messages


def test_ixfr_from_the_journal_applies_to_the_same_zone_as_an_axfr(tmp_path: Path) -> None:
    zone = signed_zone(
        tmp_path, transfer=TransferAcl(keys=frozenset({XFR})), grants=(Grant("tsig:xfr.", ("**.corp.internal",)),)
    )
    authority = Authority([zone], keyring=keyring())
    held = set(_rrs(_transfer(authority, "AXFR"))[:-1])  # what a secondary holds (closing SOA dropped)
    first = zone.zone.serial
    for name, data in (("db.svc", "10.9.9.9"), ("www", "192.0.2.99")):
        update = dns.update.UpdateMessage(ORIGIN)
        update.replace(dns.name.from_text(name, ORIGIN), 30, "A", data)
        assert authority.apply(update, "tsig:xfr.")[0] == dns.rcode.NOERROR
        _transfer(authority, "IXFR", zone.zone.serial - 1)  # another secondary follows each version
    records = _rrs(_transfer(authority, "IXFR", first))
    soa = [i for i, r in enumerate(records) if r[1] == dns.rdatatype.SOA]
    assert records[0][1] == dns.rdatatype.SOA and len(soa) == 2 * 2 + 2  # new, (old, new) per version, new
    assert _apply_ixfr(held, records) == set(_rrs(_transfer(authority, "AXFR"))[:-1])
    # Not in the journal: a full transfer.
    assert len(_rrs(_transfer(authority, "IXFR", (first - 5) % (1 << 32)))) == len(_rrs(_transfer(authority, "AXFR")))


def _records_text(rrsets: Any) -> set[str]:
    return {
        f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
        for rrset in rrsets
        for rd in rrset
    }


def _apply_ixfr(held: set[tuple[str, int, str]], records: list[tuple[str, int, str]]) -> set[tuple[str, int, str]]:
    """``held`` after an IXFR sequence (RFC 1995 §4); every record deleted must be held."""
    state, deleting = set(held), False
    for record in records[1:-1]:
        if record[1] == dns.rdatatype.SOA:
            deleting = not deleting
            (state.discard if deleting else state.add)(record)
            continue
        if deleting:
            assert record in state, record  # a secondary can only delete what it holds
            state.remove(record)
        else:
            state.add(record)
    return state


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_ixfr_after_each_random_update_equals_the_next_axfr(tmp_path: Path, signed: bool) -> None:
    """Registrations and deletions (names and empty non-terminals coming and going, NSEC3 neighbours re-linked):
    the difference of each version, found from what the update touched alone, applied to what the secondary
    held gives exactly the next AXFR; so does one IXFR spanning several versions."""
    settings: dict[str, Any] = {
        "transfer": TransferAcl(keys=frozenset({XFR})),
        "grants": (Grant("tsig:xfr.", ("**.corp.internal",)),),
        "quota": Quota(0, 0),
    }
    zone = (
        signed_zone(tmp_path, **settings)
        if signed
        else ServedZone(ZoneSettings(ORIGIN, **settings), Zone.from_text(ZONE_TEXT, ORIGIN))
    )
    authority = Authority([zone], keyring=keyring())
    held = set(_rrs(_transfer(authority, "AXFR"))[:-1])
    rng = random.Random(5)
    start, start_held = zone.zone.serial, held
    for step in range(60):
        update = dns.update.UpdateMessage(ORIGIN)
        name = dns.name.from_text(".".join(f"n{rng.randint(0, 4)}" for _ in range(rng.randint(1, 3))), ORIGIN)
        if rng.random() < 0.6:
            update.replace(name, 30, "A", f"10.0.0.{step}")
        else:
            update.delete(name)
        before = zone.zone.serial
        assert authority.apply(update, "tsig:xfr.")[0] == dns.rcode.NOERROR
        if zone.zone.serial == before:
            continue
        held = _apply_ixfr(held, _rrs(_transfer(authority, "IXFR", before)))
        assert held == set(_rrs(_transfer(authority, "AXFR"))[:-1]), step
    assert _apply_ixfr(start_held, _rrs(_transfer(authority, "IXFR", start))) == held


@pytest.mark.slow
def test_knot_follows_updates_by_ixfr_into_its_default_journal(tmp_path: Path) -> None:
    """knotd with its default journal (changes stored, zone file flushed) takes registrations, deletions and a
    key event as IXFRs, never falling back to AXFR, and ends up with exactly the zone we serve."""
    knot_port = free_port()
    zone = _primary_for(tmp_path, knot_port)
    authority = Authority([zone], keyring=keyring())
    with (
        serving(authority) as (loop, server),
        knot_secondary(tmp_path, knot_port, server.port),
    ):
        wait_serial(knot_port, zone.zone.serial)

        def update(build: Any) -> None:
            message = dns.update.UpdateMessage(ORIGIN, keyring=keyring(), keyname=XFR)
            build(message)
            assert dns.query.tcp(message, "127.0.0.1", port=server.port, timeout=5).rcode() == dns.rcode.NOERROR
            wait_serial(knot_port, zone.zone.serial)

        for i in range(3):
            update(lambda m, i=i: m.add(f"db{i}.svc", 30, "A", f"10.9.9.{i}"))
        update(lambda m: m.delete("db0.svc"))
        update(lambda m: m.replace("db1.svc", 30, "A", "10.9.9.11"))
        assert zone.keys is not None
        zone.keys.rollover("zsk", 300)  # a new DNSKEY set: every signature of the zone changes
        loop.call(authority.tick)
        wait_serial(knot_port, zone.zone.serial)
        serial = zone.zone.serial
        log_path = tmp_path / "knot.log"
        deadline = time.monotonic() + 10
        while f"zone file updated, serial {serial - 1} -> {serial}" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        log = log_path.read_text()
        assert log.count("IXFR, incoming") >= 2 * 6 and "fallback to AXFR" not in log, log
        assert "failed" not in log.split("zone will be bootstrapped")[1], log
        held = dns.zone.from_file(str(tmp_path / "secondary.zone"), origin=ORIGIN, relativize=False)
        ours = [r for m in _axfr(authority) for r in m.answer][:-1]
        assert _records_text(
            r for name, rds in held.iterate_rdatasets() for r in [dns.rrset.from_rdata_list(name, rds.ttl, list(rds))]
        ) == _records_text(ours)
