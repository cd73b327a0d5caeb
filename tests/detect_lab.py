"""Config pieces the detection tests (tests/detection/) share: TOML text, with ``{placeholders}`` left for each
test's ``format``."""

from __future__ import annotations

import json


def listening(address: str, *, tcp: bool = False) -> str:
    """Do53 on ``address``: UDP, and TCP too."""
    transports = ("udp", "tcp") if tcp else ("udp",)
    return "".join(f'\n[[listen]]\ntransport = "{transport}"\naddress = "{address}"\n' for transport in transports)


def forwarding(upstream: str) -> str:
    """To one upstream, without DNSSEC validation (the upstreams of these tests serve unsigned zones)."""
    return f'\n[[resolver.upstreams]]\naddress = "{upstream}"\n\n[dnssec]\nvalidation = false\n'


def open_identities(**networks: list[str]) -> str:
    """One ``[identities.NAME]`` for each keyword, all with the allow-everything policy ``open``."""
    identities = "".join(
        f'\n[identities.{name}]\nnetworks = {json.dumps(prefixes)}\npolicies = ["open"]\n'
        for name, prefixes in networks.items()
    )
    return identities + '\n[policies.open]\nallow = ["**"]\n'
