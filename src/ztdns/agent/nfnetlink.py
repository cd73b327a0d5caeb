"""nf_tables over raw netlink, for the two jobs libnftables is too slow for.

- **Writing set elements** on the hot path: one ``sendmsg`` per batch and a few microseconds of Python per
  address. libnftables costs ≈ 0.2 ms per call (a cache fetch before every command) plus ≈ 15 µs per element
  (parsing script text); the table itself is still built by libnftables from readable nft text (ruleset.py).
- **Watching the table**: the ruleset's generation number (one small request) tells whether anyone but us has
  committed anything since the last look; only then is a fingerprint of the table's definition — table flags,
  chains, rules, sets; counters and element counts blanked — dumped and compared with the one taken when the
  agent built it. Someone running ``nft flush ruleset`` or editing the chains is noticed within one poll.

Message building and parsing are pure functions over bytes; the two socket classes only send and receive.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping

from ztdns.agent.nft import Nft, NftError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error messages do not echo the (possibly large) request

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP, NLM_F_CREATE = 0x300, 0x400
NLA_F_NESTED = 0x8000
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFPROTO_INET = 1
NFPROTO_NETDEV = 5

# nf_tables message types (linux/netfilter/nf_tables.h).
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_GETCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_GETSET = 4, 6, 7, 10
NFT_MSG_NEWSET, NFT_MSG_DELSET = 9, 11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
# Attribute 1 is the table name in table, chain, rule and set messages alike.
NFTA_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_COUNT = 20  # elements in the set (Linux 6.x)
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION = 1, 4, 5
NFTA_DATA_VALUE = 1
NFTA_RULE_EXPRESSIONS = 4
NFTA_EXPR_NAME = 1

_MAX_ELEMENTS_SIZE = 60_000  # of one message's element list: a netlink attribute's length is 16 bits
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")
_VOLATILE_EXPRESSIONS = {b"counter\0"}  # their data (packet and byte counts) changes by itself


class NetlinkError(NftError):
    """The kernel rejected a batch or a dump, or did not answer; the text says which and why."""


def _type(message: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | message


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, payload: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, payload)


def attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) for each attribute in ``data``; stops at a malformed one."""
    offset = 0
    while offset + 4 <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < 4 or offset + size > len(data):
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + size]
        offset += (size + 3) & ~3


def message(kind: int, flags: int, sequence: int, family: int, body: bytes, resource: int = 0) -> bytes:
    """One netlink message: header, nfgenmsg (family, version 0, resource id), attributes."""
    payload = struct.pack("=BB", family, 0) + struct.pack(">H", resource) + body
    return _HEADER.pack(_HEADER.size + len(payload), kind, flags | NLM_F_REQUEST, sequence, 0) + payload


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(type, flags, sequence, port id, payload) for each netlink message in ``data``."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, flags, sequence, port = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > len(data):
            return
        yield kind, flags, sequence, port, data[offset + _HEADER.size : offset + size]
        offset += (size + 3) & ~3


_TIMEOUT_HEAD = _ATTR.pack(12, NFTA_SET_ELEM_TIMEOUT)
_EXPIRATION_HEAD = _ATTR.pack(12, NFTA_SET_ELEM_EXPIRATION)


def _element_head(address_size: int, attributes: int) -> bytes:
    """List element nest, key nest and data value attribute headers for a key of ``address_size`` bytes followed
    by ``attributes`` 12-byte attributes (timeout, time left)."""
    value = 4 + address_size
    key = 4 + value
    return struct.pack(
        "=HHHHHH",
        4 + key + 12 * attributes,
        NFTA_LIST_ELEM | NLA_F_NESTED,
        key,
        NFTA_SET_ELEM_KEY | NLA_F_NESTED,
        value,
        NFTA_DATA_VALUE,
    )


# (address size, attributes) → element header: built once, this runs for every address answered.
_ELEMENT_HEADS = {
    (size, attributes): _element_head(size, attributes) for size in (4, 16, 12, 24) for attributes in (0, 1, 2)
}


def _element(address: bytes, timeout_ms: int | None, expiration_ms: int | None = None) -> bytes:
    """One set element: key (a 4- or 16-byte address, or 12/24 bytes: an address . protocol . port concatenation
    — multiples of 4, no padding), optional timeout and time left (be64 ms)."""
    if timeout_ms is None:
        return _ELEMENT_HEADS[len(address), 0] + address
    timeout = _TIMEOUT_HEAD + timeout_ms.to_bytes(8, "big")
    if expiration_ms is None:
        return _ELEMENT_HEADS[len(address), 1] + address + timeout
    return _ELEMENT_HEADS[len(address), 2] + address + timeout + _EXPIRATION_HEAD + expiration_ms.to_bytes(8, "big")


