"""HPACK (RFC 7541): the request header decoder with its dynamic table, and a stateless response encoder that
never indexes into the client's table (so we keep no encoder state). The decoder remembers blocks that leave its
table unchanged, whole (a repeated request) and by shape (a request whose one unindexed field differs: a DoH
GET's ``:path``)."""

from __future__ import annotations

from dataclasses import dataclass

from hpack.table import HeaderTable

from ztdns.transport.http2.frames import ErrorCode, ProtocolError
from ztdns.transport.http2.huffman import huffman_decode

HEADER_TABLE_SIZE = 4096  # our decoder's dynamic table (the RFC default; we never advertise more)

_STATIC: list[tuple[bytes, bytes]] = list(HeaderTable.STATIC_TABLE)
_STATIC_COUNT = len(_STATIC)
_DECODED_BLOCK = 256  # bytes: request header blocks of DoH clients are a few dozen once indexed
_DECODED_MEMO = 64  # blocks per connection


_SHAPES = 4  # per connection: a client sends one or two kinds of request


@dataclass(frozen=True, slots=True)
class _Shape:
    """A block with one literal field without indexing: the bytes up to the literal's value string (its
    representation byte included), the bytes after it, the list it decoded to, where the literal is in it,
    its name, and the list's size (RFC 9113 section 6.5.2) without the value."""

    prefix: bytes
    suffix: bytes
    headers: list[tuple[bytes, bytes]]
    position: int
    name: bytes
    size: int


class HpackDecoder:
    """Header block decoding with the dynamic table; any error is a COMPRESSION_ERROR connection error."""

    def __init__(self, max_table_size: int = HEADER_TABLE_SIZE) -> None:
        self.max_allowed = max_table_size  # what we advertised
        self.max_size = max_table_size  # what the encoder chose (size updates)
        self.size = 0
        self.dynamic: list[tuple[bytes, bytes]] = []  # newest first
        self._changed = False  # the block being decoded changed the table
        # Blocks that left the table as it was, decoded: a client repeating a request (every DoH query after the
        # first, its fields all in the tables by then) sends the same bytes, which mean the same until the table
        # changes. The lists are shared: read, never modified.
        self._decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        # Blocks that differ from request to request in one field only: every field a reference to the tables but
        # one literal that is not indexed, as nghttp2 sends ``:path`` (a DoH GET's ``/dns-query?dns=...`` holds
        # the query, so each request's block is new). The bytes around that literal are the same each time and
        # mean the same while the table stays as it was: only its value is decoded. Newest last.
        self._shapes: list[_Shape] = []
        self._varying_literal: tuple[int, int, int] | None = None  # of the last _decode: start, end, position
        # After each decode: (the shape's header list, the position of its literal) when the block was decoded by
        # its shape (the list returned is that list with the literal's value in place), else None.
        self.varying: tuple[list[tuple[bytes, bytes]], int] | None = None

    def decode(self, block: bytes, max_list_size: int) -> list[tuple[bytes, bytes]]:
        decoded = self._decoded.get(block)
        if decoded is not None:
            self.varying = None
            return decoded
        for shape in self._shapes:
            if block.startswith(shape.prefix) and block.endswith(shape.suffix):
                # The value string: what _string reads, inline for a length below 127 (one byte), which every
                # DoH GET path is; a longer one takes _string.
                at = len(shape.prefix)
                end = len(block) - len(shape.suffix)
                first = block[at] if at < end else 0x7F
                if first & 0x7F < 0x7F:
                    if at + 1 + (first & 0x7F) != end:
                        continue
                    value = block[at + 1 : end]
                    if first & 0x80:
                        value = huffman_decode(value)
                else:
                    value, string_end = self._string(block, at)
                    if string_end != end:
                        continue
                if shape.size + len(value) > max_list_size:  # what _decode finds at the last field at the latest
                    raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header list larger than advertised")
                headers = shape.headers.copy()
                headers[shape.position] = (shape.name, value)
                self.varying = (shape.headers, shape.position)
                return headers
        self.varying = None
        headers = self._decode(block, max_list_size)
        if not self._changed:
            if len(block) <= _DECODED_BLOCK:
                if len(self._decoded) >= _DECODED_MEMO:
                    self._decoded.clear()
                self._decoded[block] = headers
            if self._varying_literal is not None:
                self._remember_shape(block, headers)
        return headers

    def _remember_shape(self, block: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        assert self._varying_literal is not None
        start, end, position = self._varying_literal
        name, value = headers[position]
        size = sum(len(n) + len(v) + 32 for n, v in headers) - len(value)
        shape = _Shape(block[: start + 1], block[end:], headers, position, name, size)
        if len(self._shapes) >= _SHAPES:
            del self._shapes[0]
        self._shapes.append(shape)

    def _decode(self, block: bytes, max_list_size: int) -> list[tuple[bytes, bytes]]:
        self._changed = False
        # The block's one literal without indexing (a one-byte name reference), if that is all it holds besides
        # references: (start, end, position in the list); False once the block holds anything else.
        literal: tuple[int, int, int] | bool | None = None
        headers: list[tuple[bytes, bytes]] = []
        list_size = 0
        offset, end = 0, len(block)
        at_start = True
        while offset < end:
            first = block[offset]
            if 0x80 < first <= 0x80 + _STATIC_COUNT:  # indexed, from the static table: most fields of a request
                headers.append(_STATIC[first - 0x81])
                offset += 1
            elif 0x80 + _STATIC_COUNT < first < 0xFF:  # indexed, from the dynamic table with a one-byte index
                position = first - 0x81 - _STATIC_COUNT
                if position >= len(self.dynamic):
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"no header table entry {first & 0x7F}")
                headers.append(self.dynamic[position])
                offset += 1
            elif first & 0x80:  # indexed header field
                index, offset = self._integer(block, offset, 7)
                headers.append(self._entry(index))
            elif first & 0x40:  # literal with incremental indexing
                header, offset = self._literal(block, offset, 6)
                self._add(header)
                headers.append(header)
                literal = False
            elif first & 0x20:  # dynamic table size update: only before the first field
                if not at_start:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "table size update after a field")
                size, offset = self._integer(block, offset, 5)
                if size > self.max_allowed:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "table size above our setting")
                self.max_size = size
                self._evict()
                self._changed = True
                self._forget()
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                start = offset
                header, offset = self._literal(block, offset, 4)
                headers.append(header)
                literal = (start, offset, len(headers) - 1) if literal is None and 0 < first & 0x0F < 0x0F else False
            at_start = False
            list_size += len(headers[-1][0]) + len(headers[-1][1]) + 32
            if list_size > max_list_size:
                # Indexed fields can repeat a large table entry cheaply: stop before the list grows further.
                raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header list larger than advertised")
        self._varying_literal = literal if isinstance(literal, tuple) else None
        return headers

    @staticmethod
    def _integer(block: bytes, offset: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        try:
            value = block[offset] & mask
            offset += 1
            if value < mask:
                return value, offset
            shift = 0
            while True:
                byte = block[offset]
                offset += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return value, offset
                if shift > 28:
                    raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "integer too large")
        except IndexError:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "truncated integer") from None

    def _string(self, block: bytes, offset: int) -> tuple[bytes, int]:
        if offset >= len(block):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "truncated string")
        huffman = block[offset] & 0x80
        length, offset = self._integer(block, offset, 7)
        if offset + length > len(block):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "string runs past the block")
        raw = block[offset : offset + length]
        return (huffman_decode(raw) if huffman else raw), offset + length

    def _literal(self, block: bytes, offset: int, prefix: int) -> tuple[tuple[bytes, bytes], int]:
        index, offset = self._integer(block, offset, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, offset = self._string(block, offset)
        value, offset = self._string(block, offset)
        return (name, value), offset

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        position = index - _STATIC_COUNT - 1
        if index == 0 or position >= len(self.dynamic):
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"no header table entry {index}")
        return self.dynamic[position]

    def _forget(self) -> None:
        """The table changed: what blocks meant before may not hold any more."""
        self._decoded.clear()
        self._shapes.clear()

    def _add(self, header: tuple[bytes, bytes]) -> None:
        self._changed = True
        self._forget()
        size = len(header[0]) + len(header[1]) + 32
        if size > self.max_size:  # RFC 7541 section 4.4: an entry larger than the table empties it
            self.dynamic.clear()
            self.size = 0
            return
        self.dynamic.insert(0, header)
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32


