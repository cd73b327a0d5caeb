"""Compile the policies of a reload in a child process, so that a list refresh never stalls answering; and
parse a feed's new copy there for its shrink guard (:func:`count_entries`).

Parsing and compiling millions of list names is seconds of interpreter work; in a thread beside the event loop
it holds the GIL in long stretches, and every query waits for it (issue 21). Here a child process
(:func:`main`, spawned, not forked: the server has threads and a large heap) reads the lists, compiles the
tables and writes each policy's table as one flat buffer (:mod:`ztdns.policy._nametable`: an open-addressing
hash table of the names, with a hash both processes share) into a file the serving process created, already
unlinked, and handed down; the serving process then does a constant amount of work, whatever the lists hold:

1. the child sends, once the tables are written, a header: the parsed lists without their names (specs,
   regexes, RPZ-IP triggers, tallies), and per policy its entries as sets of rule indexes, where its table is
   in the file and how many names it holds;
2. the serving process compiles the policies from that header (config rules and one rule per list spec: the
   same rules, in the same order, as the child's), so each entry becomes the same set of its own rules;
3. it maps the file (read-only) and looks the names up in place: no name is copied or filed one by one.

The child's log records (list summaries, warnings) are logged again by the serving process. The child runs at
a lower CPU priority (``SCHED_BATCH``, ``nice`` +:data:`CHILD_NICENESS`): on a busy machine answering comes
first. If it cannot be started or fails (killed half way, cannot import ztdns), that is logged as an error and
counted (:data:`CHILD_FAILURES`), and the policies are compiled in the calling thread as before, never from part
of an answer; if it gives no answer within :data:`CHILD_TIMEOUT` it is killed, counted, and the reload fails: the
policies in service stay (what hangs a child would hang the thread too). A list that cannot be read fails the
reload as in-process. Without the C extension, every reload compiles in the calling thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ztdns.config import ConfigError
from ztdns.policy.compile import (
    View,
    _Entry,
    compile_policies,
    compile_views,
    list_sources,
    read_lists,
    views_of,
)
from ztdns.policy.lists import free_in_pieces, read_list

try:
    from ztdns.policy._nametable import NameTable
except ImportError:  # built without a C compiler: reloads compile in the calling thread
    NameTable = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from ztdns.config import Config
    from ztdns.policy.lists import ListFile

log = logging.getLogger("ztdns.policy")

APART_BYTES = 1 << 20  # lists smaller than this together (~50 K names) compile in the calling thread
CHILD_NICENESS = 10
# Seconds a child may take to answer: 2 M names take ~3 s on a quiet machine, tens of seconds on a busy one.
CHILD_TIMEOUT = 300.0
# Children that failed ("failed": compiled here instead) or gave no answer in time ("timeout": reload failed),
# since start: the frontend exports them (ztdns_policy_compile_child_failures_total).
CHILD_FAILURES: Counter[str] = Counter()
_LENGTH = struct.Struct("<Q")
_ALIGN = 16  # each table starts at a multiple of this in the file (its 8-byte fields are read in place)
# TemporaryFile makes an unnamed file (O_TMPFILE, or unlinked at once), readable by this user only: no name to race.
_SHARED_MEMORY = "/dev/shm"  # noqa: S108
_CHILD = [sys.executable, "-c", "from ztdns.policy.apart import main; main()"]

# The header: the parsed lists without names; per policy (in config order): each entry's rule indexes, where its
# table is in the file (start, end) and its number of names; the child's log records.
Header = tuple[dict[Path, "ListFile"], list[tuple[list[tuple[int, ...]], int, int, int]], list[tuple[int, str, str]]]


class ChildTimeout(RuntimeError):
    """The child gave no answer within :data:`CHILD_TIMEOUT` and was killed."""


def compile_views_apart(config: Config, *, min_bytes: int = APART_BYTES) -> dict[str, View]:
    """:func:`~ztdns.policy.compile_views` with the lists read and compiled in a child process (see the module
    docstring) when they hold at least ``min_bytes`` together (smaller ones compile here in milliseconds);
    raises like it (ConfigError for a list file that cannot be read), and RuntimeError when the child gave no
    answer in time. A child that cannot be started or fails otherwise (killed, cannot import ztdns) is logged,
    and the lists are compiled here: a refresh still happens."""
    list_bytes = _list_bytes(config)
    if list_bytes < min_bytes or NameTable is None:
        return compile_views(config)
    try:
        with _table_file(list_bytes) as tables, _child(config, tables) as stream:
            return adopt(config, stream, tables)
    except ChildTimeout as exc:
        CHILD_FAILURES["timeout"] += 1
        log.error("the process compiling the lists failed: %s; the policies in service stay", exc)
        raise
    except (RuntimeError, OSError) as exc:
        CHILD_FAILURES["failed"] += 1
        log.error("the process compiling the lists failed: %s; compiling them in this one", exc)
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
def _table_file(list_bytes: int) -> Iterator[IO[bytes]]:
    """An unlinked file for the child's tables: in shared memory when there is room (a table takes about twice
    its list's bytes), else in the temporary directory. Its storage goes when the last mapping of it does."""
    where = None
    with contextlib.suppress(OSError):
        shm = os.statvfs(_SHARED_MEMORY)
        if shm.f_bavail * shm.f_frsize > 4 * list_bytes:
            where = _SHARED_MEMORY
    with tempfile.TemporaryFile(dir=where) as file:
        yield file