_NFGEN_INET = struct.pack("=BBH", NFPROTO_INET, 0, 0)  # nfgenmsg: family, version 0, resource id 0
# nfgenmsg of the batch begin/end messages: family unspecified, version 0, resource id: the subsystem (be16).
_NFGEN_BATCH = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", NFNL_SUBSYS_NFTABLES)
_NEWSETELEM, _DELSETELEM = (
    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
)
_LIST_ELEMENTS = NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
_heads: dict[tuple[str, str], bytes] = {}


def _set_head(table: str, set_name: str) -> bytes:
    """Table and set name attributes (built once per set: this runs for every batch)."""
    head = _heads.get((table, set_name))
    if head is None:
        head = _heads[table, set_name] = attr(NFTA_TABLE, table.encode() + b"\0") + attr(
            NFTA_SET_NAME, set_name.encode() + b"\0"
        )
    return head


def _element_messages(kind: int, flags: int, head: bytes, elements: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(type, flags, payload) of the messages carrying ``elements``: one, unless they exceed an attribute's
    64 KiB (elements never need padding: their sizes are multiples of 4)."""
    total = sum(map(len, elements))
    if total <= _MAX_ELEMENTS_SIZE:  # the usual case
        return [(kind, flags, head + _ATTR.pack(4 + total, _LIST_ELEMENTS) + b"".join(elements))]
    steps = []
    start = 0
    while start < len(elements):
        end, size = start, 0
        while end < len(elements) and size + len(elements[end]) <= _MAX_ELEMENTS_SIZE:
            size += len(elements[end])
            end += 1
        steps.append((kind, flags, head + nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(elements[start:end]))))
        start = end
    return steps


def element_batch(
    table: str,
    sets: Mapping[str, tuple[Mapping[bytes, int], Iterable[bytes]]],
    first_sequence: int,
    in_place: bool = False,
) -> tuple[bytes, list[int]]:
    """One transaction setting element timeouts exactly and closing removals, and its messages' sequence numbers.

    ``sets``: set name → (packed address → timeout seconds, packed addresses to close). Add all (an existing
    element keeps its old expiry on kernels before 6.10), delete all, add back the ones that stay with their new
    timeouts: exact timeouts whatever the kernel, and deleting an element that was missing cannot fail the batch.
    ``in_place``: the kernel sets an existing element's timeout and time left on add (see
    :func:`updates_timeouts_in_place`), so only the removals are deleted and nothing is added back — a third of
    the kernel's work per transaction.
    A netlink attribute holds at most 64 KiB, so each step is split over as many messages as it needs.
    """
    steps: list[tuple[int, int, bytes]] = []  # type, flags, payload
    for set_name, (timeouts, removals) in sets.items():
        gone = [a for a in removals if a not in timeouts] if removals else []
        if not timeouts and not gone:
            continue
        head = _set_head(table, set_name)
        if in_place:
            # The time left is given too: the kernel restarts an element's clock on add only when told to, or
            # when the timeout differs from the element's — a refresh with the same TTL would change nothing.
            elements = [_element(a, seconds * 1000, seconds * 1000) for a, seconds in timeouts.items()]
            elements += [_element(a, 1000) for a in gone]
            steps += _element_messages(_NEWSETELEM, NLM_F_CREATE, head, elements)
            if gone:
                steps += _element_messages(_DELSETELEM, 0, head, [_element(a, None) for a in gone])
            continue
        every = [*timeouts, *gone]
        steps += _element_messages(
            _NEWSETELEM, NLM_F_CREATE, head, [_element(a, timeouts.get(a, 1) * 1000) for a in every]
        )
        steps += _element_messages(_DELSETELEM, 0, head, [_element(a, None) for a in every])
        if timeouts:
            stay = [_element(a, seconds * 1000) for a, seconds in timeouts.items()]
            steps += _element_messages(_NEWSETELEM, NLM_F_CREATE, head, stay)
    if not steps:
        return b"", []
    pack, last = _HEADER.pack, len(steps) - 1
    body = [pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_sequence, 0), _NFGEN_BATCH]
    for index, (kind, flags, payload) in enumerate(steps):
        # Only the last message asks for an acknowledgement: the kernel processes a whole batch even after an
        # error and reports every error anyway, so that one ack (or an error before it) settles the batch.
        header_flags = flags | NLM_F_REQUEST | (NLM_F_ACK if index == last else 0)
        body += (pack(20 + len(payload), kind, header_flags, first_sequence + 1 + index, 0), _NFGEN_INET, payload)
    end = first_sequence + len(steps) + 1
    body += (pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0), _NFGEN_BATCH)
    return b"".join(body), list(range(first_sequence + 1, end))


def ack_errors(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence, errno — 0 for success) of each NLMSG_ERROR message in ``data``."""
    for kind, _, sequence, _, payload in messages(data):
        if kind == NLMSG_ERROR and len(payload) >= 4:
            yield sequence, -struct.unpack_from("=i", payload)[0]


