"""One background task per feed: fetch, check, keep the last good copy, and have the policy recompiled.

A fetched body replaces the copy only if it passes, in order: the size limit (while reading), the sha256 pin,
the Ed25519 signature, and the shrink guard (a copy with fewer than ``(1 - max_shrink)`` × the entries of the
copy in use is held back with a warning: a broken upstream list must not open everything). Parsing for the
guard runs in a thread, and so does the recompile the ``on_change`` callback starts (``Frontend.reload``); a big
copy is parsed and big lists are compiled in a child process (:mod:`ztdns.policy.apart`), so a refresh never
blocks answering.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import h11
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ztdns.config import Config, located
from ztdns.config.lists import FeedConfig
from ztdns.feeds.http import FetchError, fetch, tls_context
from ztdns.policy.apart import count_entries
from ztdns.policy.sources import FeedStatus, copy_path, is_feed, lists_dir

log = logging.getLogger("ztdns.feeds")

# After a failed fetch, try again sooner than the refresh interval: 1, 2, 4 … minutes, up to the interval.
RETRY_FIRST = 60.0


def feed_urls(config: Config) -> list[str]:
    """Every feed URL the policies use, once each, in config order."""
    urls: dict[str, None] = {}
    for policy in config.policies.values():
        for source in (*policy.deny_lists, *policy.allow_lists):
            if is_feed(source):
                urls[source] = None
    return list(urls)


class Feed:
    """One feed: its settings, its status (kept on disk) and one refresh at a time."""

    def __init__(self, config: FeedConfig, directory: Path, base_dir: Path) -> None:
        self.config = config
        self.url = config.url
        self.directory = directory
        self.copy = copy_path(directory, config.url)
        self.status = FeedStatus.load(directory, config.url)
        self.failures_in_a_row = 0
        self._context: ssl.SSLContext | None = None
        self._ca = None if config.ca is None else base_dir / config.ca
        self._key: Ed25519PublicKey | None = None
        if config.signing_key is not None:
            key = load_pem_public_key((base_dir / config.signing_key).read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{config.signing_key}: not an Ed25519 public key")
            self._key = key

    def first_delay(self, now: float) -> float:
        """Seconds until the first fetch: at once without a copy, else when the copy is due."""
        if not self.copy.exists() or self.status.copy_time is None:
            return 0.0
        return max(0.0, self.status.copy_time + self._refresh() - now)

    def next_delay(self) -> float:
        if self.failures_in_a_row:
            return min(self._refresh(), RETRY_FIRST * 2.0 ** min(self.failures_in_a_row - 1, 10))
        return self._refresh()

    def _refresh(self) -> float:
        assert self.config.refresh is not None and self.config.jitter is not None
        return self.config.refresh * (1.0 + random.uniform(-self.config.jitter, self.config.jitter))

    async def refresh(self) -> bool:
        """Fetch once; True when a new copy is in place. Failures are recorded in the status, never raised."""
        status = self.status
        status.last_attempt = time.time()
        try:
            assert self.config.timeout is not None
            async with asyncio.timeout(self.config.timeout):
                changed = await self._fetch_and_check()
        except TimeoutError:
            self._failed(f"timed out after {self.config.timeout:g} s")
            return False
        except (FetchError, OSError, ssl.SSLError, h11.ProtocolError, ValueError) as exc:
            self._failed(_describe(exc))
            return False
        self.failures_in_a_row = 0
        status.last_success = time.time()
        status.last_error = None
        status.save(self.directory)
        return changed

    async def _fetch_and_check(self) -> bool:
        status = self.status
        if self._context is None:
            self._context = tls_context(self._ca)
        conditional = self.copy.exists()
        assert self.config.max_bytes is not None
        fetched = await fetch(
            self.url,
            self._context,
            pin=self.config.spki_pin,
            etag=status.etag if conditional else None,
            last_modified=status.last_modified if conditional else None,
            max_bytes=self.config.max_bytes,
        )
        if fetched.status == 304:
            return False
        signature = None if self._key is None else await self._signature()
        count, skipped = await asyncio.get_running_loop().run_in_executor(None, self._stage, fetched.body, signature)
        assert self.config.max_shrink is not None
        floor = status.entries * (1.0 - self.config.max_shrink)
        if self.copy.exists() and status.entries and count < floor:
            self.copy.with_suffix(".new").unlink(missing_ok=True)
            raise FetchError(
                f"held back: {count} entries where the copy in use has {status.entries} "
                f"(shrank by more than max_shrink = {self.config.max_shrink:g})"
            )
        self.copy.with_suffix(".new").replace(self.copy)
        status.etag, status.last_modified = fetched.etag, fetched.last_modified
        status.copy_time = time.time()
        status.entries = count
        status.skipped = skipped
        log.info("list feed %s: new copy, %d entries", self.url, status.entries)
        return True

    async def _signature(self) -> bytes:
        """The feed's detached Ed25519 signature (``URL.sig``): 64 raw bytes, or base64."""
        assert self._context is not None
        signature = await fetch(self.url + ".sig", self._context, pin=self.config.spki_pin, max_bytes=4096)
        raw = signature.body  # not stripped: 64 raw bytes may start or end with whitespace octets
        if len(raw) != 64:
            try:
                raw = base64.b64decode(raw.strip(), validate=True)
            except binascii.Error:
                raise FetchError("signature is neither 64 raw bytes nor base64") from None
        return raw

    def _stage(self, body: bytes, signature: bytes | None) -> tuple[int, dict[str, int]]:
        """Check the body against the pin and the signature, write it beside the copy and parse it: its entries and
        skipped lines by reason (the caller decides whether it replaces the copy). In a thread: hashing, verifying
        and parsing a big list on the event loop would stop answering; a big list is parsed in a child process
        (:func:`~ztdns.policy.apart.count_entries`), so the thread seldom holds the GIL either.
        """
        if self.config.sha256 is not None and hashlib.sha256(body).hexdigest() != self.config.sha256:
            raise FetchError("body does not match the configured sha256")
        if signature is not None:
            assert self._key is not None
            try:
                self._key.verify(signature, body)
            except InvalidSignature:
                raise FetchError("Ed25519 signature does not verify") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        staged = self.copy.with_suffix(".new")
        staged.write_bytes(body)
        return count_entries(staged, self.url)

    def _failed(self, reason: str) -> None:
        status = self.status
        self.failures_in_a_row += 1
        status.failures += 1
        status.last_error = reason
        status.last_error_time = time.time()
        try:
            status.save(self.directory)
        except OSError as exc:
            log.error("list feed %s: cannot save its status: %s", self.url, exc)
        kept = (
            f"keeping the copy of {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(status.copy_time))} UTC "
            f"({status.entries} entries)"
            if status.copy_time is not None and self.copy.exists()
            else "no copy yet: the list is empty"
        )
        log.warning("list feed %s: %s; %s", self.url, reason, kept)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class FeedManager:
    """The feeds of one config: one task each, and one recompile at a time for any number of new copies."""

    def __init__(self, config: Config, on_change: Callable[[], Awaitable[None]]) -> None:
        self.on_change = on_change
        self.feeds: dict[str, Feed] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._dirty = False
        self._configure(config)

    def _configure(self, config: Config) -> None:
        directory = lists_dir(config)
        feeds = {}
        for url in feed_urls(config):
            try:
                feeds[url] = Feed(config.lists.feed(url), directory, config.base_dir)
            except (OSError, ValueError) as exc:
                index = next((i for i, feed in enumerate(config.lists.feeds) if feed.url == url), None)
                key: tuple[str | int, ...] = ("lists",) if index is None else ("lists", "feeds", index, "signing_key")
                raise located(config, key, f"{url}: {getattr(exc, 'strerror', None) or exc}") from None
        self.feeds = feeds

    def start(self) -> None:
        now = time.time()
        self._tasks = [asyncio.get_running_loop().create_task(self._run(feed, now)) for feed in self.feeds.values()]

    async def reconfigure(self, config: Config) -> None:
        await self.close()
        self._configure(config)
        self.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self, feed: Feed, now: float) -> None:
        delay = feed.first_delay(now)
        while True:
            await asyncio.sleep(delay)
            if await feed.refresh():
                await self._changed()
            delay = feed.next_delay()

    async def _changed(self) -> None:
        """Recompile once for any number of new copies that arrive while a recompile runs."""
        self._dirty = True
        async with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            try:
                await self.on_change()
            except Exception:
                log.exception("list feeds: recompiling the policies failed; the previous policies stay in service")

    def collect(self) -> Iterator[Metric]:
        yield from feed_metrics(feed.status for feed in self.feeds.values())


def feed_metrics(statuses: Iterable[FeedStatus], now: float | None = None) -> Iterator[Metric]:
    now = time.time() if now is None else now
    entries = GaugeMetricFamily("ztdns_list_entries", "Entries of the feed's copy in use", labels=["list"])
    skipped = GaugeMetricFamily(
        "ztdns_list_skipped_lines", "Lines of the feed's copy in use that gave no entry", labels=["list", "reason"]
    )
    age = GaugeMetricFamily("ztdns_list_age_seconds", "Age of the feed's copy in use", labels=["list"])
    success = GaugeMetricFamily(
        "ztdns_list_last_success_timestamp_seconds", "Last fetch that gave a usable answer", labels=["list"]
    )
    failures = CounterMetricFamily("ztdns_list_fetch_failures", "Fetches that failed", labels=["list"])
    for status in statuses:
        entries.add_metric([status.url], status.entries)
        for reason, count in sorted(status.skipped.items()):
            skipped.add_metric([status.url, reason], count)
        if status.copy_time is not None:
            age.add_metric([status.url], max(0.0, now - status.copy_time))
        if status.last_success is not None:
            success.add_metric([status.url], status.last_success)
        failures.add_metric([status.url], status.failures)
    yield from (entries, skipped, age, success, failures)
