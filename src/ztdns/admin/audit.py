"""The audit log: one JSON line per change or refusal (who, what, when, result) in the state directory.

Who is an admin principal (a certificate identity or ``token:NAME``), never a DNS client: no client data here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ztdns.admin.auth import Principal


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()

    def write(self, who: Principal | None, method: str, path: str, status: int, detail: dict[str, Any]) -> None:
        entry = {
            "time": round(self.clock(), 3),
            "who": who.name if who else None,
            "role": who.role if who else None,
            "via": who.via if who else None,
            "method": method,
            "path": path,
            "status": status,
            **detail,
        }
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)

    def tail(self, limit: int) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()[-limit:]
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]