def _netlink_socket(buffer: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    for option, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # *BUFFORCE needs CAP_NET_ADMIN
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, buffer)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    # A kernel-side receive timeout on a blocking socket, not settimeout(): with a Python timeout every send and
    # recv first waits in poll(), two more system calls per transaction.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 2, 0))
    sock.bind((0, 0))
    return sock


class ElementWriter:
    """Writes set elements of one table, one nf_tables transaction per :meth:`write`.

    The kernel runs a batch inside ``sendmsg``, so its acknowledgements are queued when the call returns and
    reading them does not wait for anything.
    """

    def __init__(self, table: str, buffer: int = 16 << 20) -> None:
        self.table = table
        self._sock = _netlink_socket(buffer)
        self._sequence = 0
        self.in_place = False  # see element_batch; set from updates_timeouts_in_place()
        self.commits = 0  # transactions the kernel accepted: each moved the ruleset generation on by one

    def write(self, sets: Mapping[str, tuple[Mapping[bytes, int], Iterable[bytes]]]) -> None:
        """Commit ``sets`` (see :func:`element_batch`); raises NetlinkError naming the kernel's reason."""
        batch, sequences = element_batch(self.table, sets, self._sequence + 1, self.in_place)
        self._sequence = (self._sequence + len(sequences) + 2) & 0x7FFFFFFF
        if sequences:
            self._commit(batch, sequences)

    def _commit(self, batch: bytes, sequences: list[int]) -> None:
        ours, last = set(sequences), sequences[-1]
        try:
            self._sock.send(batch)
            failure = 0
            settled = False
            while not settled:
                # Replies to an earlier batch that failed may still be queued: only this batch's count.
                for sequence, error in ack_errors(self._sock.recv(1 << 20)):
                    if sequence in ours:
                        failure = failure or error
                        settled = settled or sequence == last or error != 0
        except OSError as exc:
            raise NetlinkError(f"set update: {exc.strerror or exc}") from None
        if failure:
            raise NetlinkError(f"set update rejected: {os.strerror(failure)}")
        self.commits += 1

    def close(self) -> None:
        self._sock.close()


def updates_timeouts_in_place(nft: Nft) -> bool:
    """Whether adding an element that exists sets its timeout and time left to the ones given (Linux 6.10+).

    Tried on a scratch table of our own: an element with timeout 100 s and 10 s left is added again with 100 s
    (same timeout: is the clock restarted?), then 300 s (longer), then 50 s (shorter), the expiry read each time.
    """
    table = f"ztdns-probe-{os.getpid()}"
    nft.run(f"add table inet {table}\nadd set inet {table} s {{ type ipv4_addr; flags timeout; }}\n")
    writer = ElementWriter(table)
    writer.in_place = True
    address = socket.inet_aton("192.0.2.1")
    expiries = []
    try:
        payload = _set_head(table, "s") + nest(NFTA_SET_ELEM_LIST_ELEMENTS, _element(address, 100_000, 10_000))
        begin = message(NFNL_MSG_BATCH_BEGIN, 0, 1, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)
        end = message(NFNL_MSG_BATCH_END, 0, 3, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)
        writer._commit(begin + message(_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK, 2, NFPROTO_INET, payload) + end, [2])
        for seconds in (100, 300, 50):
            writer.write({"s": ({address: seconds}, ())})
            expiries.append(_probe_expiry(nft, table))
    finally:
        writer.close()
        nft.run(f"delete table inet {table}")
    same, longer, shorter = (e if e is not None else -1 for e in expiries)
    return same > 50 and longer > 200 and 0 <= shorter <= 50


