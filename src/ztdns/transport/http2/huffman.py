"""HPACK's Huffman code (RFC 7541 section 5.2 and appendix B), decoding only: a byte at a time through flat
tables, seven times faster than hpack's bit-by-bit decoder on a DoH GET path; the same walk in C when the
optional ``_huffman`` extension is built (``_huffman.c``, twenty times faster again). ``ZTDNS_NATIVE_HUFFMAN=python``
in the environment keeps it in Python."""

from __future__ import annotations

import array
import os

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from ztdns.transport.http2.frames import ErrorCode, ProtocolError

try:
    from ztdns.transport.http2 import _huffman
except ImportError:  # built without a C compiler
    _huffman = None  # type: ignore[assignment]
NATIVE = _huffman is not None and os.environ.get("ZTDNS_NATIVE_HUFFMAN") != "python"


def _huffman_tree() -> tuple[list[tuple[int, int]], list[bool]]:
    """Internal nodes of the Huffman code as [child for bit 0, child for bit 1]; a child >= 0 is a node, a child
    < 0 is the leaf of symbol ``-child - 1``. Also, per node, whether stopping there is valid padding (a prefix
    of the EOS code, i.e. all one bits, shorter than 8 bits)."""
    children: list[list[int]] = [[0, 0]]
    depth_ones: list[int] = [0]  # depth of the node when every bit on its path is 1, else -1
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for position in range(length - 1, -1, -1):
            bit = (code >> position) & 1
            if position == 0:
                children[node][bit] = -symbol - 1
                break
            if children[node][bit] == 0:
                children.append([0, 0])
                ones = depth_ones[node] + 1 if bit and depth_ones[node] >= 0 else -1
                depth_ones.append(ones)
                children[node][bit] = len(children) - 1
            node = children[node][bit]
    return [(zero, one) for zero, one in children], [0 <= d < 8 for d in depth_ones]


_TREE, _PADDING_OK = _huffman_tree()
# Byte-at-a-time decoding: for tree node N and input byte B, index N << 8 | B of _NEXT holds the next node
# (shifted by 8) and of _OUT the decoded bytes. A byte that decodes EOS (an error) leads to _EOS, an index past
# the tables. About 7 µs for a GET path in a running server; hpack's bit-by-bit decoder takes 25. Two flat lists
# of shared objects rather than one list of tuples: a third faster, the tuples fell out of cache. Built when a
# DoH listener starts (prepare(), 60 ms) or on first use, not at import (most processes never decode HPACK).
_EOS = len(_TREE) << 8
_NEXT: list[int] = []
_OUT: list[bytes] = []


def _build_tables() -> None:
    shifted = [node << 8 for node in range(len(_TREE))]
    outputs: dict[bytes, bytes] = {}
    next_nodes, decoded = [], []
    for node in range(len(_TREE)):
        for byte in range(256):
            current, out, eos = node, bytearray(), False
            for position in range(7, -1, -1):
                child = _TREE[current][(byte >> position) & 1]
                if child >= 0:
                    current = child
                elif child == -257:
                    eos = True
                    break
                else:
                    out.append(-child - 1)
                    current = 0
            next_nodes.append(_EOS if eos else shifted[current])
            decoded.append(outputs.setdefault(bytes(out), bytes(out)))
    _NEXT[:], _OUT[:] = next_nodes, decoded


_native_loaded = False


def _load_native() -> None:
    """Hand the tables to the C decoder, in its layout."""
    global _native_loaded
    if not _NEXT:
        _build_tables()
    nodes = len(_TREE)
    eos = 0xFFFF
    next_nodes = array.array("H", (eos if node == _EOS else node >> 8 for node in _NEXT))
    counts = bytes(len(out) for out in _OUT)
    symbols = b"".join(out.ljust(2, b"\0") for out in _OUT)
    assert _huffman is not None and max(counts) <= 2
    _huffman.load(nodes, next_nodes.tobytes(), counts, symbols, bytes(_PADDING_OK))
    _native_loaded = True


def prepare() -> None:
    """Build the decoding tables now (tens of milliseconds), so that a listener's first request does not wait."""
    if NATIVE:
        if not _native_loaded:
            _load_native()
    elif not _NEXT:
        _build_tables()


_ERRORS = {1: "EOS in a Huffman string", 2: "bad Huffman padding"}


def huffman_decode(data: bytes) -> bytes:
    if not NATIVE:
        return huffman_decode_python(data)
    if not _native_loaded:
        _load_native()
    decoded = _huffman.decode(data)
    if isinstance(decoded, int):
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, _ERRORS[decoded])
    return decoded


def huffman_decode_python(data: bytes) -> bytes:
    if not _NEXT:
        _build_tables()
    next_nodes, decoded = _NEXT, _OUT
    state = 0
    parts = []
    try:
        for byte in data:
            index = state | byte
            parts.append(decoded[index])
            state = next_nodes[index]
        padding_ok = _PADDING_OK[state >> 8]
    except IndexError:  # went through _EOS
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "EOS in a Huffman string") from None
    if not padding_ok:
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "bad Huffman padding")
    return b"".join(parts)
