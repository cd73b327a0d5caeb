"""Observability: the one place client-derived data leaves the process.

Owns: the observe stage and the observer (one event per query, replays included, copied into the feed's ring of records:
``ring.py``, in C in ``_lines.c``), the feed and the sinks (``sinks.py``: bounded queues, one thread each, batches;
events beyond a bound are dropped and counted): JSON lines (``querylog.py``, with retention), dnstap over Frame Streams
(``dnstap.py``), syslog RFC 5424 (``syslog.py``), the in-memory ring the admin API searches (``recent.py``); record
formats native/ECS/OCSF (``formats.py``); privacy modes (``privacy.py``: ipcrypt pseudonyms, keyed hashes, key rotation,
k-anonymous aggregates); the privacy statement (``statement.py``); the loggers of incidents about one client
(``ztdns.observe.stage``; DNSSEC failures on ``ztdns.dnssec``); Prometheus metrics (plain counters on the hot path,
exported through a custom collector at scrape time; each capability hands in its own families through the ``Exporter``
contract in ``metrics.py``) and their endpoint (``endpoint.py``: HEAD, HTTPS, client certificates). Config: ``[log]``
(``query_log``, ``sinks``, ``instance``), ``[metrics]``. Client data touched: source address and port, certificate
identity, identity, query names, the query and answer bytes — written only to the sinks, with each sink's privacy mode,
and observe's loggers; no other module logs them (tests/observe/test_client_data_exit.py). Metrics carry no client data
(labels: transport, kind, rcode, EDE codes, identity and policy names from config only).
"""
