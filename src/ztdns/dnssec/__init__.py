"""DNSSEC validation (validator.py, denial.py, trust.py, aggressive.py for RFC 8198). Signing of internal zones
lives with the authority (:mod:`ztdns.authority.signing`, ``nsec3``, ``kasp``, ``keys``, ``pkcs11``; see
docs/authority.md); it shares only the NSEC3 hash (``denial.nsec3_digest``) and the name keys with validation.

Validation owns: the chain of trust from trust anchors (built-in IANA root KSKs 20326 and 38696, files of DS
or DNSKEY records, negative trust anchors) down DS → DNSKEY → RRSIG; NSEC/NSEC3 denial and wildcard proofs;
the RFC 8624 algorithm policy and the RFC 9276 NSEC3 iteration limit. Results: secure, insecure or bogus with
an RFC 8914 EDE and EXTRA-TEXT naming the zone and record. It fetches DS/DNSKEY through a ``Fetcher``
(recursion, or the forwarder with DO=1 CD=1) and never opens sockets itself.
Config: ``[dnssec]`` (``DnssecConfig``). Metrics: validation failures by EDE code (``Validator.collect()``,
exported as ``ztdns_dnssec_validation_failures_total{ede}``), each logged as a ``dnssec_bogus`` security event.
Client data: none — only question names and DNS records.
"""
