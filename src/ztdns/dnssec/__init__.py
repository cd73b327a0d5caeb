"""DNSSEC: validation (validator.py, denial.py, trust.py, aggressive.py for RFC 8198) and signing of internal
zones (signing.py, nsec3.py, kasp.py, keys.py, pkcs11.py — used by the ``authority`` capability; see
docs/authority.md).

Validation owns: the chain of trust from trust anchors (built-in IANA root KSKs 20326 and 38696, files of DS
or DNSKEY records, negative trust anchors) down DS → DNSKEY → RRSIG; NSEC/NSEC3 denial and wildcard proofs;
the RFC 8624 algorithm policy and the RFC 9276 NSEC3 iteration limit. Results: secure, insecure or bogus with
an RFC 8914 EDE and EXTRA-TEXT naming the zone and record. It fetches DS/DNSKEY through a ``Fetcher``
(recursion, or the forwarder with DO=1 CD=1) and never opens sockets itself.
Config: ``[dnssec]`` (``DnssecConfig``). Metrics: validation failures by EDE code (``Validator.collect()``,
exported as ``ztdns_dnssec_validation_failures_total{ede}``), each logged as a ``dnssec_bogus`` security event.
Client data: none — only question names and DNS records.
"""
