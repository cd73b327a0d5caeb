"""[[resolver.forward_zones]]: names under a zone go to their own upstreams, the rest to [resolver]'s; checked
against two real Unbound upstreams with different content, through the router and through `ztdns serve` + dig."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import dns.flags
import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest

from fixtures.server import ServerProcess
from fixtures.unbound import UnboundFactory, free_port
from ztdns.config import ConfigError, parse_config
from ztdns.handler import make_resolver
from ztdns.model import Question
from ztdns.resolver.zones import ZoneRouter

pytestmark = pytest.mark.slow

PUBLIC = [
    "public.test. 300 IN SOA ns.public.test. h.public.test. 1 3600 600 86400 60",
    "www.public.test. 300 IN A 192.0.2.1",
    "www.corp.test. 300 IN A 192.0.2.99",  # what the public side says about the corp name: must not be used
]
CORP = [
    "corp.test. 300 IN SOA ns.corp.test. h.corp.test. 1 3600 600 86400 60",
    "www.corp.test. 3600 IN A 10.0.0.7",
    "deep.lab.corp.test. 300 IN A 10.0.0.8",
]


def config_text(public: str, corp: str, extra: str = "") -> str:
    return f"""
[resolver]
upstreams = [{{ address = "{public}" }}]

[[resolver.forward_zones]]
zone = "corp.test"
upstreams = [{{ address = "{corp}" }}]
dnssec = "insecure"
cache_max_ttl = 60
{extra}

[dnssec]
validation = false
"""


def ask(resolver: ZoneRouter, name: str) -> list[str]:
    question = Question(dns.name.from_text(name), dns.rdatatype.A, dns.rdataclass.IN)
    resolution = asyncio.run(resolver.resolve(question))
    assert resolution.response is not None, resolution.reason
    return [f"{rrset.ttl} {rdata}" for rrset in resolution.response.answer for rdata in rrset]


def test_router_sends_each_zone_to_its_upstreams(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    public = unbound_upstream(PUBLIC, zones=("public.test.", "corp.test."))
    corp = unbound_upstream(CORP, zones=("corp.test.",))
    resolver = make_resolver(parse_config(config_text(public, corp), "t.toml", tmp_path))
    assert isinstance(resolver, ZoneRouter)
    assert ask(resolver, "www.public.test.") == ["300 192.0.2.1"]
    assert ask(resolver, "www.corp.test.") == ["60 10.0.0.7"]  # TTL capped by cache_max_ttl
    assert ask(resolver, "deep.lab.corp.test.") == ["60 10.0.0.8"]
    families = {family.name: family for family in resolver.collect()}
    upstreams = {sample.labels["upstream"] for sample in families["ztdns_upstream_queries"].samples}
    assert upstreams == {public, corp}
    assert "ztdns_upstream_sockets_open" not in families  # one process-wide gauge: the frontend's
    asyncio.run(resolver.close())


def test_most_specific_zone_wins(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    public = unbound_upstream(PUBLIC, zones=("public.test.", "corp.test."))
    corp = unbound_upstream(CORP, zones=("corp.test.",))
    lab = unbound_upstream(["lab.corp.test. 300 IN A 10.9.9.9", "deep.lab.corp.test. 300 IN A 10.9.9.8"], zones=())
    extra = f'[[resolver.forward_zones]]\nzone = "lab.corp.test."\nupstreams = [{{ address = "{lab}" }}]\n'
    resolver = make_resolver(parse_config(config_text(public, corp, extra), "t.toml", tmp_path))
    assert isinstance(resolver, ZoneRouter)
    assert ask(resolver, "deep.lab.corp.test.") == ["300 10.9.9.8"]
    assert ask(resolver, "www.corp.test.") == ["60 10.0.0.7"]
    asyncio.run(resolver.close())


def test_forward_zone_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config(
            '[[resolver.forward_zones]]\nzone = "a.test"\nupstreams = [{ address = "127.0.0.1" }]\n'
            '[[resolver.forward_zones]]\nzone = "A.test."\nupstreams = [{ address = "127.0.0.2" }]\n',
            "t.toml",
            tmp_path,
        )
    with pytest.raises(ConfigError, match="upstreams"):
        parse_config('[[resolver.forward_zones]]\nzone = "a.test"\nupstreams = []\n', "t.toml", tmp_path)


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian package bind9-dnsutils)")
def test_serve_routes_zones_dig(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    public = unbound_upstream(PUBLIC, zones=("public.test.", "corp.test."))
    corp = unbound_upstream(CORP, zones=("corp.test.",))
    port = free_port()
    text = f"""
[[listen]]
transport = "udp"
address = "127.0.0.1:{port}"

[metrics]
enabled = false

[log.query_log]
output = "off"

[identities.lo]
networks = ["127.0.0.0/8"]
policies = ["all"]

[policies.all]
allow = ["**"]
{config_text(public, corp)}
"""
    with ServerProcess(text, tmp_path, port=port) as server:
        del server

        def dig(name: str) -> str:
            return subprocess.run(
                ["dig", "+short", "+time=3", "+tries=1", "-p", str(port), "@127.0.0.1", name, "A"],
                check=True,
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()

        assert dig("www.corp.test") == "10.0.0.7"
        assert dig("www.public.test") == "192.0.2.1"


def test_upstreams_by_name_with_bootstrap_addresses(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    public = unbound_upstream(PUBLIC, zones=("public.test.", "corp.test."))
    corp = unbound_upstream(CORP, zones=("corp.test.",))
    port = corp.rsplit(":", 1)[1]
    text = config_text(public, corp).replace(
        f'upstreams = [{{ address = "{corp}" }}]',
        f'upstreams = [{{ address = "dns.corp.test:{port}", bootstrap = ["127.0.0.1"] }}]',
    )
    config = parse_config(text, "t.toml", tmp_path)
    resolver = make_resolver(config)
    assert isinstance(resolver, ZoneRouter)
    assert ask(resolver, "www.corp.test.") == ["60 10.0.0.7"]
    asyncio.run(resolver.close())
    dot = parse_config(
        '[[resolver.upstreams]]\ntransport = "dot"\naddress = "dns.quad9.net"\n'
        'bootstrap = ["9.9.9.9", "2620:fe::fe"]\n',
        "t.toml",
        tmp_path,
    ).resolver.with_bootstrap()
    assert [(u.address, u.server_name) for u in dot.upstreams] == [
        ("9.9.9.9", "dns.quad9.net"),
        ("2620:fe::fe", "dns.quad9.net"),
    ]
    with pytest.raises(ConfigError, match="is a name"):
        parse_config('[[resolver.upstreams]]\naddress = "dns.quad9.net"\n', "t.toml", tmp_path)
