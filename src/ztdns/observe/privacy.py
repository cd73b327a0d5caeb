"""Privacy at the one exit: pseudonyms (ipcrypt for addresses, keyed hashes for certificate identities and ports)
and aggregates (counts where a name shows only when at least k distinct clients asked).

ipcrypt (draft-denis-ipcrypt): an address is a 16-byte block (IPv4 as IPv4-mapped IPv6).
``deterministic`` encrypts it with AES-128 (one block): the same address gives the same pseudonym under one key,
written as an address. ``ndx`` encrypts it with AES-XTS under a random 16-byte tweak: every record gets another
pseudonym (32 bytes, hex: the tweak then the ciphertext), which only the key holder can link.

Keys are random, held in memory only (never written, never logged), and replaced every ``key_rotation`` seconds:
after a rotation, old pseudonyms cannot be linked to new ones, even by ztdns. Everything here runs on a sink's own
thread, never on the serving one.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ztdns.observe.events import QueryEvent, SecurityEvent


@functools.lru_cache(maxsize=65_536)  # a client's address is parsed once, not once per record
def address_block(text: str) -> bytes:
    """The 16-byte form of an address (IPv4 as ``::ffff:a.b.c.d``); the zone of a link-local address is dropped."""
    address = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(address, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


def block_address(block: bytes) -> str:
    """The text of a 16-byte block: IPv4 when it is IPv4-mapped, IPv6 otherwise."""
    address = ipaddress.IPv6Address(block)
    mapped = address.ipv4_mapped
    return str(mapped if mapped is not None else address)


class IpcryptDeterministic:
    """ipcrypt-deterministic: AES-128 over the address block; the result written as an address."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("ipcrypt-deterministic takes a 16-byte key")
        self._encrypt = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 (one block: a PRP)

    def encrypt_block(self, block: bytes) -> bytes:
        return self._encrypt.update(block)

    def encrypt(self, text: str) -> str:
        return block_address(self._encrypt.update(address_block(text)))


class IpcryptNdx:
    """ipcrypt-ndx: AES-XTS (two AES-128 keys) over the address block with a random 16-byte tweak; the result is
    the tweak and the ciphertext, 32 bytes, written in hex.

    XTS of one block is two AES-128 block encryptions: T = AES(K2, tweak), C = AES(K1, P xor T) xor T (IEEE 1619,
    the first block of a data unit). Made so with two ECB encryptors kept for the key, it costs two calls a
    record instead of a new XTS cipher a record (~10 µs); tests hold it to the draft's vectors and to
    ``cryptography``'s XTS."""

    def __init__(self, key: bytes, tweaks: Callable[[int], bytes] | None = None) -> None:
        if len(key) != 32:
            raise ValueError("ipcrypt-ndx takes a 32-byte key")
        self._data = Cipher(algorithms.AES(key[:16]), modes.ECB()).encryptor()  # noqa: S305 (one block: a PRP)
        self._tweak = Cipher(algorithms.AES(key[16:]), modes.ECB()).encryptor()  # noqa: S305
        self._tweaks = tweaks or RandomBytes().take

    def encrypt_with(self, tweak: bytes, text: str) -> bytes:
        mask = int.from_bytes(self._tweak.update(tweak))
        masked = (int.from_bytes(address_block(text)) ^ mask).to_bytes(16)
        return tweak + (int.from_bytes(self._data.update(masked)) ^ mask).to_bytes(16)

    def encrypt(self, text: str) -> str:
        return self.encrypt_with(self._tweaks(16), text).hex()


class RandomBytes:
    """Random bytes from the kernel, drawn 4 KB at a time (one system call for 256 tweaks, not one each)."""

    def __init__(self, chunk: int = 4096) -> None:
        self._chunk = chunk
        self._pool = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._pool):
            self._pool, self._at = os.urandom(max(self._chunk, size)), 0
        taken = self._pool[self._at : self._at + size]
        self._at += size
        return taken


_PSEUDONYMS_MEMO = 65_536  # addresses whose deterministic pseudonym is kept until the key rotates