def _probe_expiry(nft: Nft, table: str) -> int | None:
    for item in nft.query(f"list set inet {table} s"):
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict) and "elem" in element:
                return int(element["elem"]["expires"])
    return None


def mentions_table(kind: int, payload: bytes, table: bytes) -> bool:
    """Whether a table, chain, rule or set message is about ``table`` (family inet or netdev)."""
    if kind >> 8 != NFNL_SUBSYS_NFTABLES or (kind & 0xFF) > NFT_MSG_DELSET or len(payload) < 4:
        return False
    if payload[0] not in (NFPROTO_INET, NFPROTO_NETDEV):
        return False
    return any(k == NFTA_TABLE and v.rstrip(b"\0") == table for k, v in attrs(payload[4:]))


def _stable(kind: int, payload: bytes) -> bytes:
    """A table/chain/rule/set message without what changes by itself: the generation ID in the header, counter
    values in rules, the element count of sets."""
    parts = [payload[:1]]
    for k, v in attrs(payload[4:]):
        if kind & 0xFF == NFT_MSG_NEWSET and k == NFTA_SET_COUNT:
            continue
        if kind & 0xFF == NFT_MSG_NEWRULE and k == NFTA_RULE_EXPRESSIONS:
            expressions = []
            for _, expression in attrs(v):
                fields = dict(attrs(expression))
                name = fields.get(NFTA_EXPR_NAME, b"")
                expressions.append(name if name in _VOLATILE_EXPRESSIONS else expression)
            parts.append(b"|".join(expressions))
        else:
            parts.append(attr(k, v))
    return b"".join(parts)


def parse_generation(payload: bytes) -> int:
    """The ruleset generation number in a NEWGEN reply: moved on by one per committed transaction (a rejected
    one leaves it). (The reply's pid and process name are the asker's, not the last committer's.)"""
    number = dict(attrs(payload[4:])).get(NFTA_GEN_ID, b"")
    if len(number) != 4:
        raise NetlinkError("ruleset generation: no generation number in the reply")
    generation: int = struct.unpack(">I", number)[0]
    return generation


class TableWatch:
    """The ruleset generation (one request, ≈ 15 µs), and the fingerprint of one table's definition, read with
    four small netlink dumps (≈ 0.25 ms, parsing included).

    Polled rather than driven by nf_tables notifications: subscribing to them makes the kernel build a
    notification for every set element we write (three per address), which doubled the cost of each update.
    """

    def __init__(self, table: str) -> None:
        self.table = table.encode()
        self._dumps = _netlink_socket(1 << 20)
        self._sequence = 0

    def fingerprint(self) -> frozenset[bytes]:
        """The table's definition (flags, chains, rules, sets; not set elements or counter values).

        Empty when the table does not exist. Dumps interrupted by a concurrent change are retried.
        """
        for _ in range(5):
            items: set[bytes] = set()
            interrupted = False
            for request in (NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET):
                for kind, flags, payload in self._dump(request):
                    interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if mentions_table(kind, payload, self.table):
                        items.add(struct.pack("=H", kind) + _stable(kind, payload))
            if not interrupted:
                return frozenset(items)
        raise NetlinkError("the nftables ruleset kept changing while it was read")

    def generation(self) -> int:
        for kind, _, payload in self._request(NFT_MSG_GETGEN, 0, socket.AF_UNSPEC):
            if kind == _type(NFT_MSG_NEWGEN):
                return parse_generation(payload)
        raise NetlinkError("ruleset generation: no reply")

    def _dump(self, request: int) -> Iterator[tuple[int, int, bytes]]:
        return self._request(request, NLM_F_DUMP, socket.AF_UNSPEC)  # inet and netdev tables

    def _request(self, request: int, request_flags: int, family: int) -> Iterator[tuple[int, int, bytes]]:
        """The replies to one request: a dump's messages up to NLMSG_DONE, or a get's one reply."""
        self._sequence += 1
        sequence = self._sequence
        self._dumps.send(message(_type(request), request_flags, sequence, family, b""))
        while True:
            try:
                data = self._dumps.recv(1 << 20)
            except OSError as exc:
                raise NetlinkError(f"reading the ruleset: {exc.strerror or exc}") from None
            for kind, flags, seq, _, payload in messages(data):
                if seq != sequence:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise NetlinkError(f"reading the ruleset: {os.strerror(error)}")
                    return
                yield kind, flags, payload  # NEWx messages, one per object
                if not flags & NLM_F_MULTI:
                    return  # a get's single reply

    def close(self) -> None:
        self._dumps.close()
