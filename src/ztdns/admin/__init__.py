"""The operator surface: the admin API (HTTPS, mTLS admin identities or hashed bearer tokens, audited changes)
and the web console served from this package at ``/`` of the same listener (docs/console.md).

Owns:
    api.py       the API as a sans-IO function of a request: routes, roles, config GET/PUT/PATCH with ETags
                 (with ``[control]``: validated and returned for the operator to publish), one-click exceptions
    auth.py      roles, token hashes, console sessions with CSRF tokens, the login rate limit
    audit.py     the audit log (JSON lines in ``server.state_dir``)
    sources.py   the query log, detections and overview (from observe's memory sink), lists (policies, feeds),
                 the fleet's nodes and flows (control plane): typed models, or ``available: false`` and why
    models.py    typed request/response bodies; openapi.py makes the OpenAPI document from them
    toml.py      JSON merge patch and writing a config's data back as TOML
    server.py    the listener: HTTP/1.1 (h11) over asyncio TLS
    client.py    ``ztdns api`` (and ``ztdns api token``)
    console/     the console: index.html, console.js, console.css (package data; no CDN, no build step)

Config: ``[admin]`` (:mod:`ztdns.config.admin`). Started by the daemon (worker 0) beside the metrics endpoint.
Metrics: none of its own (``/v1/stats`` reads the process's). Client data: ``/v1/explain`` answers for a client
the caller names; ``/v1/querylog``, ``/v1/detections`` and ``/v1/overview`` show what observe's memory sink
(``[[log.sinks]] type = "memory"``) kept, its privacy mode already applied there, to authenticated admin users
only; ``/v1/exceptions`` writes the name an operator chose into the config; the audit log names admin principals
and, for logins, the admin client's address — never a DNS client's.
"""
