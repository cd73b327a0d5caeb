"""Zone keys in a real SoftHSM2 token: generated there, never extractable, signing a zone that dnspython,
ldns-verify-zone and a fresh process (a forked worker) all accept; a restart finds the same keys by CKA_ID."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from authority_lab import ORIGIN, ZONE_TEXT, keyring, need, serving
from ztdns.authority.build import build_authority
from ztdns.authority.handler import Authority, ServedZone, ZoneSettings
from ztdns.authority.kasp import KeyManager, Policy
from ztdns.authority.keys import ALGORITHMS, ECDSAP256SHA256, KeyStoreError
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.zone import Zone, rrset_of
from ztdns.client import ClientInfo, Transport
from ztdns.config import parse_config

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "ztdns-test"
PIN = "1234"
CLIENT = ClientInfo(Transport.UDP, "127.0.0.1", 5353)

pkcs11 = pytest.importorskip("pkcs11")
from ztdns.authority.pkcs11 import Pkcs11Store, Token, TokenSettings  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def token_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenSettings]:
    need("softhsm2-util")
    if not Path(MODULE).exists():
        pytest.skip(f"needs {MODULE} (Debian package softhsm2)")
    work = tmp_path_factory.mktemp("softhsm")
    (work / "tokens").mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {work}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        # SoftHSM2 reads its configuration when the library is initialised: set it before anything loads it.
        patch.setenv("SOFTHSM2_CONF", str(conf))
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", "5678"],
            check=True,
            capture_output=True,
        )
        yield TokenSettings(MODULE, LABEL, PIN)
        # The next user of the library (another test module) initialises it again with its own configuration.
        pkcs11.lib(MODULE).finalize()


def served_zone(state: Path, token: Token, algorithm: str = "ecdsap256sha256") -> ServedZone:
    keys = KeyManager(ORIGIN, Policy(algorithm=ALGORITHMS[algorithm]), state, Pkcs11Store(token))
    settings = ZoneSettings(ORIGIN, transfer=TransferAcl(keys=frozenset({dns.name.from_text("xfr.")})))
    return ServedZone(settings, Zone.from_text(ZONE_TEXT, ORIGIN), keys)


def validated_answer(authority: Authority, name: str, rdtype: str, dnskeys: dns.rrset.RRset) -> None:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    wire = authority.fast(query.to_wire(), CLIENT)
    assert wire is not None
    response = dns.message.from_wire(wire)
    rrset = response.find_rrset(
        response.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
    )
    sigs = response.find_rrset(
        response.answer, rrset.name, dns.rdataclass.IN, dns.rdatatype.RRSIG, dns.rdatatype.from_text(rdtype)
    )
    dns.dnssec.validate(rrset, sigs, {ORIGIN: dnskeys})


def dnskey_rrset(zone: ServedZone) -> dns.rrset.RRset:
    rdataset = zone.zone.get(ORIGIN, dns.rdatatype.DNSKEY)
    assert rdataset is not None
    return rrset_of(ORIGIN, rdataset)


def test_private_key_stays_in_the_token(token_settings: TokenSettings) -> None:
    token = Token(token_settings)
    key = token.generate(ECDSAP256SHA256, "ztdns test extractable")
    with token.lock:
        private = token.handle(key.key_id)
        assert private[pkcs11.Attribute.SENSITIVE] is True
        assert private[pkcs11.Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[pkcs11.Attribute.VALUE]


@pytest.mark.parametrize("algorithm", ["ecdsap256sha256", "ed25519"])
def test_zone_signed_with_token_keys_validates(token_settings: TokenSettings, tmp_path: Path, algorithm: str) -> None:
    zone = served_zone(tmp_path, Token(token_settings), algorithm)
    assert zone.keys is not None
    assert all(r.locator.startswith("pkcs11:") for r in zone.keys.records())
    assert not (tmp_path / "keys").exists()  # nothing written to disk
    authority = Authority([zone], keyring=keyring())
    for name, rdtype in (("www.corp.internal.", "A"), ("corp.internal.", "DNSKEY"), ("a.wild.corp.internal.", "A")):
        validated_answer(authority, name, rdtype, dnskey_rrset(zone))
    need("ldns-verify-zone")
    with serving(authority) as (_, server):
        lines = [
            rrset.to_text()
            for message in dns.query.xfr(
                "127.0.0.1", ORIGIN, port=server.port, keyring=keyring(), keyname="xfr.", relativize=False
            )
            for rrset in message.answer
        ]
    path = tmp_path / "axfr.zone"
    path.write_text("\n".join(lines[:-1]) + "\n")
    result = subprocess.run(["ldns-verify-zone", "-V", "2", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_restart_finds_keys_and_missing_key_is_an_error(token_settings: TokenSettings, tmp_path: Path) -> None:
    token = Token(token_settings)
    first = served_zone(tmp_path, token)
    tags = [k.tag for k in first.keys.keyset().dnskeys] if first.keys else []
    token.close()  # as at shutdown: the next use opens a new session and finds the keys by CKA_ID
    again = served_zone(tmp_path, Token(token_settings))
    assert again.keys is not None and [k.tag for k in again.keys.keyset().dnskeys] == tags
    validated_answer(Authority([again]), "www.corp.internal.", "A", dnskey_rrset(again))
    # Delete the ZSK's private half from the token: loading it must fail, not silently make a new key.
    zsk = next(r for r in again.keys.records() if r.role == "zsk")
    with token.lock:
        token.handle(bytes.fromhex(zsk.locator.removeprefix("pkcs11:"))).destroy()
    token.close()
    with pytest.raises(KeyStoreError, match="missing from token"):
        served_zone(tmp_path, token)


def test_forked_worker_opens_its_own_session(token_settings: TokenSettings, tmp_path: Path) -> None:
    zone = served_zone(tmp_path, Token(token_settings))
    authority = Authority([zone])
    validated_answer(authority, "www.corp.internal.", "A", dnskey_rrset(zone))  # the parent's session is open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: sign something new with the inherited objects
        code = 1
        try:
            validated_answer(authority, "mail.corp.internal.", "A", dnskey_rrset(zone))
            code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"\x00"
    os.waitpid(pid, 0)
    # And the parent's own session still works after the child went away.
    validated_answer(authority, "ns1.corp.internal.", "A", dnskey_rrset(zone))


def test_config_selects_the_token(
    token_settings: TokenSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTDNS_TEST_PIN", PIN)
    (tmp_path / "corp.zone").write_text(ZONE_TEXT)
    text = textwrap.dedent(f"""
        [server]
        state_dir = "{tmp_path}/state"
        [authority]
        key_store = "pkcs11"
        pkcs11 = {{ module = "{MODULE}", token_label = "{LABEL}", pin_env = "ZTDNS_TEST_PIN" }}
        [[authority.zones]]
        name = "corp.internal"
        file = "corp.zone"
        """)
    config = parse_config(text, str(tmp_path / "ztdns.toml"), tmp_path)
    authority = build_authority(config.authority, tmp_path, tmp_path / "state")
    zone = authority.zones[ORIGIN]
    assert zone.keys is not None and all(r.locator.startswith("pkcs11:") for r in zone.keys.records())
    validated_answer(authority, "www.corp.internal.", "A", dnskey_rrset(zone))
    monkeypatch.delenv("ZTDNS_TEST_PIN")
    with pytest.raises(KeyStoreError, match="ZTDNS_TEST_PIN is not set"):
        build_authority(config.authority, tmp_path, tmp_path / "state2")


def test_purged_keys_are_destroyed_in_the_token(token_settings: TokenSettings, tmp_path: Path) -> None:
    token = Token(token_settings)
    clock = [1_800_000_000.0]
    policy = Policy(dnskey_ttl=1, propagation_delay=1, purge_delay=10)
    keys = KeyManager(ORIGIN, policy, tmp_path, Pkcs11Store(token), clock=lambda: clock[0])
    keys.ensure_keys()
    old = next(r for r in keys.records() if r.role == "zsk")
    keys.rollover("zsk", max_ttl=1)
    clock[0] += 100
    keys.due(1)
    assert all(r.tag != old.tag for r in keys.records())
    with pytest.raises(KeyStoreError, match="missing from token"):
        keys.zone_key(old)
