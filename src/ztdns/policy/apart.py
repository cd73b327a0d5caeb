"""Compile the policies of a reload in a child process, so that a list refresh never stalls answering; and
parse a feed's new copy there for its shrink guard (:func:`count_entries`).

Parsing and compiling millions of list names is seconds of interpreter work; in a thread beside the event loop
it holds the GIL in long stretches, and every query waits for it (issue 21). Here a child process
(:func:`main`, spawned, not forked: the server has threads and a large heap) reads the
lists and compiles the tables; the serving process then only *adopts* them:

1. the child sends a header: the parsed lists without their names (specs, regexes, RPZ-IP triggers, tallies),
   and per policy its entries as sets of rule indexes and its number of names;
2. the serving process compiles the policies from that header (config rules and one rule per list spec: the
   same rules, in the same order, as the child's), so each entry becomes the same set of its own rules;
3. the child then streams every policy's names with their entry index, :data:`PIECE` at a time, and the
   serving process files them into its own shards (a string's hash differs between processes, so shards cannot
   be sent whole), pausing after every piece so that the event loop finds the GIL free.

The child's log records (list summaries, warnings) are logged again by the serving process. The child runs at
a lower CPU priority (``nice`` +:data:`CHILD_NICENESS`): on a busy machine answering comes first. If it cannot
be started or fails (killed half way, cannot import ztdns), the policies are compiled in the calling thread as
before, never from part of an answer; a list that cannot be read fails the reload as in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import struct
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ztdns.config import ConfigError
from ztdns.policy.compile import (
    CompiledPolicy,
    View,
    _Entry,
    _shard_count,
    compile_policies,
    compile_views,
    list_sources,
    read_lists,
    views_of,
)
from ztdns.policy.lists import free_in_pieces, read_list

if TYPE_CHECKING:
    from ztdns.config import Config
    from ztdns.policy.lists import ListFile

log = logging.getLogger("ztdns.policy")

APART_BYTES = 1 << 20  # lists smaller than this together (~50 K names) compile in the calling thread
PIECE = 1024  # names per frame: filing them is ~0.5 ms of interpreter work (quiet machine), then the GIL is let go
CHILD_NICENESS = 10
_PAUSE = 0.0002  # after each piece; the event loop takes the GIL in that gap
_LENGTH = struct.Struct("<Q")
_END = object()  # the frame of length 0 that ends the names
_CHILD = [sys.executable, "-c", "from ztdns.policy.apart import main; main()"]

# The header: the parsed lists without names; per policy (in config order): each entry's rule indexes, and the
# number of names in its table; the child's log records.
Header = tuple[dict[Path, "ListFile"], list[tuple[list[tuple[int, ...]], int]], list[tuple[int, str, str]]]


def compile_views_apart(config: Config, *, min_bytes: int = APART_BYTES) -> dict[str, View]:
    """:func:`~ztdns.policy.compile_views` with the lists read and compiled in a child process (see the module
    docstring) when they hold at least ``min_bytes`` together (smaller ones compile here in milliseconds);
    raises like it (ConfigError for a list file that cannot be read). A child that cannot be started or fails
    otherwise (killed, cannot import ztdns) is logged, and the lists are compiled here: a refresh still
    happens."""
    if _list_bytes(config) < min_bytes:
        return compile_views(config)
    try:
        with _child(config) as stream:
            return adopt(config, stream)
    except (RuntimeError, OSError) as exc:
        log.warning("the process compiling the lists failed: %s; compiling them in this one", exc)
    return compile_views(config)


def count_entries(path: Path, shown_as: str, *, min_bytes: int = APART_BYTES) -> tuple[int, dict[str, int]]:
    """The entries and the skipped lines by reason of the list at ``path`` (a feed's new copy, for its shrink
    guard): parsed in a child process when it holds at least ``min_bytes``, here when smaller or when the child
    fails. Raises OSError if the file cannot be read."""
    if path.stat().st_size >= min_bytes:
        try:
            with _child(("count", path, shown_as)) as stream:
                count, skipped, records = _read_frame(stream)
            _log_again(records)
            return count, skipped
        except (RuntimeError, OSError, TypeError, ValueError) as exc:
            log.warning("the process parsing list %s failed: %s; parsing it in this one", shown_as, exc)
    return _count(path, shown_as)


def _count(path: Path, shown_as: str) -> tuple[int, dict[str, int]]:
    parsed = read_list(path, shown_as)
    counted = parsed.count, dict(parsed.tally.skipped)
    for names in parsed.groups.values():
        free_in_pieces(names)
    return counted


@contextlib.contextmanager
def _child(request: object) -> Iterator[IO[bytes]]:
    """A child process given ``request``: its answer to read. Raises OSError if it cannot be started, and
    RuntimeError (with its exit status) if it fails before the caller has read what it needs."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH")))))
    child = subprocess.Popen(_CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        with child:
            try:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(pickle.dumps(request))
                child.stdin.close()
                yield child.stdout
            finally:
                if child.poll() is None:
                    child.kill()
    except (RuntimeError, OSError) as exc:
        raise RuntimeError(f"{exc} (exit status {child.returncode})") from None


def _list_bytes(config: Config) -> int:
    total = 0
    for name, policy in config.policies.items():
        for _, _, resolved, _ in list_sources(name, policy, config):
            with contextlib.suppress(OSError):
                total += resolved.stat().st_size
    return total


def adopt(config: Config, stream: IO[bytes]) -> dict[str, View]:
    """The views of what :func:`answer` wrote to ``stream``, the names filed a piece at a time."""
    outcome = _read_frame(stream)
    if outcome[0] != "ok":
        kind, problems, records = outcome
        _log_again(records)
        raise ConfigError(problems) if kind == "config-error" else RuntimeError(problems)
    lists, tables, records = outcome[1]
    _log_again(records)
    policies = compile_policies(config, lists, Counter(), summary=False)
    shards_of: list[list[dict[str, int]]] = []
    for policy, (entries, names) in zip(policies.values(), tables, strict=True):
        rules = policy.rules
        policy.entries = tuple(_Entry(frozenset(rules[index] for index in entry)) for entry in entries)
        shards: list[dict[str, int]] = [{} for _ in range(_shard_count(names))]
        shards_of.append(shards)
        policy.table = tuple(shards)
    while (piece := _read_frame(stream)) is not _END:
        index, piece_names, values = piece
        shards = shards_of[index]
        mask = len(shards) - 1
        for name, entry in zip(piece_names, array("I", values), strict=True):
            shards[hash(name) & mask][name] = entry
        del piece, piece_names
        time.sleep(_PAUSE)
    for shards, (_, names) in zip(shards_of, tables, strict=True):
        if sum(map(len, shards)) != names:  # never in service with part of a table: that would open names
            raise RuntimeError(f"the process compiling the lists sent {sum(map(len, shards))} of {names} names")
    return views_of(config, policies)


def _log_again(records: list[tuple[int, str, str]]) -> None:
    for level, logger, text in records:
        logging.getLogger(logger).log(level, "%s", text)


def _read_frame(stream: IO[bytes]) -> Any:
    """The next object the child sent, or :data:`_END` after its last; RuntimeError if it ended before that."""
    head = stream.read(_LENGTH.size)
    (length,) = _LENGTH.unpack(head) if len(head) == _LENGTH.size else (None,)
    if length == 0:
        return _END
    body = b"" if length is None else stream.read(length)
    if length is None or len(body) < length:
        raise RuntimeError("the process compiling the lists ended before its answer did (see its output)")
    return pickle.loads(body)  # noqa: S301 - from our own child, through a pipe only the two of us hold


def _write_frame(stream: IO[bytes], item: object) -> None:
    body = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(body)) + body)


