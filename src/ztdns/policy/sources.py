"""Where a list source's text is: a file named in the config, or a feed's last good copy in the state directory.

A feed (a ``https://`` list source) is fetched by :mod:`ztdns.feeds`, which keeps the last good copy at
:func:`copy_path` and its status (ETag, times, entries, skipped lines by reason, last error) beside it as JSON at
:func:`status_path`. Compiling a policy reads only the copy, so a feed that is down never empties a policy, and
``ztdns lists status`` reads the status without asking the running server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ztdns.config import Config


def is_feed(source: str) -> bool:
    return source.startswith("https://")


def lists_dir(config: Config) -> Path:
    return config.base_dir / config.server.state_dir / "lists"


def _stem(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def copy_path(directory: Path, url: str) -> Path:
    return directory / f"{_stem(url)}.list"


def status_path(directory: Path, url: str) -> Path:
    return directory / f"{_stem(url)}.json"


def source_path(config: Config, source: str) -> Path:
    """The file to read for a list source: the feed's copy, or the file relative to the config."""
    if is_feed(source):
        return copy_path(lists_dir(config), source)
    return (config.base_dir / source).resolve()


@dataclass
class FeedStatus:
    """One feed's state, kept on disk beside its copy (times are Unix seconds; None: never)."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None  # last fetch that gave a usable answer (200 accepted, or 304)
    copy_time: float | None = None  # when the copy in use was fetched
    last_error: str | None = None  # the last failure, cleared by a success
    last_error_time: float | None = None
    entries: int = 0  # of the copy in use
    skipped: dict[str, int] = field(default_factory=dict)  # of the copy in use, by reason
    failures: int = 0  # fetches that failed since the process started

    @classmethod
    def load(cls, directory: Path, url: str) -> FeedStatus:
        try:
            data = json.loads(status_path(directory, url).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls(url)
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**{**known, "url": url})

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = status_path(directory, self.url)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(path)
