"""``no_certificate = "refuse"``: on a listener with ``client_auth = "optional"``, clients that show no certificate
are marked (``ClientInfo.certificate_required``) so the identify stage refuses them with EDE 18 instead of
identifying them by address.

A handler wrapper rather than a field set by each connection, so DoT, DoH and DoQ get it from one place; clients
with a certificate pass through untouched, and only certificate-less ones (refused anyway) pay for the copy.
"""

from __future__ import annotations

import dataclasses

from ztdns.client import ClientInfo
from ztdns.config.listen import ListenConfig
from ztdns.transport import Handler


class RefuseWithoutCertificate:
    """A :class:`~ztdns.transport.Handler` that marks certificate-less clients before passing queries on."""

    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    def fast(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return self.inner.fast(wire, _marked(client))

    async def handle(self, wire: bytes, client: ClientInfo) -> bytes | None:
        return await self.inner.handle(wire, _marked(client))


def _marked(client: ClientInfo) -> ClientInfo:
    if client.certificate_identity is None and not client.certificate_required:
        return dataclasses.replace(client, certificate_required=True)
    return client


def listener_handler(config: ListenConfig, handler: Handler) -> Handler:
    """The handler a listener with ``config`` should call."""
    return RefuseWithoutCertificate(handler) if config.no_certificate == "refuse" else handler
