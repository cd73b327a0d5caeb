"""DNS on the wire, hand-written where the hot path needs it; dnspython is the model everywhere else.

Owns, one module per concept: ``header.py`` (flags, rcode and EDNS fields as plain ints, the UDP size limit, the
one header-only response builder and the one that echoes the question, IDs), ``query.py`` (a query's header,
question and OPT read without objects: the replay key; ``name_key``, a name as policies key it), ``records.py``
(walking a message's records: TTL offsets, EDNS padding, the smallest TTL), ``parse.py`` (responses parsed into
dnspython objects at a fraction of ``dns.message.from_wire``'s cost, checked against it when imported: a
warning names what falls back to dnspython), ``render.py`` and ``encode.py`` (messages and signed data to
bytes, dnspython's exactly). Nothing here knows stages, sockets or config: every layer may use it.
Config: none. Metrics: none. Client data touched: the bytes it is given, never kept or logged.
"""
