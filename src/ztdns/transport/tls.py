"""TLS material for one encrypted listener: certificate, key, client CA bundle and CRLs, re-read when they
change.

A :class:`TlsMaterial` holds the current generation of everything built from the files (an
``ssl.SSLContext`` for DoT/DoH, a client-certificate verifier for DoQ, which aioquic does not verify
itself). Listeners ask for the current generation at each accept, so a rotation affects new connections
only; established connections keep the context they were accepted with. A file that fails to load leaves
the previous generation in place and logs why.
"""

from __future__ import annotations

import _ssl
import asyncio
import collections
import ctypes
import logging
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from ztdns.config.listen import ListenConfig
from ztdns.identity.sni import remember_server_name

log = logging.getLogger(__name__)

ALPN = {"dot": ["dot"], "doh": ["h2", "http/1.1"], "doq": ["doq"]}
# TLS 1.2 only: ECDHE for forward secrecy, AEAD ciphers only (TLS 1.3 suites are all AEAD already).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsError(Exception):
    """The configured TLS files cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None
    crls: tuple[Path, ...]
    client_auth: str
    min_version: str
    alpn: tuple[str, ...]

    @classmethod
    def from_config(cls, config: ListenConfig, base_dir: Path = Path(".")) -> TlsFiles:
        if config.transport not in ALPN or not config.cert or not config.key:
            raise TlsError(f"listener {config.address} ({config.transport}) has no TLS certificate and key")
        return cls(
            cert=base_dir / config.cert,
            key=base_dir / config.key,
            ca=base_dir / config.ca if config.ca else None,
            crls=tuple(base_dir / crl for crl in config.crl),
            client_auth=config.client_auth,
            min_version=config.tls_min_version,
            alpn=tuple(ALPN[config.transport]),
        )

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key, *((self.ca,) if self.ca else ()), *self.crls)

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any file is replaced or rewritten (missing files stamp as zeros)."""
        stamps = []
        for path in self.paths():
            try:
                st = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


@dataclass(frozen=True)
class Generation:
    """Everything built from one reading of the files."""

    number: int
    context: ssl.SSLContext
    cert_pem: bytes
    key_pem: bytes
    ca_certs: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    _store: list[crypto.X509Store] = field(default_factory=list, repr=False, compare=False)

    def verify_client_chain(self, leaf: x509.Certificate, chain: list[x509.Certificate]) -> str | None:
        """Verify a client certificate the way the ssl module does for TCP (CA, dates, CRL, client EKU).
        Returns None when valid, else the reason. Used for DoQ, where aioquic does not verify clients."""
        try:
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        except ValueError:
            return "malformed extended key usage"
        if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return "certificate is not for client authentication"
        context = crypto.X509StoreContext(
            self._x509_store(),
            crypto.X509.from_cryptography(leaf),
            [crypto.X509.from_cryptography(c) for c in chain],
        )
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as exc:
            return str(exc.args[0]) if exc.args else "verification failed"
        return None

    def _x509_store(self) -> crypto.X509Store:
        if not self._store:
            store = crypto.X509Store()
            for cert in self.ca_certs:
                store.add_cert(crypto.X509.from_cryptography(cert))
            for crl in self.crls:
                store.add_crl(crl)
            if self.crls:
                store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
            self._store.append(store)
        return self._store[0]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: {exc.strerror or exc}") from None


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise TlsError(f"{path}: not a CRL ({exc})") from None


def build_generation(files: TlsFiles, number: int) -> Generation:
    """Read and check every file, then build the contexts. Raises TlsError naming the bad file."""
    cert_pem, key_pem = _read(files.cert), _read(files.key)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TlsError(f"{files.cert}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{files.key}: not an unencrypted PEM private key ({exc})") from None
    if key.public_key() != chain[0].public_key():
        raise TlsError(f"{files.key}: does not match the certificate in {files.cert}")
    ca_certs: list[x509.Certificate] = []
    if files.ca is not None:
        try:
            ca_certs = x509.load_pem_x509_certificates(_read(files.ca))
        except ValueError as exc:
            raise TlsError(f"{files.ca}: not a PEM certificate bundle ({exc})") from None
    crls = tuple(_load_crl(path) for path in files.crls)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if files.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(list(files.alpn))
    context.sni_callback = remember_server_name  # DoT client ids in the SNI (ztdns.identity.sni)
    # ssl loads keys and CA/CRL bundles from files only: feed it the bytes we checked, not the paths again,
    # so a file replaced between checking and loading cannot slip in unchecked.
    with tempfile.TemporaryDirectory(prefix="ztdns-tls-") as tmp:
        tmp_cert, tmp_key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        tmp_cert.write_bytes(cert_pem)
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        try:
            context.load_cert_chain(tmp_cert, tmp_key)
        except ssl.SSLError as exc:
            raise TlsError(f"{files.cert}/{files.key}: {exc}") from None
        if files.client_auth != "off":
            bundle = Path(tmp, "ca.pem")
            bundle.write_bytes(
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca_certs)
                + b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
            )
            context.load_verify_locations(cafile=bundle)
            context.verify_mode = ssl.CERT_REQUIRED if files.client_auth == "require" else ssl.CERT_OPTIONAL
            if crls:
                context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            _no_auto_chain(context)
    return Generation(number, context, cert_pem, key_pem, tuple(ca_certs), crls)


