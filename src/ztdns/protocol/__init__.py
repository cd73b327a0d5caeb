"""DNS protocol hygiene: what any query must pass before policy sees it, and how any answer goes on the wire.

Owns: the guard stage (parse with :mod:`ztdns.wire.parse` — dnspython's reader, at a third of its cost for plain
messages, held to it by differential tests; FORMERR for malformed or QDCOUNT≠1, with OPT when the query had a valid
one; NOTIMP for other opcodes, BADVERS for EDNS versions above 0, responses and headerless garbage dropped, REFUSED
for classes other than IN) and the respond stage (EDNS(0) echo with our payload size, ``server.max_udp_payload``,
1232 by default; DO echo, RFC 8914 EDE options, TC=1 when the answer does not fit the client's UDP size capped at
ours, SERVFAIL when nothing answered), rendered by :mod:`ztdns.wire.render`; the ANY stage (RFC 8482: truthful,
then minimal). The bytes themselves are :mod:`ztdns.wire`'s.
Client data touched: the query bytes only.
"""
