"""The validator on hand-built signed data, without sockets: the lab's zones are signed in memory and a
fetcher answers from them the way an authoritative server would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from dns.dnssectypes import Algorithm
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.dnskeybase import Flag
from prometheus_client.metrics_core import Metric

from ztdns.dnssec.aggressive import DenialCache
from ztdns.dnssec.trust import ROOT_ANCHORS, TrustAnchorError, TrustAnchors
from ztdns.dnssec.validator import Security, Validator, Verdict, _signature_verifies
from ztdns.lab.sign import LabKey, generate_key
from ztdns.lab.zones import SERVERS, build
from ztdns.model import EDE, Question, Resolution
from ztdns.resolver.validating import ResolverFetcher, ValidatingResolver

_ADDRESSES = {server: f"192.0.2.{index + 10}" for index, server in enumerate(SERVERS)}
_DENIAL = (dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.SOA)


class ZoneFetcher:
    """Answers like the authoritative servers of the lab would (no wildcard synthesis)."""

    def __init__(self, zones: dict[dns.name.Name, dns.zone.Zone]) -> None:
        self.zones = zones

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone:
        origin = max((o for o in self.zones if name.is_subdomain(o)), key=len)
        return self.zones[origin]

    def answer(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        lookup = name.parent() if rdtype == dns.rdatatype.DS and name != dns.name.root else name
        zone = self._zone_for(lookup)
        response = dns.message.make_response(dns.message.make_query(name, rdtype, want_dnssec=True))
        node = zone.get_node(name)
        if node is not None and node.get_rdataset(dns.rdataclass.IN, rdtype) is not None:
            for rdataset in node.rdatasets:
                if rdtype in (rdataset.rdtype, rdataset.covers):
                    response.answer.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))
            return response
        if node is None and not any(n.is_subdomain(name) for n in zone.nodes):
            response.set_rcode(dns.rcode.NXDOMAIN)
        for owner, other in zone.nodes.items():
            for rdataset in other.rdatasets:
                if rdataset.rdtype in _DENIAL or rdataset.covers in _DENIAL:
                    response.authority.append(dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset)))
        return response

    async def fetch(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        return self.answer(name, rdtype)


@pytest.fixture(scope="module")
def lab() -> tuple[ZoneFetcher, str]:
    built = build(_ADDRESSES)
    zones = {
        dns.name.from_text(name): dns.zone.from_text(text, name, relativize=False)
        for server in built.zones.values()
        for name, text in server
    }
    return ZoneFetcher(zones), built.root_ds


def _validate(
    lab: tuple[ZoneFetcher, str], qname: str, qtype: str, negative: tuple[str, ...] = (), iterations: int = 50
) -> Verdict:
    fetcher, root_ds = lab
    validator = Validator(
        fetcher, TrustAnchors.load(texts=(root_ds,), negative=negative), nsec3_max_iterations=iterations
    )
    name, rdtype = dns.name.from_text(qname), dns.rdatatype.from_text(qtype)
    return asyncio.run(validator.validate(name, rdtype, fetcher.answer(name, rdtype)))


@pytest.mark.parametrize(
    ("qname", "qtype", "security", "ede"),
    [
        ("www.secure.lab.", "A", Security.SECURE, None),
        ("nx.secure.lab.", "A", Security.SECURE, None),
        ("www.secure.lab.", "MX", Security.SECURE, None),
        ("deep.secure.lab.", "A", Security.SECURE, None),
        ("www.nsec3.lab.", "A", Security.SECURE, None),
        ("nx.nsec3.lab.", "A", Security.SECURE, None),
        ("www.nsec3.lab.", "MX", Security.SECURE, None),
        ("nx.optout.lab.", "A", Security.INSECURE, None),
        ("www.unsigned.optout.lab.", "A", Security.INSECURE, None),
        ("www.insecure.lab.", "A", Security.INSECURE, None),
        ("www.rsasha1.lab.", "A", Security.INSECURE, EDE.UNSUPPORTED_DNSKEY_ALGORITHM),
        ("www.digest.lab.", "A", Security.INSECURE, EDE.UNSUPPORTED_DS_DIGEST),
        ("www.bogus.lab.", "A", Security.BOGUS, EDE.DNSSEC_BOGUS),
        ("www.expired.lab.", "A", Security.BOGUS, EDE.SIGNATURE_EXPIRED),
        ("www.future.lab.", "A", Security.BOGUS, EDE.SIGNATURE_NOT_YET_VALID),
        ("www.nokey.lab.", "A", Security.BOGUS, EDE.DNSKEY_MISSING),
        ("www.wrongds.lab.", "A", Security.BOGUS, EDE.DNSKEY_MISSING),
        ("www.nosig.lab.", "A", Security.BOGUS, EDE.RRSIGS_MISSING),
        ("nx.nonsec.lab.", "A", Security.BOGUS, EDE.NSEC_MISSING),
    ],
)
def test_outcome_and_ede(
    lab: tuple[ZoneFetcher, str], qname: str, qtype: str, security: Security, ede: EDE | None
) -> None:
    verdict = _validate(lab, qname, qtype)
    assert verdict.security is security
    assert (verdict.reason.ede if verdict.reason else None) == ede


def test_extra_text_names_zone_and_record(lab: tuple[ZoneFetcher, str]) -> None:
    verdict = _validate(lab, "www.expired.lab.", "A")
    assert verdict.reason is not None
    assert verdict.reason.text == "expired.lab.: expired.lab. DNSKEY: RRSIG expired"


def test_stripped_denial_in_secure_zone_is_bogus(lab: tuple[ZoneFetcher, str]) -> None:
    fetcher, root_ds = lab
    name = dns.name.from_text("nx.secure.lab.")
    response = fetcher.answer(name, dns.rdatatype.A)
    response.authority = [r for r in response.authority if dns.rdatatype.SOA in (r.rdtype, r.covers)]
    verdict = asyncio.run(
        Validator(fetcher, TrustAnchors.load(texts=(root_ds,))).validate(name, dns.rdatatype.A, response)
    )
    assert verdict.reason is not None and verdict.reason.ede == EDE.NSEC_MISSING


def test_forged_answer_is_bogus(lab: tuple[ZoneFetcher, str]) -> None:
    fetcher, root_ds = lab
    name = dns.name.from_text("www.secure.lab.")
    response = fetcher.answer(name, dns.rdatatype.A)
    sigs = [r for r in response.answer if r.rdtype == dns.rdatatype.RRSIG]
    forged = dns.rrset.from_text(name, 3600, "IN", "A", "203.0.113.66")
    response.answer = [forged, *sigs]
    verdict = asyncio.run(
        Validator(fetcher, TrustAnchors.load(texts=(root_ds,))).validate(name, dns.rdatatype.A, response)
    )
    assert verdict.reason is not None and verdict.reason.ede == EDE.DNSSEC_BOGUS


def test_negative_trust_anchor_makes_zone_insecure(lab: tuple[ZoneFetcher, str]) -> None:
    assert _validate(lab, "www.bogus.lab.", "A", negative=("bogus.lab.",)).security is Security.INSECURE


def test_nsec3_iterations_above_limit_are_insecure(lab: tuple[ZoneFetcher, str]) -> None:
    assert _validate(lab, "nx.nsec3.lab.", "A").security is Security.SECURE
    assert _validate(lab, "nx.nsec3.lab.", "A", iterations=-1).security is Security.INSECURE


def test_wrong_trust_anchor_makes_everything_bogus(lab: tuple[ZoneFetcher, str]) -> None:
    fetcher, _ = lab
    validator = Validator(fetcher, TrustAnchors.load())  # the real IANA root, not the lab's
    name = dns.name.from_text("www.secure.lab.")
    verdict = asyncio.run(validator.validate(name, dns.rdatatype.A, fetcher.answer(name, dns.rdatatype.A)))
    assert verdict.reason is not None and verdict.reason.ede == EDE.DNSKEY_MISSING


def test_builtin_root_anchors() -> None:
    anchors = TrustAnchors.load()
    root = anchors.anchors[dns.name.root]
    assert sorted(ds.key_tag for ds in root.ds) == [20326, 38696]
    assert len(ROOT_ANCHORS) == 2


def test_anchor_file_errors_name_the_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "bad.anchor"
    path.write_text("example. IN A 192.0.2.1\n")
    with pytest.raises(TrustAnchorError, match=r"bad\.anchor"):
        TrustAnchors.load(files=[path])
    # Anchors are matched by their key bytes alone: one of another class must not load as if it were IN.
    path.write_text("example. CH DS 12345 13 2 " + "ab" * 32 + "\n")
    with pytest.raises(TrustAnchorError, match=r"bad\.anchor: .*class"):
        TrustAnchors.load(files=[path])


class _ZoneResolver:
    """A stand-in upstream: answers from the zones, like a forwarder with DO=1 CD=1 would."""

    def __init__(self, fetcher: ZoneFetcher) -> None:
        self.fetcher = fetcher

    async def resolve(self, question: Question) -> Resolution:
        assert question.dnssec_ok and question.checking_disabled
        return Resolution(self.fetcher.answer(question.name, dns.rdatatype.RdataType(question.rdtype)))

    async def close(self) -> None:
        return None

    def collect(self) -> Iterable[Metric]:
        return ()


def test_forwarding_mode_sets_ad_and_fails_bogus(lab: tuple[ZoneFetcher, str]) -> None:
    fetcher, root_ds = lab
    inner = _ZoneResolver(fetcher)
    resolver = ValidatingResolver(inner, Validator(ResolverFetcher(inner), TrustAnchors.load(texts=(root_ds,))))

    def ask(name: str, cd: bool = False) -> Resolution:
        return asyncio.run(resolver.resolve(Question(dns.name.from_text(name), dns.rdatatype.A, 1, True, cd)))

    secure = ask("www.secure.lab.")
    assert secure.response is not None and secure.response.flags & dns.flags.AD
    assert secure.security == "secure"
    bogus = ask("www.bogus.lab.")
    assert bogus.response is not None and bogus.response.rcode() == dns.rcode.SERVFAIL
    assert bogus.reason is not None and bogus.reason.ede == EDE.DNSSEC_BOGUS
    unchecked = ask("www.bogus.lab.", cd=True)
    assert unchecked.response is not None and unchecked.response.rcode() == dns.rcode.NOERROR


def _signed_a(key: LabKey, owner: str = "www.example.") -> tuple[dns.rrset.RRset, RRSIG]:
    rrset = dns.rrset.from_text(owner, 300, "IN", "A", "192.0.2.1", "192.0.2.2")
    now = int(time.time())
    sig = dns.dnssec.sign(
        rrset, key.private, dns.name.from_text("example."), key.dnskey, inception=now - 60, expiration=now + 3600
    )
    return rrset, sig


def _keyset(*keys: DNSKEY) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_rdata_list(300, list(keys))


def test_signature_check_agrees_with_dnspython() -> None:
    key, other = generate_key(Algorithm.ECDSAP256SHA256, False), generate_key(Algorithm.ECDSAP256SHA256, False)
    rrset, sig = _signed_a(key)
    for keys in (_keyset(key.dnskey), _keyset(other.dnskey, key.dnskey), _keyset(other.dnskey)):
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {dns.name.from_text("example."): keys})
            expected = True
        except dns.exception.ValidationFailure:
            expected = False
        # Twice: the second answer comes from the memo of verified signatures and must not differ.
        assert _signature_verifies(rrset, sig, keys) is expected
        assert _signature_verifies(rrset, sig, keys) is expected
    changed = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.3")
    assert not _signature_verifies(changed, sig, _keyset(key.dnskey))


def test_signature_check_refuses_revoked_and_non_zone_keys() -> None:
    key = generate_key(Algorithm.ECDSAP256SHA256, False)
    rrset, _ = _signed_a(key)
    for flags in (Flag.ZONE | Flag.REVOKE, Flag.SEP):
        changed = dns.dnssec.make_dnskey(key.private.public_key(), Algorithm.ECDSAP256SHA256, flags=flags)
        now = int(time.time())
        sig = dns.dnssec.sign(
            rrset, key.private, dns.name.from_text("example."), changed, inception=now - 60, expiration=now + 3600
        )
        assert not _signature_verifies(rrset, sig, _keyset(changed))


def _denials(lab: tuple[ZoneFetcher, str], *primers: str) -> tuple[DenialCache, Validator]:
    """A denial cache holding the (complete) NSEC/NSEC3 chains of the zones the primers are denied in."""
    fetcher, root_ds = lab
    validator = Validator(fetcher, TrustAnchors.load(texts=(root_ds,)))
    cache = DenialCache()
    for primer in primers:
        name = dns.name.from_text(primer)
        response = fetcher.answer(name, dns.rdatatype.A)
        assert asyncio.run(validator.check(name, dns.rdatatype.A, response)).security is Security.SECURE
        cache.add(response, time.time())
    return cache, validator


@pytest.mark.parametrize(
    ("qname", "qtype", "rcode"),
    [
        ("other.secure.lab.", "A", dns.rcode.NXDOMAIN),
        ("Other.SECURE.lab.", "AAAA", dns.rcode.NXDOMAIN),
        ("x.y.secure.lab.", "A", dns.rcode.NXDOMAIN),
        ("www.secure.lab.", "MX", dns.rcode.NOERROR),
        ("b.deep.secure.lab.", "A", dns.rcode.NOERROR),  # an empty non-terminal
        ("x.wild.secure.lab.", "MX", dns.rcode.NOERROR),  # the wildcard's NODATA
        ("x.wild.secure.lab.", "TXT", None),  # the wildcard has it: a positive answer, asked upstream
        ("www.secure.lab.", "A", None),
        ("other.nsec3.lab.", "A", dns.rcode.NXDOMAIN),
        ("www.nsec3.lab.", "MX", dns.rcode.NOERROR),
        ("x.wild.nsec3.lab.", "TXT", dns.rcode.NOERROR),
        ("x.wild.nsec3.lab.", "A", None),
        ("www.insecure.lab.", "A", None),  # no denials held for that zone (nor for lab.)
        ("secure.lab.", "DS", None),  # denied by lab., whose records we do not hold
    ],
)
def test_aggressive_answers_match_the_zones(
    lab: tuple[ZoneFetcher, str], qname: str, qtype: str, rcode: dns.rcode.Rcode | None
) -> None:
    cache, validator = _denials(lab, "nx.secure.lab.", "nx.nsec3.lab.")
    name, rdtype = dns.name.from_text(qname), dns.rdatatype.from_text(qtype)
    candidate = cache.synthesise(name, rdtype, time.time())
    if rcode is None:
        assert candidate is None
        return
    assert candidate is not None and candidate.rcode() == rcode
    assert candidate.flags == dns.flags.QR | dns.flags.RD | dns.flags.RA | rcode  # as make_response had them
    assert [(q.name, q.rdtype) for q in candidate.question] == [(name, rdtype)]
    assert asyncio.run(validator.check(name, rdtype, candidate)).security is Security.SECURE


def test_aggressive_nsec3_chain_follows_the_zone_parameters(lab: tuple[ZoneFetcher, str]) -> None:
    """Records announcing another salt replace the chain: the owner hashes no longer match the names hashed
    with the new salt, so nothing is synthesised (a hash memo ignoring the salt would still find them)."""
    cache, _ = _denials(lab, "nx.nsec3.lab.")
    name = dns.name.from_text("other.nsec3.lab.")
    assert cache.synthesise(name, dns.rdatatype.A, time.time()) is not None
    response = lab[0].answer(dns.name.from_text("nx.nsec3.lab."), dns.rdatatype.A)
    resalted = []
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.NSEC3:
            resalted.append(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, [r.replace(salt=b"\x01") for r in rrset]))
        else:
            resalted.append(rrset)
    response.authority = resalted
    cache.add(response, time.time())
    assert cache.synthesise(name, dns.rdatatype.A, time.time()) is None


@pytest.mark.parametrize(
    "anchor",
    ["example. IN A 192.0.2.1\n", "example. IN DS not a ds record\n", None],
    ids=["not-ds-or-dnskey", "unparsable", "missing"],
)
def test_check_rejects_anchor_files_serve_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], anchor: str | None
) -> None:
    """What `ztdns serve` would stop on (a traceback before) `ztdns check` reports, naming the key and the file."""
    from ztdns.cli import main

    if anchor is not None:
        (tmp_path / "bad.anchor").write_text(anchor)
    config = tmp_path / "ztdns.toml"
    config.write_text('[resolver]\nmode = "recursive"\n\n[dnssec]\ntrust_anchors = ["bad.anchor"]\n')
    assert main(["check", "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert "trust_anchors" in error and "bad.anchor" in error
