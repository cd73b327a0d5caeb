"""``ztdns lists status|fetch --config FILE``: every list source of the policies, and their feeds' state."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from ztdns.config import Config, ConfigError, load_config


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    utc = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    return f"{utc} ({_age(now - timestamp)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def status_text(config: Config, now: float | None = None) -> str:
    """One block per list source (files: read now; feeds: the status kept beside their copy)."""
    from ztdns.policy.lists import read_list
    from ztdns.policy.sources import FeedStatus, is_feed, lists_dir, source_path

    now = time.time() if now is None else now
    blocks = []
    seen: set[str] = set()
    for policy_name, policy in config.policies.items():
        for key, sources in (("deny_lists", policy.deny_lists), ("allow_lists", policy.allow_lists)):
            for index, source in enumerate(sources):
                used = f"policies.{policy_name}.{key}[{index}]"
                if source in seen:
                    blocks.append(f"{source}\n  used by:      {used} (see above)")
                    continue
                seen.add(source)
                lines = [source, f"  used by:      {used}"]
                if is_feed(source):
                    status = FeedStatus.load(lists_dir(config), source)
                    entries, skipped = status.entries, status.skipped
                    copy = source_path(config, source)
                    lines.append(f"  copy:         {copy if copy.exists() else 'none yet'}")
                    lines.append(f"  copy fetched: {_when(status.copy_time, now)}")
                    lines.append(f"  last success: {_when(status.last_success, now)}")
                    error = "none" if status.last_error is None else status.last_error
                    if status.last_error is not None:
                        error += f", {_when(status.last_error_time, now)}"
                    lines.append(f"  last error:   {error}")
                else:
                    try:
                        parsed = read_list(source_path(config, source), source)
                    except OSError as exc:
                        lines.append(f"  error:        {exc.strerror or exc}")
                        blocks.append("\n".join(lines))
                        continue
                    entries, skipped = parsed.count, dict(parsed.tally.skipped)
                reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(skipped.items())) or "none"
                lines.append(f"  entries:      {entries}")
                lines.append(f"  skipped:      {reasons}")
                blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no list sources in the policies"


async def fetch_all(config: Config) -> bool:
    """Fetch every feed once, now; True when every fetch succeeded."""
    from ztdns.feeds.manager import FeedManager

    async def nothing() -> None:
        return None

    manager = FeedManager(config, nothing)
    results = [await feed.refresh() or feed.status.last_error is None for feed in manager.feeds.values()]
    return all(results)


def _status(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("ztdns.policy").setLevel(logging.ERROR)  # the summary lines would repeat what we print
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.action == "fetch":
        ok = asyncio.run(fetch_all(config))
        print(status_text(config))
        return 0 if ok else 1
    print(status_text(config))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("lists", help="list sources of the policies: status of files and feeds, fetch feeds")
    parser.add_argument(
        "action", choices=["status", "fetch"], help="status: show every source; fetch: fetch every feed once now"
    )
    parser.add_argument("--config", required=True, help="TOML configuration file")
    parser.set_defaults(func=_status)
