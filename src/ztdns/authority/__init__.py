"""Authoritative zones: serving, online DNSSEC signing, dynamic registration, transfers, rate limiting.

Owns: zone data (``zone``), RFC 1034 answering (``answer``), RFC 2136 updates with per-identity grants
(``update``), AXFR/NOTIFY (``transfer``), RRL (``rrl``), the ``Handler`` over all of it (``service``) and
small asyncio listeners (``server``). Signing, denial and keys live in :mod:`ztdns.dnssec` (signing, nsec3,
kasp, keys). Config: ``[authority]`` (see docs/authority.md). Metrics: ``Authority.stats`` (queries, rcodes,
updates, transfers, RRL drops/slips). Client data touched: source address (RRL buckets per prefix, transfer
ACL) and the update's TSIG key name or certificate identity (grants); none of it is stored or logged beyond
refused-update reasons.
"""
