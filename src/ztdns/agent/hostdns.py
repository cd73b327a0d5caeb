"""Point the host's resolver configuration at the stub, keeping a backup that ``uninstall`` restores.

A symlinked resolv.conf (systemd-resolved, NetworkManager) is backed up as the link itself and restored as the
link. The backup is written once: a restart never overwrites the original with our own file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ztdns.config.base import parse_hostport

BACKUP = "resolv.conf.backup.json"
MARKER = "# written by ztdns agent; `ztdns agent uninstall` restores the original\n"


def stub_resolv_conf(listen: list[str]) -> str:
    lines = [MARKER]
    for address in listen:
        host, port = parse_hostport(address, 53)
        if port == 53:  # resolv.conf cannot name a port
            lines.append(f"nameserver {host}\n")
    lines.append("options edns0 trust-ad\n")
    return "".join(lines)


def point_at_stub(path: Path, state_dir: Path, listen: list[str]) -> None:
    backup = state_dir / BACKUP
    if not backup.exists():
        if path.is_symlink():
            record: dict[str, object] = {"link": os.readlink(path)}
        elif path.exists():
            record = {"text": path.read_text(encoding="utf-8", errors="replace")}
        else:
            record = {"absent": True}
        if "text" in record and str(record["text"]).startswith(MARKER):
            record = {"absent": True}  # our own file from an install whose backup was lost
        state_dir.mkdir(parents=True, exist_ok=True)
        backup.write_text(json.dumps(record), encoding="utf-8")
    temporary = path.with_name(path.name + ".ztdns.tmp")
    temporary.write_text(stub_resolv_conf(listen), encoding="utf-8")
    os.replace(temporary, path)  # replaces a symlink itself, not its target


def restore(path: Path, state_dir: Path) -> bool:
    """Put the original back; False when there was no backup (nothing was changed)."""
    backup = state_dir / BACKUP
    if not backup.exists():
        return False
    record = json.loads(backup.read_text(encoding="utf-8"))
    if "link" in record:
        path.unlink(missing_ok=True)
        path.symlink_to(record["link"])
    elif "text" in record:
        temporary = path.with_name(path.name + ".ztdns.tmp")
        temporary.write_text(record["text"], encoding="utf-8")
        os.replace(temporary, path)
    else:
        path.unlink(missing_ok=True)
    backup.unlink()
    return True