@contextlib.contextmanager
def _child(request: object, tables: IO[bytes] | None = None) -> Iterator[IO[bytes]]:
    """A child process given ``request`` (and the file ``tables``, to write into): its answer to read. Raises
    OSError if it cannot be started, ChildTimeout if it gives no answer within :data:`CHILD_TIMEOUT` (it is
    killed), and RuntimeError (with its exit status) if it fails before the caller has read what it needs."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH")))))
    fds = () if tables is None else (tables.fileno(),)
    child = subprocess.Popen(_CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=fds)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        child.kill()  # the reader then finds the answer cut short

    watchdog = threading.Timer(CHILD_TIMEOUT, expire)
    watchdog.daemon = True
    try:
        with child:
            watchdog.start()
            try:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(pickle.dumps((request, *fds)))
                child.stdin.close()
                yield child.stdout
            finally:
                watchdog.cancel()
                if child.poll() is None:
                    child.kill()
    except (RuntimeError, OSError) as exc:
        if expired.is_set():
            raise ChildTimeout(f"no answer within {CHILD_TIMEOUT:g} s: killed") from None
        raise RuntimeError(f"{exc} (exit status {child.returncode})") from None


def _list_bytes(config: Config) -> int:
    total = 0
    for name, policy in config.policies.items():
        for _, _, resolved, _ in list_sources(name, policy, config):
            with contextlib.suppress(OSError):
                total += resolved.stat().st_size
    return total


def adopt(config: Config, stream: IO[bytes], tables: IO[bytes]) -> dict[str, View]:
    """The views of what :func:`answer` wrote to ``stream`` and ``tables``: the tables mapped, not copied."""
    outcome = _read_frame(stream)
    if outcome[0] != "ok":
        kind, problems, records = outcome
        _log_again(records)
        raise ConfigError(problems) if kind == "config-error" else RuntimeError(problems)
    lists, layout, records = outcome[1]
    _log_again(records)
    policies = compile_policies(config, lists, Counter(), summary=False)
    size = os.fstat(tables.fileno()).st_size
    if any(end > size for _, _, end, _ in layout):  # never in service with part of a table: it would open names
        raise RuntimeError(f"the process compiling the lists wrote {size} bytes of tables, not all of them")
    mapped = memoryview(mmap.mmap(tables.fileno(), 0, access=mmap.ACCESS_READ)) if size else memoryview(b"")
    for policy, (entries, start, end, names) in zip(policies.values(), layout, strict=True):
        rules = policy.rules
        policy.entries = tuple(_Entry(frozenset(rules[index] for index in entry)) for entry in entries)
        try:
            table = NameTable(mapped[start:end])
        except ValueError as exc:
            raise RuntimeError(f"the process compiling the lists wrote a damaged table: {exc}") from None
        if len(table) != names:
            raise RuntimeError(f"the process compiling the lists wrote a table of {len(table)} of {names} names")
        policy.table = (table,)
    return views_of(config, policies)


def _log_again(records: list[tuple[int, str, str]]) -> None:
    for level, logger, text in records:
        logging.getLogger(logger).log(level, "%s", text)


def _read_frame(stream: IO[bytes]) -> Any:
    """The object the child sent; RuntimeError if it ended before its answer did."""
    head = stream.read(_LENGTH.size)
    (length,) = _LENGTH.unpack(head) if len(head) == _LENGTH.size else (None,)
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


def _compile_here(config: Config, records: _Records, tables: IO[bytes]) -> Header:
    """Compile ``config``'s lists and write every policy's table to ``tables``: the header that describes them."""
    lists, uses = read_lists(config)
    header_lists = {path: dataclasses.replace(parsed, groups={}) for path, parsed in lists.items()}
    policies = compile_policies(config, lists, uses, flat=True)
    layout = []
    for policy in policies.values():
        start = tables.seek(0, os.SEEK_END)
        start += tables.write(b"\0" * (-start % _ALIGN))
        end = start + tables.write(cast(NameTable, policy.table[0]))  # flat: one NameTable
        entries = [tuple(sorted(rule.order for rule in entry.rules)) for entry in policy.entries]
        layout.append((entries, start, end, sum(map(len, policy.table))))
    tables.flush()
    return header_lists, layout, records.kept


def main() -> None:
    """The child: on stdin a pickled ``(Config, fd)`` (its tables written to the file ``fd``, on stdout the
    header of :func:`answer`) or ``(("count", path, shown_as),)`` (on stdout one frame: what
    :func:`count_entries` returns, and the log records)."""
    with contextlib.suppress(OSError, AttributeError):
        # A batch job below the server, even one run at a real-time priority (inherited: with it the child and
        # the event loop took turns of 100 ms on a CPU). Lowering one's own policy needs no privilege.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    logging.getLogger().setLevel(logging.INFO)
    request, *fds = pickle.load(sys.stdin.buffer)  # noqa: S301 - from the serving process that started us
    out = sys.stdout.buffer
    if isinstance(request, tuple):
        _, path, shown_as = request
        records = _Records()
        logging.getLogger().addHandler(records)
        _write_frame(out, (*_count(path, shown_as), records.kept))
    else:
        with open(fds[0], "wb") as tables:
            answer(out, request, tables)
    out.flush()
    os._exit(0)  # freeing the tables one by one on the way out would only delay the reload that waits


def answer(out: IO[bytes], config: Config, tables: IO[bytes]) -> None:
    """Compile ``config``'s lists, write their tables to ``tables`` and then what :func:`adopt` reads to
    ``out``: the header (or the error)."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        header = _compile_here(config, records, tables)
    except ConfigError as exc:
        _write_frame(out, ("config-error", exc.problems, records.kept))
        return
    except Exception as exc:
        _write_frame(out, ("error", f"compiling the lists failed: {type(exc).__name__}: {exc}", records.kept))
        raise
    finally:
        logging.getLogger().removeHandler(records)
    _write_frame(out, ("ok", header))
