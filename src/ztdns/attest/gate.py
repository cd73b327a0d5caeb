"""The agent's check of a protective resolver that must attest (``require_attestation`` on a ``[[server]]``).

A server is used only while its latest report verified: checked before first use, again every ``interval``
seconds, and whenever the agent drops its connection (a reconnect may reach another machine). A server that
failed is checked again at most every :data:`RETRY` seconds, so a resolver that attests again is used again
without a restart of the agent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from pathlib import Path

from ztdns.attest.report import PATH
from ztdns.attest.verify import FetchError, References, fetch, summary, verify_report
from ztdns.config.attestation import RequireAttestation

log = logging.getLogger("ztdns.attest")

RETRY = 5.0


class AttestationGate:
    """Whether one server may be used now; :meth:`allows` verifies (in a thread) when the last result is due."""

    def __init__(
        self,
        requirement: RequireAttestation,
        url: str,
        context: ssl.SSLContext,
        server_name: str,
        base_dir: Path = Path("."),
        retry: float = RETRY,
    ) -> None:
        self.requirement = requirement
        self.url = requirement.url or url
        self.context = context
        self.server_name = server_name
        self.ak_path = base_dir / requirement.ak if requirement.ak else None
        self.retry = retry
        self.verified = False
        self.reason = "not checked yet"
        self.due = 0.0
        self._lock = asyncio.Lock()

    @staticmethod
    def default_url(host: str, port: int) -> str:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"https://{authority}{PATH}"

    async def allows(self) -> bool:
        async with self._lock:  # one check at a time: concurrent queries wait for its answer
            if time.monotonic() >= self.due:
                self.verified, self.reason = await asyncio.to_thread(self.check)
                wait = self.requirement.interval if self.verified else min(self.retry, self.requirement.interval)
                self.due = time.monotonic() + wait
                if not self.verified:
                    log.warning("protective server %s not used: %s", self.url, self.reason)
            return self.verified

    def check(self) -> tuple[bool, str]:
        """Fetch and verify now (blocking). The AK file is read each time: a missing one fails the check (the
        server is not used, and the log says why) rather than the agent."""
        requirement = self.requirement
        try:
            ak = self.ak_path.read_bytes() if self.ak_path is not None else None
        except OSError as exc:
            return False, f"attestation: cannot read ak {self.ak_path}: {exc.strerror or exc}"
        references = References(
            frozenset(requirement.code_digest), frozenset(requirement.config_digest), ak, requirement.allow_unattested
        )
        try:
            fetched = fetch(self.url, self.context, server_name=self.server_name)
        except FetchError as exc:
            return False, f"attestation: {exc}"
        return summary(verify_report(fetched.report, fetched.nonce, fetched.spki, references))

    def reconnected(self) -> None:
        """The connection was dropped: verify again before the next use."""
        self.due = 0.0
