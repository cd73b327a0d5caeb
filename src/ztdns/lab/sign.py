"""The lab's zone signer: NSEC or NSEC3 (with opt-out) chains and RRSIGs with chosen validity times.

dnspython signs RRsets but only builds NSEC chains; the lab also needs NSEC3 and signatures that are
deliberately expired or not yet valid, so the chain building lives here. Production signing is elsewhere
(:mod:`ztdns.authority.signing`); this one favours control over speed and is meant for small test zones.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.dnssec
import dns.name
import dns.node
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dns.dnssectypes import Algorithm
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.dnskeybase import Flag

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class LabKey:
    private: PrivateKey
    dnskey: DNSKEY

    @property
    def is_ksk(self) -> bool:
        return bool(self.dnskey.flags & Flag.SEP)


def generate_key(algorithm: Algorithm, ksk: bool) -> LabKey:
    private: PrivateKey
    if algorithm == Algorithm.ECDSAP256SHA256:
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm in (Algorithm.RSASHA256, Algorithm.RSASHA1):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"the lab does not generate {algorithm.name} keys")
    flags = Flag.ZONE | (Flag.SEP if ksk else 0)
    dnskey = dns.dnssec.make_dnskey(private.public_key(), algorithm, flags=flags)
    return LabKey(private, dnskey)


@dataclass(frozen=True)
class Denial:
    """How the zone proves non-existence: NSEC, or NSEC3 with these parameters."""

    nsec3: bool = False
    iterations: int = 0
    salt: bytes = b""
    opt_out: bool = False


def nsec3_label(name: dns.name.Name, denial: Denial) -> str:
    digest = dns.dnssec.nsec3_hash(name, denial.salt, denial.iterations, "SHA1")
    return digest.lower()


def sign_zone(
    zone: dns.zone.Zone,
    keys: list[LabKey],
    *,
    inception: float,
    expiration: float,
    denial: Denial,
) -> None:
    """Add DNSKEYs, the denial chain and RRSIGs to ``zone`` (built with ``relativize=False``) in place."""
    origin = zone.origin
    assert origin is not None
    soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
    assert soa is not None
    negative_ttl = min(soa.ttl, soa[0].minimum)
    apex = zone.find_node(origin)
    dnskeys = apex.find_rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY, create=True)
    dnskeys.update_ttl(soa.ttl)
    for key in keys:
        dnskeys.add(key.dnskey)

    delegations = {
        name
        for name, node in zone.nodes.items()
        if name != origin and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS) is not None
    }

    def occluded(name: dns.name.Name) -> bool:
        return any(name != cut and name.is_subdomain(cut) for cut in delegations)

    owners = sorted(name for name in zone.nodes if not occluded(name))
    if denial.nsec3:
        _add_nsec3_chain(zone, owners, delegations, denial, negative_ttl)
    else:
        _add_nsec_chain(zone, owners, negative_ttl)

    ksks = [key for key in keys if key.is_ksk] or keys
    zsks = [key for key in keys if not key.is_ksk] or keys
    for name, node in list(zone.nodes.items()):
        if occluded(name):
            continue
        at_cut = name in delegations
        for rdataset in list(node.rdatasets):
            if rdataset.rdtype == dns.rdatatype.RRSIG:
                continue
            if at_cut and rdataset.rdtype not in (dns.rdatatype.DS, dns.rdatatype.NSEC):
                continue  # the child signs its own NS; glue is never signed
            signers = ksks if rdataset.rdtype == dns.rdatatype.DNSKEY else zsks
            rrset = dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))
            sigs = node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdataset.rdtype, create=True)
            for key in signers:
                rrsig = dns.dnssec.sign(
                    rrset,
                    key.private,
                    origin,
                    key.dnskey,
                    inception=inception,
                    expiration=expiration,
                    policy=dns.dnssec.allow_all_policy,
                    origin=origin,
                )
                sigs.add(rrsig, rdataset.ttl)


def _type_list(rdtypes: set[dns.rdatatype.RdataType]) -> str:
    return " ".join(dns.rdatatype.to_text(t) for t in sorted(rdtypes))


def _add_nsec_chain(zone: dns.zone.Zone, owners: list[dns.name.Name], ttl: int) -> None:
    for index, name in enumerate(owners):
        node = zone.find_node(name)
        following = owners[(index + 1) % len(owners)]
        types = {r.rdtype for r in node.rdatasets} | {dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
        nsec = dns.rdata.from_text("IN", "NSEC", f"{following} {_type_list(types)}")
        node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC, create=True).add(nsec, ttl)


def _add_nsec3_chain(
    zone: dns.zone.Zone,
    owners: list[dns.name.Name],
    delegations: set[dns.name.Name],
    denial: Denial,
    ttl: int,
) -> None:
    origin = zone.origin
    assert origin is not None
    flags = 1 if denial.opt_out else 0
    salt = denial.salt.hex() or "-"
    param = dns.rdata.from_text("IN", "NSEC3PARAM", f"1 0 {denial.iterations} {salt}")
    zone.find_node(origin).find_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3PARAM, create=True).add(param, 0)

    types_at: dict[dns.name.Name, set[dns.rdatatype.RdataType]] = {}
    for name in owners:
        node = zone.find_node(name)
        rdtypes = {r.rdtype for r in node.rdatasets}
        insecure_cut = name in delegations and dns.rdatatype.DS not in rdtypes
        if insecure_cut and denial.opt_out:
            continue  # opt-out: unsigned delegations stay out of the chain
        if not insecure_cut:
            rdtypes.add(dns.rdatatype.RRSIG)
        types_at[name] = rdtypes
        # Empty non-terminals between the apex and this name get (empty) NSEC3 records too.
        parent = name.parent() if name != origin else origin
        while parent != origin and parent.is_subdomain(origin):
            types_at.setdefault(parent, set())
            parent = parent.parent()

    hashed = sorted((nsec3_label(name, denial), types) for name, types in types_at.items())
    for index, (label, rdtypes) in enumerate(hashed):
        following = hashed[(index + 1) % len(hashed)][0]
        nsec3 = dns.rdata.from_text(
            "IN", "NSEC3", f"1 {flags} {denial.iterations} {salt} {following} {_type_list(rdtypes)}"
        )
        owner = dns.name.Name((label.encode(), *origin.labels))
        zone.find_node(owner, create=True).find_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3, create=True).add(
            nsec3, ttl
        )
