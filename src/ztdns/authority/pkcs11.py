"""PKCS#11 key storage (tested with SoftHSM2): zone keys are generated in the token and used from it.

The private half is created sensitive and non-extractable, so it never leaves the token: we hold only its object
handle and send data to sign. One session per process (a worker), opened on first use and opened again after a
fork (PKCS#11 state does not survive ``fork``); private-key handles are cached per session. PKCS#11 forbids two
threads in one session at once, and both the UDP lane thread and the event loop may sign, so a lock serialises
the token's operations.

ECDSA P-256: SoftHSM2 has no CKM_ECDSA_SHA256, so SHA-256 is computed here and CKM_ECDSA signs the digest; its
output (r||s, 32 bytes each) is already the RFC 6605 signature. Ed25519: CKM_EDDSA over the data (RFC 8080).
A key is found by its CKA_ID (16 random bytes, the record's locator ``pkcs11:<hex>``); a key missing from the
token is an error, never regenerated, like a missing key file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

import dns.name
import pkcs11
import pkcs11.exceptions
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from ztdns.authority.keys import ECDSAP256SHA256, ED25519, KeyStoreError, ZoneKey

LOCATOR_PREFIX = "pkcs11:"
_CURVES = {ECDSAP256SHA256: (KeyType.EC, "secp256r1"), ED25519: (KeyType.EC_EDWARDS, "1.3.101.112")}
_GENERATE = {ECDSAP256SHA256: Mechanism.EC_KEY_PAIR_GEN, ED25519: Mechanism.EC_EDWARDS_KEY_PAIR_GEN}
# The private key may sign and nothing else, and can never be read out of the token.
_PRIVATE_TEMPLATE = {
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}


@dataclass(frozen=True, slots=True)
class TokenSettings:
    module: str  # path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    token_label: str
    pin: str


class _Session:
    """The process's one session with one token (PKCS#11 login state is per process, not per session)."""

    def __init__(self, pid: int, session: pkcs11.Session) -> None:
        self.pid = pid
        self.session = session
        self.handles: dict[bytes, SignMixin] = {}


# (module, token label) → this process's session; every Token for the same token shares it.
_sessions: dict[tuple[str, str], _Session] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_registry_lock = threading.Lock()


class Token:
    """One PKCS#11 token: a session per process, cached private-key handles, one operation at a time."""

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        self._key = (settings.module, settings.token_label)
        with _registry_lock:
            self.lock = _locks.setdefault(self._key, threading.Lock())

    def _open(self) -> _Session:
        """This process's session (call with ``lock`` held)."""
        pid = os.getpid()
        current = _sessions.get(self._key)
        if current is not None and current.pid == pid:
            return current
        try:
            library = pkcs11.lib(self.settings.module)
            if current is not None:  # forked: the child must initialise the library for itself
                library.reinitialize()
            token = library.get_token(token_label=self.settings.token_label)
            session = token.open(rw=True, user_pin=self.settings.pin)
        except (pkcs11.exceptions.PKCS11Error, OSError, RuntimeError) as exc:
            raise KeyStoreError(
                f"PKCS#11 token {self.settings.token_label!r} ({self.settings.module}): {_describe(exc)}"
            ) from None
        opened = _sessions[self._key] = _Session(pid, session)
        return opened

    def close(self) -> None:
        """End this process's session with the token (shutdown); the next use opens and logs in again."""
        with self.lock:
            current = _sessions.get(self._key)
            if current is not None and current.pid == os.getpid():
                del _sessions[self._key]
                try:
                    current.session.close()
                except pkcs11.exceptions.PKCS11Error as exc:
                    raise KeyStoreError(f"closing the PKCS#11 session: {_describe(exc)}") from None

    def handle(self, key_id: bytes) -> SignMixin:
        """The private key object with CKA_ID ``key_id`` (call with ``lock`` held)."""
        current = self._open()
        handle = current.handles.get(key_id)
        if handle is None:
            try:
                found = current.session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
            except pkcs11.exceptions.NoSuchKey:
                raise KeyStoreError(
                    f"key pkcs11:{key_id.hex()} is missing from token {self.settings.token_label!r}; "
                    "refusing to generate a replacement"
                ) from None
            assert isinstance(found, SignMixin)
            handle = current.handles[key_id] = found
        return handle

    def generate(self, algorithm: int, label: str) -> Pkcs11Key:
        if algorithm not in _CURVES:
            raise KeyStoreError(f"unsupported algorithm {algorithm}")
        key_type, curve = _CURVES[algorithm]
        key_id = os.urandom(16)
        with self.lock:
            current = self._open()
            try:
                params = current.session.create_domain_parameters(
                    key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
                )
                public, private = params.generate_keypair(
                    store=True,
                    label=label,
                    id=key_id,
                    mechanism=_GENERATE[algorithm],
                    private_template=_PRIVATE_TEMPLATE,
                )
            except pkcs11.exceptions.PKCS11Error as exc:
                raise KeyStoreError(f"PKCS#11 key generation failed: {_describe(exc)}") from None
            assert isinstance(private, SignMixin)
            current.handles[key_id] = private
            point = public[Attribute.EC_POINT]
        return Pkcs11Key(self, key_id, algorithm, _dnskey_public(algorithm, point))

    def destroy(self, key_id: bytes) -> None:
        """Destroy the private and public key objects with CKA_ID ``key_id`` (purge); gone already is fine."""
        with self.lock:
            current = self._open()
            current.handles.pop(key_id, None)
            try:
                for found in list(current.session.get_objects({Attribute.ID: key_id})):
                    found.destroy()
            except pkcs11.exceptions.PKCS11Error as exc:
                raise KeyStoreError(f"destroying pkcs11:{key_id.hex()}: {_describe(exc)}") from None

    def load(self, key_id: bytes, algorithm: int) -> Pkcs11Key:
        with self.lock:
            self.handle(key_id)  # the private half must be there
            try:
                public = self._open().session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=key_id)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise KeyStoreError(f"public key pkcs11:{key_id.hex()}: {_describe(exc)}") from None
            point = public[Attribute.EC_POINT]
        return Pkcs11Key(self, key_id, algorithm, _dnskey_public(algorithm, point))


