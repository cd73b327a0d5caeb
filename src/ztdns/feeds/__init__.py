"""List feeds: policy list sources given as HTTPS URLs, fetched and refreshed in the background (docs/policy.md,
"List feeds").

Owns:
    http.py      a small HTTPS GET client on asyncio streams and h11: CA file, SPKI pin, ETag/If-Modified-Since,
                 redirects, a size limit
    manager.py   one task per feed: refresh interval with jitter and backoff, integrity (sha256 pin, Ed25519
                 signature), shrink guard, the last good copy and its status on disk, recompiling the policy
                 through a callback (which compiles in a thread and swaps, like a reload); metrics

Config: ``[lists]`` and ``[[lists.feeds]]`` (:mod:`ztdns.config.lists`); a ``deny_lists``/``allow_lists`` entry
that starts with ``https://``. Copies and status live under ``<server.state_dir>/lists``
(:mod:`ztdns.policy.sources`), so a feed that is down never empties a policy.

Metrics: ``ztdns_list_entries{list}``, ``ztdns_list_skipped_lines{list,reason}``, ``ztdns_list_age_seconds{list}``,
``ztdns_list_last_success_timestamp_seconds{list}``, ``ztdns_list_fetch_failures{list}``, labelled by the URL.

Client data: none. Feeds are configuration; nothing about clients or queries is sent or logged.
"""

from ztdns.feeds.manager import Feed, FeedManager, feed_urls

__all__ = ["Feed", "FeedManager", "feed_urls"]
