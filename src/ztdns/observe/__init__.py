"""Observability: the one place client-derived data leaves the process.

Owns: the JSON query log (one line per query, written by a background thread so the event loop never
blocks on I/O; lines beyond the queue bound are dropped and counted) and Prometheus metrics (plain counters on the hot
path, exported through a custom collector at scrape time; each capability hands in its own families through
the ``Exporter`` contract in ``metrics.py``). Config: ``[log.query_log]``, ``[metrics]``.
Client data touched: source address, identity, query name — written only to the configured query log.
Metrics carry no client data (labels: transport, kind, rcode, identity names from config only).
"""
