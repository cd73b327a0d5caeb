"""The host devices whose egress the agent hooks against packet sockets (reads /sys/class/net; no netlink).

Hooked: every device but loopback, bridge ports (frames bridged for guests carry no mark from this host's stack;
hooking a port would cut the guests off) and devices stacked on others other than bridges (VLANs, macvlans,
bonds: their frames leave through a lower device, which is hooked and sees the mark).
"""

from __future__ import annotations

import socket
from pathlib import Path

_SYS = Path("/sys/class/net")


def egress_devices(sys_net: Path = _SYS) -> tuple[str, ...]:
    """Devices to hook, sorted; the kernel's list (``if_nameindex``) filtered by their sysfs entries."""
    devices = []
    for _, name in socket.if_nameindex():
        entry = sys_net / name
        if name == "lo" or (entry / "brport").exists():
            continue
        try:
            stacked = any(child.name.startswith("lower_") for child in entry.iterdir())
            if stacked and not (entry / "bridge").exists():
                continue
        except OSError:
            continue  # gone meanwhile
        devices.append(name)
    return tuple(sorted(devices))
