"""Port-scoped grants (issue 14 item 10) without root: the rule's ``ports`` in the config, the resolver's grant-scope
option (only for queries that ask, never crossing over through replays), the agent's query and answer rewriting,
the keys of the scoped sets and the ruleset text."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rrset
import pytest
from prometheus_client.metrics_core import Metric

from ztdns.agent.allowstate import AllowState, SetUpdate
from ztdns.agent.answers import addresses, ask_for_scope, take_scope
from ztdns.agent.ruleset import build_ruleset
from ztdns.agent.setwriter import packed_sets
from ztdns.client import ClientInfo, Transport
from ztdns.config import ConfigError, parse_config, parse_model
from ztdns.config.agent import AgentConfig, AllowConfig
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution
from ztdns.wire.grant_scope import GRANT_SCOPE, decode_scope, encode_scope, parse_port

CONFIG = """
[resolver]
mode = "recursive"

[identities.test]
networks = ["127.0.0.0/8"]
policies = ["test"]

[policies.test]
allow = ["open.test", { pattern = "api.test", ports = ["tcp/443", "udp/443"] }]

[log.query_log]
output = "off"
"""


class Answers:
    async def resolve(self, question: Question) -> Resolution:
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA
        response.answer = [dns.rrset.from_text(question.name, 300, "IN", "A", "192.0.2.1")]
        return Resolution(response)

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


def _ask(asking: list[tuple[str, bool]]) -> list[dns.message.Message]:
    async def run() -> list[dns.message.Message]:
        frontend = Frontend(parse_config(CONFIG, "test", Path(".")), resolver_factory=lambda config: Answers())
        frontend.bind_loop(asyncio.get_running_loop())
        client = ClientInfo(Transport.UDP, "127.0.0.1", 5353)
        answers = []
        for name, scope in asking:
            options: list[dns.edns.Option] = (
                [dns.edns.GenericOption(dns.edns.OptionType.make(GRANT_SCOPE), b"")] if scope else []
            )
            query = dns.message.make_query(name, "A", use_edns=0, options=options)
            # The transports' fast path (replays of earlier answers) first, as they serve queries.
            wire = frontend.fast(query.to_wire(), client) or await frontend.handle(query.to_wire(), client)
            assert wire is not None
            answers.append(dns.message.from_wire(wire))
            await asyncio.sleep(0)  # the replay is stored by a callback
        return answers

    return asyncio.run(run())


def _scope_of(response: dns.message.Message) -> bytes | None:
    found = [o for o in response.options if int(o.otype) == GRANT_SCOPE]
    return found[0].to_wire() if found else None


def test_the_resolver_gives_the_scope_only_to_queries_that_ask_and_replays_never_cross() -> None:
    # Plain first (stored for replay), then asking; then asking first on a fresh frontend, then plain.
    plain, asking, unscoped = _ask([("api.test", False), ("api.test", True), ("open.test", True)])
    assert _scope_of(plain) is None
    assert _scope_of(asking) == encode_scope([(6, 443), (17, 443)])
    assert _scope_of(unscoped) is None  # no ports on the rule: every port, no option
    asking, plain = _ask([("api.test", True), ("api.test", False)])
    assert _scope_of(asking) is not None and _scope_of(plain) is None


def test_ports_are_checked_and_only_for_allow_rules() -> None:
    for rule, message in (
        ('deny = [{ pattern = "x.test", ports = ["tcp/443"] }]', "applies to allow rules only"),
        ('allow = [{ pattern = "x.test", ports = ["icmp/1"] }]', "tcp/443"),
        ('allow = [{ pattern = "x.test", ports = ["tcp/0"] }]', "1–65535"),
        ('allow = [{ pattern = "x.test", ports = [] }]', "must not be empty"),
    ):
        text = CONFIG.replace('allow = ["open.test", { pattern = "api.test", ports = ["tcp/443", "udp/443"] }]', rule)
        with pytest.raises(ConfigError, match=message):
            parse_config(text, "test", Path("."))
    assert parse_port("TCP/443") == (6, 443)
    assert decode_scope(encode_scope([(17, 53)])) == ((17, 53),)
    with pytest.raises(ValueError):
        decode_scope(b"\x06\x01")


def _response(query: bytes, scope: bytes | None) -> bytes:
    message = dns.message.from_wire(query)
    response = dns.message.make_response(message)
    response.answer = [dns.rrset.from_text(message.question[0].name, 60, "IN", "A", "192.0.2.1")]
    if scope is not None:
        response.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.make(GRANT_SCOPE), scope)])
    return response.to_wire()


@pytest.mark.parametrize("edns", [-1, 0])
def test_the_agent_asks_for_the_scope_and_strips_it_from_the_answer(edns: int) -> None:
    query = dns.message.make_query("api.test", "A", use_edns=edns).to_wire()
    asked, added = ask_for_scope(query)
    assert added is (edns < 0)
    sent = dns.message.from_wire(asked)
    assert [int(o.otype) for o in sent.options] == [GRANT_SCOPE] and sent.options[0].to_wire() == b""
    response = _response(asked, encode_scope([(6, 443)]))
    ports, released = take_scope(response, added)
    assert ports == ((6, 443),)
    app = dns.message.from_wire(released)
    assert app.edns == edns and not [o for o in app.options if int(o.otype) == GRANT_SCOPE]
    assert addresses(released).records == [("192.0.2.1", 60)]
    # An answer without the option: unscoped, and (the app had EDNS) passed on as it came.
    assert take_scope(_response(asked, None), False) == ((), _response(asked, None))


def test_scoped_keys_go_to_the_concatenated_sets() -> None:
    sets = packed_sets({"192.0.2.1 tcp/443": 30, "2001:db8::1 udp/53": 30, "192.0.2.2": 30}, ["192.0.2.3 tcp/80"])
    assert sets["scoped4"][0] == {socket.inet_aton("192.0.2.1") + b"\x06\0\0\0\x01\xbb\0\0": 30}
    assert sets["scoped4"][1] == [socket.inet_aton("192.0.2.3") + b"\x06\0\0\0\x00\x50\0\0"]
    assert len(next(iter(sets["scoped6"][0]))) == 24
    assert list(sets["allow4"][0]) == [socket.inet_aton("192.0.2.2")]
    # The allow state's audit history and cap see the address.
    state = AllowState(AllowConfig())
    state.answer("api.test", [("192.0.2.1 tcp/443", 60)], 0.0, "", SetUpdate())
    assert state.last_name("192.0.2.1") == "api.test"
    config = parse_model(AgentConfig, '[[server]]\naddress = "192.0.2.10:853"\nhostname = "dns.test"\n', "a.toml")
    ruleset = build_ruleset(config)
    assert "set scoped4 { type ipv4_addr . inet_proto . inet_service;" in ruleset
    assert "ip daddr . meta l4proto . th dport @scoped4 accept" in ruleset
