"""Authoritative zones: serving, online DNSSEC signing, dynamic registration, transfers, rate limiting.

Owns: zone data (``zone``), RFC 1034 answering (``answer``), RFC 2136 updates with per-identity grants
(``update``), AXFR/NOTIFY (``transfer``), RRL (``rrl``), the ``Handler`` over all of it with replayed
pre-rendered answers (``handler``), the service inside ``ztdns serve`` (``daemon``: the shared UDP and TCP
transports, key ticker, NOTIFY, reload), the resolver's view of the zones (``view``, a pipeline stage) and the
mTLS HTTPS registration API (``api``), and DNSSEC signing: RRSIGs (``signing``), NSEC3 chains and compact denial
(``nsec3``), key timelines with CDS policy, DS polling of the parent and DS push (``kasp``, ``handler``, the
queries themselves in ``daemon``), key files and token keys (``keys``, ``pkcs11``); validation stays in
:mod:`ztdns.dnssec`; server cookies are :mod:`ztdns.detect.cookies`. Config: ``[authority]`` (see
docs/authority.md). Metrics: the shared ``ztdns.observe.metrics.Metrics`` counts answers (``ztdns_queries``
kind authoritative/authoritative_replay); ``Authority.collect()`` exports ``ztdns_authority_*``: updates,
transfers, RRL drops/slips, replays, serials, signatures. Client data touched: source address (RRL buckets per
prefix, transfer ACL, cookies) and the update's TSIG key name or certificate identity (grants); none of it is
stored or logged beyond refused-update reasons.
"""