class _Records(logging.Handler):
    """Keeps the child's log records, to be logged again by the serving process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.kept: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append((record.levelno, record.name, record.getMessage()))


def _compile_here(config: Config, records: _Records) -> tuple[Header, dict[str, CompiledPolicy]]:
    lists, uses = read_lists(config)
    header_lists = {path: dataclasses.replace(parsed, groups={}) for path, parsed in lists.items()}
    policies = compile_policies(config, lists, uses)
    tables = [
        (
            [tuple(sorted(rule.order for rule in entry.rules)) for entry in policy.entries],
            sum(map(len, policy.table)),
        )
        for policy in policies.values()
    ]
    return (header_lists, tables, records.kept), policies


def main() -> None:
    """The child: on stdin a pickled Config (on stdout its :func:`answer`) or ``("count", path, shown_as)`` (on
    stdout one frame: what :func:`count_entries` returns, and the log records)."""
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    logging.getLogger().setLevel(logging.INFO)
    request = pickle.load(sys.stdin.buffer)  # noqa: S301 - from the serving process that started us
    out = sys.stdout.buffer
    if isinstance(request, tuple):
        _, path, shown_as = request
        records = _Records()
        logging.getLogger().addHandler(records)
        _write_frame(out, (*_count(path, shown_as), records.kept))
    else:
        answer(out, request)
    out.flush()
    os._exit(0)  # freeing the tables one by one on the way out would only delay the reload that waits


def answer(out: IO[bytes], config: Config) -> None:
    """Compile ``config``'s lists and write what :func:`adopt` reads: the header (or the error), then the names,
    :data:`PIECE` at a time, then a frame of length 0."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        header, policies = _compile_here(config, records)
    except ConfigError as exc:
        _write_frame(out, ("config-error", exc.problems, records.kept))
        return
    except Exception as exc:
        _write_frame(out, ("error", f"compiling the lists failed: {type(exc).__name__}: {exc}", records.kept))
        raise
    finally:
        logging.getLogger().removeHandler(records)
    _write_frame(out, ("ok", header))
    for index, policy in enumerate(policies.values()):
        for shard in policy.table:
            names = list(shard)
            values = list(shard.values())
            for start in range(0, len(names), PIECE):
                end = start + PIECE
                _write_frame(out, (index, names[start:end], array("I", values[start:end]).tobytes()))
    out.write(_LENGTH.pack(0))
