"""The HTTPS registration API: workloads register their own names, authenticated by their mTLS certificate.

    PUT    /v1/records/<name>/<type>   body {"ttl": 30, "rdata": ["10.1.2.3"]}   replace the RRset
    DELETE /v1/records/<name>/<type>                                              remove the RRset

The caller's identity is the verified client certificate's (a SPIFFE ID); the zone's grants decide, exactly as
for an RFC 2136 UPDATE (each request becomes one, applied with :meth:`Authority.apply`), so a refused request
leaves the zone unchanged. Answers: 200 with the new serial, 400 malformed, 401 no SPIFFE ID (URI SAN) in the
certificate, 403 not granted, 404 no served zone holds the name, 405/415 wrong method or content type.

The request handling is a pure function (:func:`registration_response`); the HTTP/2 and HTTP/1.1 engines, TLS
handshake, certificate verification and identity extraction are the DoH listener's (``ztdns.transport.doh``),
with this module's handler in place of DNS.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.update

from ztdns.authority.handler import Authority
from ztdns.config.listen import ListenConfig
from ztdns.identity.certificates import is_spiffe_id
from ztdns.transport.doh import DohConnection, HttpResponse, http_error
from ztdns.transport.stream import TlsStreamListener
from ztdns.transport.tls import TlsMaterial

PREFIX = "/v1/records/"
MAX_RECORDS = 100
_STATUS: dict[int, int] = {
    dns.rcode.REFUSED: 403,
    dns.rcode.NOTAUTH: 404,
    dns.rcode.NOTZONE: 404,
    dns.rcode.FORMERR: 400,
}


def registration_response(
    authority: Authority, method: str, target: str, content_type: str | None, body: bytes, identity: str | None
) -> HttpResponse:
    """The HTTP answer to one registration request from ``identity`` (None: no usable certificate identity)."""
    path = target.partition("?")[0]
    if not path.startswith(PREFIX):
        return http_error(404, "not found")
    if method not in ("PUT", "DELETE"):
        return http_error(405, "only PUT and DELETE", ("allow", "PUT, DELETE"))
    if not is_spiffe_id(identity):
        # The URI SAN only: a DNS SAN or a CN (which may read like a SPIFFE ID) never authorises a registration.
        return http_error(401, "a client certificate with a SPIFFE ID (URI SAN) is required")
    name_text, _, type_text = unquote(path[len(PREFIX) :]).rpartition("/")
    try:
        name = dns.name.from_text(name_text)
        rdtype = dns.rdatatype.from_text(type_text)
    except (dns.exception.DNSException, ValueError):
        return http_error(400, "expected /v1/records/<name>/<type>")
    served = authority.zone_for(name)
    if served is None:
        return http_error(404, f"no zone served here holds {name}")
    update = dns.update.UpdateMessage(served.origin)
    if method == "DELETE":
        update.delete(name, rdtype)
    else:
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            return http_error(415, "content-type must be application/json")
        records = _records(body, rdtype)
        if isinstance(records, HttpResponse):
            return records
        ttl, rdatas = records
        if ttl > served.settings.max_ttl:
            return http_error(400, f"ttl {ttl} is above the zone's max_zone_ttl {served.settings.max_ttl}")
        update.replace(name, ttl, *rdatas)
    rcode, reason = authority.apply(update, identity)
    if rcode != dns.rcode.NOERROR:
        return http_error(_STATUS.get(rcode, 500), reason or dns.rcode.to_text(dns.rcode.Rcode.make(rcode)))
    payload = json.dumps({"zone": served.origin.to_text(), "serial": served.zone.serial}).encode()
    return HttpResponse(200, [("content-type", "application/json"), ("content-length", str(len(payload)))], payload)


def _records(body: bytes, rdtype: dns.rdatatype.RdataType) -> tuple[int, list[dns.rdata.Rdata]] | HttpResponse:
    """TTL and rdata from a JSON body ``{"ttl": int, "rdata": [text, ...]}``, or the 400 to answer."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return http_error(400, "body is not JSON")
    if not isinstance(document, dict) or set(document) - {"ttl", "rdata"}:
        return http_error(400, 'expected {"ttl": seconds, "rdata": [record data, ...]}')
    ttl = document.get("ttl", 300)
    texts = document.get("rdata")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 0x7FFFFFFF:
        return http_error(400, "ttl must be an integer from 0 to 2147483647")
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_RECORDS or not all(isinstance(t, str) for t in texts):
        return http_error(400, f"rdata must be a list of 1 to {MAX_RECORDS} strings")
    try:
        # Names inside record data (SRV targets, ...) are absolute: there is no zone-file origin here.
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=dns.name.root) for text in texts]
    except (dns.exception.DNSException, ValueError) as exc:
        return http_error(400, f"bad {dns.rdatatype.to_text(rdtype)} record data: {exc}")
    return ttl, rdatas


class RegistrationConnection(DohConnection):
    """One HTTPS connection to the registration API: DoH's HTTP engines, registration instead of DNS."""

    def answer_now(self, method: str, target: str, content_type: str | None, body: bytes) -> HttpResponse | bytes:
        # Registration is answered at once: never a DNS query for answer_later.
        authority = self.handler
        assert isinstance(authority, Authority)
        return registration_response(authority, method, target, content_type, body, self.client.certificate_identity)


def api_listen_config(address: str, cert: str, key: str, ca: str, crl: list[str], tls_min_version: str) -> ListenConfig:
    """The listener settings: HTTPS (h2 and http/1.1 by ALPN) that always requires a verified client certificate."""
    return ListenConfig.model_validate(
        {
            "transport": "doh",
            "address": address,
            "cert": cert,
            "key": key,
            "ca": ca,
            "crl": crl,
            "client_auth": "require",
            "tls_min_version": tls_min_version,
        }
    )


async def start_registration_api(config: ListenConfig, authority: Authority, tls: TlsMaterial) -> TlsStreamListener:
    """Listen on ``config.address``; close with ``await listener.close(drain)``."""
    listener = TlsStreamListener(config, authority, tls, RegistrationConnection)
    await listener.start()
    return listener
