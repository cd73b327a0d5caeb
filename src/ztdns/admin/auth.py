"""Who is asking and what they may do: roles, token hashes, console sessions with CSRF tokens, login limits."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from ztdns.config.admin import ROLES, AdminConfig, Role

TOKEN_PREFIX = "ztd_"  # noqa: S105 (a prefix that makes tokens recognisable in leaks, not a secret)
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``name`` is the certificate identity or ``token:NAME``."""

    name: str
    role: Role
    via: str  # mtls, token, session


def allows(role: Role, needed: Role) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str, scrypt: bool = False) -> str:
    """The stored form of a token: ``sha256:HEX``, or scrypt with a random salt for tokens people choose."""
    if not scrypt:
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    salt = secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt:{n}:{r}:{p}:{salt.hex()}:{digest.hex()}"


def token_matches(stored: str, token: str) -> bool:
    kind, _, rest = stored.partition(":")
    if kind == "sha256":
        return hmac.compare_digest(stored, hash_token(token))
    n, r, p, salt, digest = rest.split(":")
    found = hashlib.scrypt(
        token.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
    )
    return hmac.compare_digest(found.hex(), digest)


def certificate_principal(settings: AdminConfig, identity: str | None) -> Principal | None:
    """The role of a verified client certificate's identity: an exact entry first, else the longest prefix."""
    if identity is None:
        return None
    best: tuple[int, Role] | None = None
    for entry in settings.identities:
        if entry.identity == identity:
            return Principal(identity, entry.role, "mtls")
        prefix = entry.identity[:-1] if entry.identity.endswith("*") else None
        if prefix is not None and identity.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), entry.role)
    return None if best is None else Principal(identity, best[1], "mtls")


def token_principal(settings: AdminConfig, token: str) -> Principal | None:
    for entry in settings.tokens:
        if token_matches(entry.hash, token):
            return Principal(f"token:{entry.name}", entry.role, "token")
    return None


@dataclass
class Session:
    """A console login. The role is looked up again on every request (a token removed ends its sessions)."""

    id: str
    csrf: str
    token_name: str
    expires: float


@dataclass
class Sessions:
    lifetime: float
    by_id: dict[str, Session] = field(default_factory=dict)

    def create(self, token_name: str, now: float | None = None) -> Session:
        now = time.monotonic() if now is None else now
        self._expire(now)
        while len(self.by_id) >= MAX_SESSIONS:
            self.by_id.pop(next(iter(self.by_id)))  # the oldest
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), token_name, now + self.lifetime)
        self.by_id[session.id] = session
        return session

    def get(self, session_id: str, now: float | None = None) -> Session | None:
        now = time.monotonic() if now is None else now
        session = self.by_id.get(session_id)
        if session is None or session.expires <= now:
            self.by_id.pop(session_id, None)
            return None
        return session

    def drop(self, session_id: str) -> None:
        self.by_id.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for key in [key for key, session in self.by_id.items() if session.expires <= now]:
            del self.by_id[key]


@dataclass
class LoginLimiter:
    """At most ``per_minute`` login attempts per client address in any 60 seconds (successful ones count too)."""

    per_minute: int
    attempts: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if len(self.attempts) > 10_000:
            self.attempts.clear()  # bounded memory under a spray from many addresses; limits restart
        recent = self.attempts.setdefault(address, deque())
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return False
        recent.append(now)
        return True