def _hpack_integer(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_STATUS_INDEX = {int(value): index + 1 for index, (name, value) in enumerate(_STATIC) if name == b":status"}
_NAME_INDEX: dict[str, int] = {}
for _index, (_name, _value) in enumerate(_STATIC):
    _NAME_INDEX.setdefault(_name.decode(), _index + 1)


_BLOCKS: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}  # DoH answers repeat a few header sets


def encode_headers(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A response header block: static-table references and literals never added to the client's table, so
    we keep no encoder state (the block is a few bytes longer; DoH responses carry four headers)."""
    key = (status, tuple(headers))
    block = _BLOCKS.get(key)
    if block is None:
        if len(_BLOCKS) >= 4096:
            _BLOCKS.clear()
        block = _BLOCKS[key] = _encode_headers(status, headers)
    return block


def _encode_headers(status: int, headers: list[tuple[str, str]]) -> bytes:
    parts = []
    index = _STATUS_INDEX.get(status)
    if index is not None:
        parts.append(bytes((0x80 | index,)))
    else:
        parts.append(b"\x08" + _hpack_integer(3, 7, 0) + str(status).encode())
    for name, value in headers:
        name_index = _NAME_INDEX.get(name)
        if name_index is not None:
            parts.append(_hpack_integer(name_index, 4, 0))
        else:
            raw_name = name.encode("latin-1")
            parts.append(b"\x00" + _hpack_integer(len(raw_name), 7, 0) + raw_name)
        raw_value = value.encode("latin-1")
        parts.append(_hpack_integer(len(raw_value), 7, 0) + raw_value)
    return b"".join(parts)