_SSL_CTRL_MODE = 33
_SSL_MODE_NO_AUTO_CHAIN = 0x8


def _no_auto_chain(context: ssl.SSLContext) -> None:
    """Send the certificate file's chain as it is. With client CAs loaded to verify clients, OpenSSL otherwise
    completes a leaf-only chain from them and sends our CA's own certificate too (sslyze warns; the client has
    it, or it could not trust us). Python's ssl has no SSL_CTX_set_mode: call it through ctypes on the SSL_CTX
    that CPython's context object holds right after its object header, once that pointer proved to be the one
    (its options and verify mode read back as the context's); else leave the default (the CA is sent)."""
    if sys.implementation.name != "cpython":
        return
    try:
        libssl = ctypes.CDLL(_ssl.__file__)  # its symbol lookup reaches the libssl it is linked with
        ctrl, get_options, get_verify_mode = (
            libssl.SSL_CTX_ctrl,
            libssl.SSL_CTX_get_options,
            libssl.SSL_CTX_get_verify_mode,
        )
    except (OSError, AttributeError):
        return
    ctrl.restype, ctrl.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    get_options.restype, get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    get_verify_mode.restype, get_verify_mode.argtypes = ctypes.c_int, [ctypes.c_void_p]
    ssl_ctx = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    verify_mode = {ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}.get(context.verify_mode)
    if ssl_ctx and get_options(ssl_ctx) == int(context.options) and get_verify_mode(ssl_ctx) == verify_mode:
        ctrl(ssl_ctx, _SSL_CTRL_MODE, _SSL_MODE_NO_AUTO_CHAIN, None)


class TlsMaterial:
    """The current generation of a listener's TLS files; ``reload()`` re-reads them if they changed."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        self._current = build_generation(files, 1)
        self._listeners: list[Callable[[Generation], None]] = []

    @classmethod
    def from_config(cls, config: ListenConfig, base_dir: Path = Path(".")) -> TlsMaterial:
        return cls(TlsFiles.from_config(config, base_dir))

    @property
    def current(self) -> Generation:
        return self._current

    def on_change(self, callback: Callable[[Generation], None]) -> None:
        """Call CALLBACK with each new generation (DoQ rebuilds its QUIC configuration)."""
        self._listeners.append(callback)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the files if any changed (or always with FORCE). True when a new generation is in use.
        On error the old generation stays and the error is logged: a half-written rotation must not take the
        listener down."""
        stamp = self.files.stamp()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            generation = build_generation(self.files, self._current.number + 1)
        except TlsError as exc:
            log.error("TLS material not reloaded, keeping generation %d: %s", self._current.number, exc)
            return False
        self._current = generation
        log.info("TLS material reloaded (generation %d) from %s", generation.number, self.files.cert)
        for callback in self._listeners:
            callback(generation)
        return True

    async def watch(self, interval: float) -> None:
        """Poll the files every INTERVAL seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload()


def refusal_reason(exc: BaseException) -> str:
    """A short, loggable reason why a TLS handshake failed (expired, unknown CA, revoked, no certificate…)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return f"{type(exc).__name__}: {exc}"


class RefusalLog:
    """Refused handshakes, logged so that a scanner cannot flood the log: the first ``detailed`` of each
    ``window`` seconds one line each, the rest counted by reason and summarised when the window closes."""

    def __init__(
        self, label: str, window: float = 10.0, detailed: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.label = label
        self.window = window
        self.detailed = detailed
        self.clock = clock
        self.total = 0
        self._window_start = -window
        self._logged = 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def refused(self, reason: str) -> None:
        self.total += 1
        now = self.clock()
        if now - self._window_start >= self.window:
            self.flush()
            self._window_start, self._logged = now, 0
        if self._logged < self.detailed:
            self._logged += 1
            log.warning("%s: handshake refused: %s", self.label, reason)
        else:
            self._suppressed[reason] += 1

    def flush(self) -> None:
        """Summarise what the window suppressed (also called periodically, so a summary never waits long)."""
        if not self._suppressed:
            return
        count = sum(self._suppressed.values())
        reasons = "; ".join(f"{reason} x{n}" for reason, n in self._suppressed.most_common())
        log.warning("%s: %d more handshakes refused: %s", self.label, count, reasons)
        self._suppressed.clear()
