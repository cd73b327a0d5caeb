"""The lab's zones and the cases they exercise, built and signed in memory (no I/O here).

Topology: a root server, a server for the TLD ``lab.``, one server for all second-level zones and a slow
server. Every second-level zone shows one thing a validator or a recursor must get right; :data:`CASES` lists
the queries that show it and the outcome a correct validating resolver gives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
from dns.dnssectypes import Algorithm, DSDigest

from ztdns.lab.sign import Denial, LabKey, generate_key, sign_zone
from ztdns.model import EDE

ROOT, TLD, SLD, SLOW, POISON = "root", "tld", "sld", "slow", "poison"
SERVERS = (ROOT, TLD, SLD, SLOW, POISON)
# Delay of the slow server, seconds: long enough to be measured, short enough to stay below resolver timeouts.
SLOW_DELAY = 0.3
DAY = 86_400


@dataclass(frozen=True)
class Case:
    """A query against the lab and what a correct validating resolver answers."""

    qname: str
    qtype: str
    rcode: str  # NOERROR, NXDOMAIN or SERVFAIL
    secure: bool  # AD set
    ede: EDE | None  # the EDE a validating resolver attaches (SERVFAIL cases), None if none expected
    shows: str


CASES: tuple[Case, ...] = (
    Case("www.secure.lab.", "A", "NOERROR", True, None, "secure NSEC zone, positive answer"),
    Case("nx.secure.lab.", "A", "NXDOMAIN", True, None, "NSEC NXDOMAIN proof"),
    Case("www.secure.lab.", "MX", "NOERROR", True, None, "NSEC NODATA proof"),
    Case("deep.secure.lab.", "A", "NOERROR", True, None, "NSEC NODATA at an empty non-terminal"),
    Case("x.wild.secure.lab.", "A", "NOERROR", True, None, "NSEC wildcard expansion proof"),
    Case("x.wild.secure.lab.", "MX", "NOERROR", True, None, "NSEC wildcard NODATA"),
    Case("www.dname.secure.lab.", "A", "NOERROR", True, None, "DNAME into an NSEC3 zone"),
    Case("chain.secure.lab.", "A", "NOERROR", False, None, "CNAME chain secure → secure → insecure zone"),
    Case("www.nsec3.lab.", "A", "NOERROR", True, None, "secure NSEC3 zone, positive answer"),
    Case("nx.nsec3.lab.", "A", "NXDOMAIN", True, None, "NSEC3 NXDOMAIN (closest encloser) proof"),
    Case("www.nsec3.lab.", "MX", "NOERROR", True, None, "NSEC3 NODATA proof"),
    Case("x.wild.nsec3.lab.", "A", "NOERROR", True, None, "NSEC3 wildcard expansion proof"),
    Case("x.wild.nsec3.lab.", "TXT", "NOERROR", True, None, "NSEC3 wildcard NODATA"),
    Case("www.unsigned.optout.lab.", "A", "NOERROR", False, None, "NSEC3 opt-out insecure delegation"),
    Case("nx.optout.lab.", "A", "NXDOMAIN", False, None, "NXDOMAIN covered by an opt-out NSEC3"),
    Case("www.insecure.lab.", "A", "NOERROR", False, None, "insecure delegation (no DS, NSEC proof)"),
    Case("nx.insecure.lab.", "A", "NXDOMAIN", False, None, "NXDOMAIN in an insecure zone"),
    Case("www.bogus.lab.", "A", "SERVFAIL", False, EDE.DNSSEC_BOGUS, "corrupted signature"),
    Case("www.expired.lab.", "A", "SERVFAIL", False, EDE.SIGNATURE_EXPIRED, "expired signatures"),
    Case("www.future.lab.", "A", "SERVFAIL", False, EDE.SIGNATURE_NOT_YET_VALID, "not-yet-valid signatures"),
    Case("www.nokey.lab.", "A", "SERVFAIL", False, EDE.DNSKEY_MISSING, "DS in parent, no DNSKEY in zone"),
    Case("www.wrongds.lab.", "A", "SERVFAIL", False, EDE.DNSKEY_MISSING, "DS matches no DNSKEY"),
    Case("www.nosig.lab.", "A", "SERVFAIL", False, EDE.RRSIGS_MISSING, "signed zone, RRSIG stripped"),
    Case("nx.nonsec.lab.", "A", "SERVFAIL", False, EDE.NSEC_MISSING, "signed zone, denial without NSEC"),
    Case("www.rsasha1.lab.", "A", "NOERROR", False, EDE.UNSUPPORTED_DNSKEY_ALGORITHM, "RSASHA1 (RFC 8624)"),
    Case("www.digest.lab.", "A", "NOERROR", False, EDE.UNSUPPORTED_DS_DIGEST, "DS with GOST digest only"),
    Case("www.lame.lab.", "A", "NOERROR", True, None, "one lame and one working server"),
    Case("www.dead.lab.", "A", "SERVFAIL", False, EDE.NO_REACHABLE_AUTHORITY, "only lame servers"),
    Case("www.slow.lab.", "A", "NOERROR", False, None, "a server answering after 300 ms"),
)


@dataclass
class ZoneSpec:
    name: str
    server: str
    body: str
    keys: list[LabKey] = field(default_factory=list)  # empty: unsigned
    denial: Denial = field(default_factory=Denial)
    valid_from: float = -3600.0  # signature inception and expiration, relative to now
    valid_until: float = 14 * DAY
    ds: str = "match"  # match, none, wrong (a key the zone does not have), gost (unsupported digest only)
    damage: Callable[[dns.zone.Zone], None] | None = None
    delegation: str = ""  # extra NS/glue lines for the parent (default: ns.<zone> on the SLD server)


@dataclass(frozen=True)
class LabZones:
    zones: dict[str, list[tuple[str, str]]]  # server → [(zone name, signed zone text)]
    root_ds: str  # trust anchor, DS presentation format
    root_dnskey: str
    root_hints: str
    poison: str  # out-of-bailiwick records the poison server stuffs into every referral (zone format)


def poison_records(addresses: dict[str, str]) -> str:
    """What ``poison.lab.``'s server adds to its referrals: data for names it has no authority over (a
    secure and an insecure zone's address, their name servers, the TLD's delegation), all pointing at itself.
    A resolver that caches any of it answers those names wrongly."""
    evil = addresses[POISON]
    return (
        f"www.insecure.lab. 3600 IN A {POISONED_ADDRESS}\nwww.secure.lab. 3600 IN A {POISONED_ADDRESS}\n"
        f"insecure.lab. 3600 IN NS ns.insecure.lab.\nns.insecure.lab. 3600 IN A {evil}\n"
        f"lab. 3600 IN NS ns.poison.lab.\nns.nic.lab. 3600 IN A {evil}\n"
    )


# The address in every poisoned record; no lab zone holds it.
POISONED_ADDRESS = "198.51.100.66"


def _soa(ns: str) -> str:
    return f"@ 3600 IN SOA {ns} hostmaster.lab. 1 3600 600 86400 300\n"


def _leaf(name: str, addresses: dict[str, str], extra: str = "") -> str:
    return (
        _soa(f"ns.{name}")
        + f"@ 3600 IN NS ns\nns 3600 IN A {addresses[SLD]}\n"
        + 'www 3600 IN A 192.0.2.1\nwww 3600 IN AAAA 2001:db8::1\ntxt 3600 IN TXT "lab"\n'
        + extra
    )


def _remove_rrsig(zone: dns.zone.Zone, name: str, covered: dns.rdatatype.RdataType) -> None:
    node = zone.find_node(dns.name.from_text(name))
    node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered)


def _corrupt_rrsig(zone: dns.zone.Zone, name: str, covered: dns.rdatatype.RdataType) -> None:
    node = zone.find_node(dns.name.from_text(name))
    sigs = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered)
    damaged = [sig.replace(signature=bytes(b ^ 0x5A for b in sig.signature)) for sig in sigs]
    node.replace_rdataset(dns.rdataset.from_rdata_list(sigs.ttl, damaged))


def _remove_dnskey(zone: dns.zone.Zone) -> None:
    assert zone.origin is not None
    node = zone.find_node(zone.origin)
    node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.DNSKEY)


def _remove_nsec(zone: dns.zone.Zone) -> None:
    for node in zone.nodes.values():
        node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)
        node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.NSEC)


def _ecdsa(ksk_and_zsk: bool = False) -> list[LabKey]:
    if ksk_and_zsk:
        return [generate_key(Algorithm.ECDSAP256SHA256, True), generate_key(Algorithm.ECDSAP256SHA256, False)]
    return [generate_key(Algorithm.ECDSAP256SHA256, True)]


def _specs(addresses: dict[str, str]) -> list[ZoneSpec]:
    sld = addresses[SLD]
    return [
        ZoneSpec(
            "secure.lab.",
            SLD,
            _leaf(
                "secure.lab.",
                addresses,
                '*.wild 3600 IN A 192.0.2.2\n*.wild 3600 IN TXT "wild"\n'
                "chain 3600 IN CNAME chain.nsec3.lab.\ndname 3600 IN DNAME nsec3.lab.\n"
                "a.b.deep 3600 IN A 192.0.2.3\n",
            ),
            _ecdsa(ksk_and_zsk=True),
        ),
        ZoneSpec(
            "nsec3.lab.",
            SLD,
            _leaf(
                "nsec3.lab.",
                addresses,
                "*.wild 3600 IN A 192.0.2.4\nchain 3600 IN CNAME www.insecure.lab.\n",
            ),
            _ecdsa(),
            Denial(nsec3=True),
        ),
        ZoneSpec(
            "optout.lab.",
            SLD,
            _leaf("optout.lab.", addresses, f"unsigned 3600 IN NS ns.unsigned\nns.unsigned 3600 IN A {sld}\n"),
            _ecdsa(),
            Denial(nsec3=True, opt_out=True),
        ),
        ZoneSpec("unsigned.optout.lab.", SLD, _leaf("unsigned.optout.lab.", addresses), ds="none"),
        ZoneSpec("insecure.lab.", SLD, _leaf("insecure.lab.", addresses), ds="none"),
        ZoneSpec(
            "bogus.lab.",
            SLD,
            _leaf("bogus.lab.", addresses),
            _ecdsa(),
            damage=lambda z: _corrupt_rrsig(z, "www.bogus.lab.", dns.rdatatype.A),
        ),
        ZoneSpec(
            "expired.lab.",
            SLD,
            _leaf("expired.lab.", addresses),
            _ecdsa(),
            valid_from=-20 * DAY,
            valid_until=-3 * DAY,
        ),
        ZoneSpec(
            "future.lab.",
            SLD,
            _leaf("future.lab.", addresses),
            _ecdsa(),
            valid_from=3 * DAY,
            valid_until=20 * DAY,
        ),
        ZoneSpec("nokey.lab.", SLD, _leaf("nokey.lab.", addresses), _ecdsa(), damage=_remove_dnskey),
        ZoneSpec("wrongds.lab.", SLD, _leaf("wrongds.lab.", addresses), _ecdsa(), ds="wrong"),
        ZoneSpec(
            "nosig.lab.",
            SLD,
            _leaf("nosig.lab.", addresses),
            _ecdsa(),
            damage=lambda z: _remove_rrsig(z, "www.nosig.lab.", dns.rdatatype.A),
        ),
        ZoneSpec("nonsec.lab.", SLD, _leaf("nonsec.lab.", addresses), _ecdsa(), damage=_remove_nsec),
        ZoneSpec("rsasha1.lab.", SLD, _leaf("rsasha1.lab.", addresses), [generate_key(Algorithm.RSASHA1, True)]),
        ZoneSpec("digest.lab.", SLD, _leaf("digest.lab.", addresses), _ecdsa(), ds="gost"),
        ZoneSpec(
            "lame.lab.",
            SLD,
            _leaf("lame.lab.", addresses, f"@ 3600 IN NS ns0\nns0 3600 IN A {addresses[ROOT]}\n"),
            _ecdsa(),
            delegation=f"lame NS ns0.lame\nns0.lame A {addresses[ROOT]}\nlame NS ns.lame\nns.lame A {sld}\n",
        ),
        ZoneSpec(
            "slow.lab.",
            SLOW,
            _soa("ns.slow.lab.") + f"@ NS ns\nns A {addresses[SLOW]}\nwww A 192.0.2.5\n",
            ds="none",
            delegation=f"slow NS ns.slow\nns.slow A {addresses[SLOW]}\n",
        ),
        ZoneSpec(
            "poison.lab.",
            POISON,
            _soa("ns.poison.lab.")
            + f"@ NS ns\nns A {addresses[POISON]}\nwww A 192.0.2.6\nsub NS ns.sub\nns.sub A {addresses[POISON]}\n",
            ds="none",
            delegation=f"poison NS ns.poison\nns.poison A {addresses[POISON]}\n",
        ),
    ]


def _ds_lines(spec: ZoneSpec) -> str:
    label = spec.name.removesuffix(".lab.")
    ksks = [key for key in spec.keys if key.is_ksk]
    if spec.ds == "none" or not ksks:
        return ""
    owner = dns.name.from_text(spec.name)
    ds: dns.rdata.Rdata
    if spec.ds == "wrong":
        ds = dns.dnssec.make_ds(owner, generate_key(Algorithm.ECDSAP256SHA256, True).dnskey, DSDigest.SHA256)
    elif spec.ds == "gost":
        key = ksks[0].dnskey
        ds = dns.rdata.from_text("IN", "DS", f"{dns.dnssec.key_id(key)} {key.algorithm} 3 {os.urandom(32).hex()}")
    else:
        ds = dns.dnssec.make_ds(owner, ksks[0].dnskey, DSDigest.SHA256, policy=dns.dnssec.allow_all_policy)
    return f"{label} 3600 IN DS {ds.to_text()}\n"


def _zone(spec: ZoneSpec, now: float) -> dns.zone.Zone:
    zone = dns.zone.from_text(f"$ORIGIN {spec.name}\n$TTL 3600\n{spec.body}", relativize=False)
    if spec.keys:
        sign_zone(
            zone,
            spec.keys,
            inception=now + spec.valid_from,
            expiration=now + spec.valid_until,
            denial=spec.denial,
        )
        if spec.damage is not None:
            spec.damage(zone)
    return zone


def build(addresses: dict[str, str], now: float | None = None) -> LabZones:
    """Generate keys, build and sign every zone, children first so that parents carry their DS."""
    now = time.time() if now is None else now
    out: dict[str, list[tuple[str, str]]] = {server: [] for server in SERVERS}
    tld_body = (
        _soa("ns.nic.lab.")
        + f"@ NS ns.nic\nns.nic A {addresses[TLD]}\na.root A {addresses[ROOT]}\n"
        + f"dead NS ns.dead\nns.dead A {addresses[ROOT]}\n"
    )
    for spec in _specs(addresses):
        zone = _zone(spec, now)
        out[spec.server].append((spec.name, zone.to_text(relativize=False)))
        if spec.name.count(".") != 2:
            continue  # below a second-level zone: its parent carries the delegation itself
        label = spec.name.removesuffix(".lab.")
        tld_body += spec.delegation or f"{label} NS ns.{label}\nns.{label} A {addresses[SLD]}\n"
        tld_body += _ds_lines(spec)
    tld = ZoneSpec("lab.", TLD, tld_body, _ecdsa())
    out[TLD].append(("lab.", _zone(tld, now).to_text(relativize=False)))

    root_body = (
        _soa("a.root.lab.")
        + f"@ NS a.root.lab.\nlab. NS ns.nic.lab.\nns.nic.lab. A {addresses[TLD]}\n"
        + f"a.root.lab. A {addresses[ROOT]}\n"
        + _ds_lines(tld).replace("lab ", "lab. ", 1)
    )
    root_spec = ZoneSpec(".", ROOT, root_body, _ecdsa(ksk_and_zsk=True))
    out[ROOT].append((".", _zone(root_spec, now).to_text(relativize=False)))

    ksk = next(key for key in root_spec.keys if key.is_ksk)
    root_ds = dns.dnssec.make_ds(dns.name.root, ksk.dnskey, DSDigest.SHA256)
    hints = f". 3600000 IN NS a.root.lab.\na.root.lab. 3600000 IN A {addresses[ROOT]}\n"
    return LabZones(
        zones=out,
        root_ds=f". 3600 IN DS {root_ds.to_text()}\n",
        root_dnskey=f". 3600 IN DNSKEY {ksk.dnskey.to_text()}\n",
        root_hints=hints,
        poison=poison_records(addresses),
    )
