"""Observability: the one place client-derived data leaves the process.

Owns: the observe stage and the observer (one :class:`~ztdns.observe.events.QueryEvent` per query, replays
included, handed to the sinks), the JSON query log sink (one line per event, formatted and written by a background
thread so the serving threads never format or block on I/O; events beyond the queue bound are dropped and
counted), the loggers of incidents about one client (``ztdns.observe.stage``; DNSSEC failures on ``ztdns.dnssec``)
and Prometheus metrics (plain counters on the hot
path, exported through a custom collector at scrape time; each capability hands in its own families through
the ``Exporter`` contract in ``metrics.py``). Config: ``[log.query_log]``, ``[metrics]``.
Client data touched: source address, certificate identity, identity, query name — written only to the sinks
(the configured query log) and observe's loggers; no other module logs them (tests/observe/test_client_data_exit.py).
Metrics carry no client data (labels: transport, kind, rcode, identity names from config only).
"""
