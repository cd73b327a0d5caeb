"""Client ids claimed in the TLS server name (SNI) of DoT and DoQ: ``kid-phone.dns.home.example`` claims
``kid-phone``.

As AdGuard Home reads them: the first label of the server name the client asked for, when the name has at least
three labels and the label is a valid client id. Like the DoH path id it is a claim, not authentication
(docs/policy.md, "Client ids"); :class:`ztdns.identity.IdentityMap` maps it to an identity after certificates.

DoT: the listener's TLS context remembers the name in its SNI callback (:func:`remember_server_name`), on the
connection's SSL object; :func:`client_id_from_server_name` reads it when the handshake is done. DoQ: the
listener notes the name from the client's hello and asks :func:`client_id_of`.

Client data: the server name the client sent, kept on its connection only.
"""

from __future__ import annotations

import ssl

from ztdns.config.identity import CLIENT_ID

_ATTRIBUTE = "ztdns_server_name"


def remember_server_name(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
    """An ``SSLContext.sni_callback``: keep the requested name on the connection (None: no SNI sent)."""
    setattr(connection, _ATTRIBUTE, server_name)


def client_id_from_server_name(connection: ssl.SSLObject | None) -> str | None:
    """The client id the connection's server name claims, or None."""
    return client_id_of(getattr(connection, _ATTRIBUTE, None))


def client_id_of(server_name: str | None) -> str | None:
    """The client id a TLS server name claims: its first label, if it has three or more; else None."""
    if server_name is None or server_name.count(".") < 2:
        return None
    label = server_name.partition(".")[0].lower()
    return label if CLIENT_ID.fullmatch(label) is not None else None