class Pkcs11Key:
    """A zone key's private half in a token (implements :class:`ztdns.authority.keys.PrivateKey`)."""

    def __init__(self, token: Token, key_id: bytes, algorithm: int, public: bytes) -> None:
        self.token = token
        self.key_id = key_id
        self.algorithm = algorithm
        self._public = public
        self._prehash = algorithm == ECDSAP256SHA256
        self._mechanism = Mechanism.ECDSA if self._prehash else Mechanism.EDDSA

    def sign(self, data: bytes) -> bytes:
        message = hashlib.sha256(data).digest() if self._prehash else data
        token = self.token
        with token.lock:
            try:
                signature = token.handle(self.key_id).sign(message, mechanism=self._mechanism)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise KeyStoreError(f"PKCS#11 signing with pkcs11:{self.key_id.hex()}: {_describe(exc)}") from None
        return bytes(signature)

    def public_key(self) -> bytes:
        return self._public

    @property
    def locator(self) -> str:
        return LOCATOR_PREFIX + self.key_id.hex()


class Pkcs11Store:
    """A :class:`ztdns.authority.kasp.KeyStore` keeping every zone's keys in one token."""

    def __init__(self, token: Token) -> None:
        self.token = token

    def create(self, zone: dns.name.Name, algorithm: int, sep: bool) -> tuple[str, ZoneKey]:
        label = f"ztdns {zone.to_text()} {'ksk' if sep else 'zsk'}"
        private = self.token.generate(algorithm, label)
        return private.locator, ZoneKey.make(zone, private, sep)

    def load(self, zone: dns.name.Name, locator: str, sep: bool, algorithm: int) -> ZoneKey:
        return ZoneKey.make(zone, self.token.load(_key_id(locator), algorithm), sep)

    def delete(self, locator: str) -> None:
        self.token.destroy(_key_id(locator))


def _key_id(locator: str) -> bytes:
    if not locator.startswith(LOCATOR_PREFIX):
        raise KeyStoreError(f"key {locator} is not in a PKCS#11 token (the key store is pkcs11)")
    try:
        return bytes.fromhex(locator.removeprefix(LOCATOR_PREFIX))
    except ValueError:
        raise KeyStoreError(f"malformed PKCS#11 key locator {locator!r}") from None


def _dnskey_public(algorithm: int, point: bytes) -> bytes:
    """The DNSKEY public key field from CKA_EC_POINT: a DER OCTET STRING around the point (PKCS#11 3.0), or
    the bare point from older tokens."""
    size = 65 if algorithm == ECDSAP256SHA256 else 32
    if len(point) == size + 2 and point[:2] == bytes((0x04, size)):
        point = point[2:]
    if len(point) != size:
        raise KeyStoreError(f"token returned a public key of unexpected length {len(point)}")
    # P-256: the uncompressed SEC1 point 04||x||y; DNSSEC (RFC 6605) carries x||y.
    if algorithm == ECDSAP256SHA256:
        if point[0] != 0x04:
            raise KeyStoreError("token returned a compressed P-256 public key")
        return point[1:]
    return point


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
