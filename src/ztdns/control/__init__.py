"""The fleet: policy distribution and acknowledgements on NATS JetStream, the Redis cache shared by resolvers,
fleet-wide events (docs/fleet.md).

Owns: signed, versioned config bundles (``bundle``), the node side that watches, verifies, applies and
acknowledges them (``node``), the operator's commands (``cli``: publish, status, events, keygen), the shared
cache (``shared``) and the JetStream event sink (``events``). It runs no consensus of its own: JetStream
replicates the bucket and the stream.
Config: ``[control]``, ``[cache.shared]``. Metrics: ``ztdns_control_*`` (``node.Watcher.collect``),
``ztdns_shared_cache_*`` (``shared.SharedCache.collect``), ``ztdns_events_*`` (``events.JetStreamSink.collect``).
Client data touched: the query-log events a sink publishes, after its privacy mode; shared-cache keys are keyed
hashes of questions, never names in the clear.
"""
