"""A sans-IO HTTP/2 server (RFC 9113) with an HPACK decoder (RFC 7541), made for DoH.

Why not the ``h2`` library: it costs about ten times the CPU per request (event objects, header validation
passes, a bit-by-bit Huffman decoder; ``bench/http2.py`` measures both), which capped DoH at a tenth of
Unbound's rate. DoH needs a small part of HTTP/2: requests are one HEADERS block and at most one small body,
responses are one HEADERS and one DATA frame, and there is no push, no priority, no upgrade. This package does
exactly that, in bytes in / bytes out form, laid out as ``h2`` is: :mod:`.events` (what the caller acts on),
:mod:`.frames` (frame layouts and error codes), :mod:`.huffman` (in C when the optional ``_huffman``
extension is built) and :mod:`.hpack` (header compression, which decodes a DoH GET's block by its shape),
:mod:`.stream` (stream states as an explicit transition table) and :mod:`.connection`. It is tested with ``h2``
as the client, with nghttp2-based clients (curl, kdig, dnsperf) and with h2spec's cases
(``tests/transport/test_h2_conformance.py``).

Limits a client cannot push past: ``max_streams`` concurrent streams (more are refused with REFUSED_STREAM),
a header block of at most ``max_header_bytes`` compressed and decoded (the CONTINUATION flood and HPACK
"bomb" close the connection), bodies of at most ``max_body`` bytes (the stream window is that size; a larger
declared or sent body gets a :class:`BodyTooLarge` so the caller can answer 413), and a budget of stream
resets (``reset_allowance`` plus one per answered request) beyond which the connection is closed with
ENHANCE_YOUR_CALM: the "rapid reset" attack. Our responses are never indexed into the client's HPACK table.
No configuration or metrics of its own (the DoH listener passes the limits); it sees request headers and
bodies only to hand them to the caller.

The API the DoH engine uses: :class:`H2ServerConnection` (``receive``, ``respond``, ``reset``, ``close``,
``data_to_send``, ``busy``, ``ended``; ``inline`` and ``chunks_to_send`` for requests without a body answered at
the end of the read that brought them, with no stream or event made for them) and the events.
"""

from ztdns.transport.http2.connection import H2ServerConnection
from ztdns.transport.http2.events import BodyTooLarge, ConnectionEnded, Event, Request, StreamReset
from ztdns.transport.http2.frames import PREFACE, ErrorCode, ProtocolError

__all__ = [
    "PREFACE",
    "BodyTooLarge",
    "ConnectionEnded",
    "ErrorCode",
    "Event",
    "H2ServerConnection",
    "ProtocolError",
    "Request",
    "StreamReset",
]