class Pseudonyms:
    """The pseudonyms of one sink, under keys replaced every ``rotation`` seconds (``clock``: time.time)."""

    def __init__(self, mode: str, rotation: float, clock: Callable[[], float] = time.time) -> None:
        self.mode = mode
        self.rotation = rotation
        self.clock = clock
        self.rotations = 0
        self._rotate_at = 0.0
        self._check()

    def _check(self) -> None:
        now = self.clock()
        if now < self._rotate_at:
            return
        self._rotate_at = now + self.rotation
        self.rotations += 1
        self._ipcrypt: IpcryptDeterministic | IpcryptNdx = (
            IpcryptNdx(_two_halves()) if self.mode == "ndx" else IpcryptDeterministic(os.urandom(16))
        )
        self._hash_key = os.urandom(32)
        # Pseudonyms that are the same for the same input under this key, kept until it rotates (bounded).
        self._addresses: dict[str, str] = {}
        self._ports: dict[int, int] = {}

    def address(self, text: str) -> str:
        self._check()
        if self.mode == "ndx":  # another pseudonym every record: nothing to keep
            try:
                return self._ipcrypt.encrypt(text)
            except ValueError:  # not an address (a test client, a unix socket): hashed like an identity
                return self.text(text)
        made = self._addresses.get(text)
        if made is None:
            try:
                made = self._ipcrypt.encrypt(text)
            except ValueError:
                made = self.text(text)
            if len(self._addresses) >= _PSEUDONYMS_MEMO:
                self._addresses.clear()
            self._addresses[text] = made
        return made

    def address_bytes(self, text: str) -> bytes:
        """The deterministic pseudonym as 16 bytes (dnstap's address field)."""
        self._check()
        ipcrypt = self._ipcrypt
        assert isinstance(ipcrypt, IpcryptDeterministic)  # the config refuses ndx for dnstap
        try:
            return ipcrypt.encrypt_block(address_block(text))
        except ValueError:
            return bytes(16)

    def text(self, text: str) -> str:
        """A keyed hash of a certificate identity (or anything else that names a client): 16 bytes, hex."""
        self._check()
        return hashlib.blake2b(text.encode("utf-8", "replace"), key=self._hash_key, digest_size=16).hexdigest()

    def port(self, port: int) -> int:
        """A keyed hash of the client port, as a port number (a source port can link queries of one client)."""
        self._check()
        made = self._ports.get(port)
        if made is None:
            digest = hashlib.blake2b(port.to_bytes(2, "big"), key=self._hash_key, digest_size=2).digest()
            made = self._ports[port] = int.from_bytes(digest, "big")  # at most 65,536 ports
        return made


def _two_halves() -> bytes:
    """A random AES-XTS key: two different AES-128 keys (cryptography refuses equal halves)."""
    while True:
        key = os.urandom(32)
        if key[:16] != key[16:]:
            return key


class Aggregate:
    """Counts of one window: queries, types, rcodes, decisions, and names with the distinct clients that asked.

    A name's clients are kept only until k of them are seen (then only its count grows); they are keyed-hash
    pseudonyms that live as long as the window. A name asked by fewer than k distinct clients is never exported:
    only how many such names there were.
    """

    def __init__(self, k: int, window: float, max_names: int = 100_000) -> None:
        self.k = k
        self.window = window
        self.max_names = max_names
        self._start = time.time()
        self._reset(self._start)

    def _reset(self, now: float) -> None:
        self._start = now
        self._key = os.urandom(16)
        self.queries = 0
        self.qtypes: Counter[str] = Counter()
        self.rcodes: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.detections: Counter[str] = Counter()  # security events by kind and detector
        self.names: dict[str, tuple[int, set[bytes]]] = {}
        self.overflow = 0

    def add(self, events: Iterable[QueryEvent]) -> None:
        names = self.names
        k = self.k
        for event in events:
            answer = event.answer
            self.queries += 1
            if answer.qtype is not None:
                self.qtypes[answer.qtype] += 1
            self.rcodes[answer.rcode] += 1
            self.decisions[answer.decision] += 1
            qname = answer.qname
            if qname is None:
                continue
            entry = names.get(qname)
            if entry is None:
                if len(names) >= self.max_names:
                    self.overflow += 1
                    continue
                entry = names[qname] = (0, set())
            count, clients = entry
            if len(clients) < k:
                who = event.client.certificate_identity or event.client.address
                clients.add(hashlib.blake2b(who.encode(), key=self._key, digest_size=8).digest())
            names[qname] = (count + 1, clients)

    def add_security(self, events: Iterable[SecurityEvent]) -> None:
        for event in events:
            self.detections[f"{event.kind}:{event.fields.get('detector', '')}"] += 1

    def due(self, now: float) -> bool:
        return now - self._start >= self.window

    def close(self, now: float) -> dict[str, object]:
        """The window's record (and a new window): only names at least k distinct clients asked for."""
        shown = {name: count for name, (count, clients) in self.names.items() if len(clients) >= self.k}
        record: dict[str, object] = {
            "start": _iso(self._start),
            "end": _iso(now),
            "k": self.k,
            "queries": self.queries,
            "qtypes": dict(self.qtypes),
            "rcodes": dict(self.rcodes),
            "decisions": dict(self.decisions),
            "detections": dict(self.detections),
            "names": dict(sorted(shown.items(), key=lambda item: -item[1])),
            "names_below_k": len(self.names) - len(shown),
            "queries_untracked": self.overflow,  # names beyond max_names: counted, never named
        }
        self._reset(now)
        return record


def _iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
