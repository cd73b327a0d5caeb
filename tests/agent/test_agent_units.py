"""Sans-IO parts of the agent: ruleset text, set scripts, allow state, answers, NFLOG parsing, learn, persistence."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from ztdns.agent import hostdns, nfnetlink
from ztdns.agent.allowstate import AllowState, Grant, SetUpdate
from ztdns.agent.answers import BadMessage, addresses, check_query
from ztdns.agent.audit import learn, parse_since, proposal_toml
from ztdns.agent.nflog import NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID, parse_messages
from ztdns.agent.persist import GrantStore
from ztdns.agent.ruleset import build_ruleset
from ztdns.agent.setwriter import packed_sets
from ztdns.config import ConfigError, parse_model
from ztdns.config.agent import AgentConfig, AllowConfig
from ztdns.wire.header import error_response, payload_of, truncate, udp_limit

BASE = '[[server]]\naddress = "192.0.2.10:853"\nhostname = "dns.test"\n'


def config(extra: str = "", top: str = "") -> AgentConfig:
    return parse_model(AgentConfig, top + BASE + extra, "agent.toml")


def test_config_errors_name_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_model(AgentConfig, BASE + '[[exception]]\nname = "x"\nnetworks = ["10.0.0.0/33"]\n', "agent.toml")
    assert "agent.toml:6: exception[0].networks[0]: '10.0.0.0/33' is not an IP network" in str(info.value)
    with pytest.raises(ConfigError, match="at least one protective server"):
        parse_model(AgentConfig, "server = []\n", "agent.toml")
    with pytest.raises(ConfigError, match="ttl_floor"):
        config("[allow]\nttl_floor = 100\nttl_ceiling = 10\n")


def test_ruleset_enforce_and_audit() -> None:
    extra = '[[exception]]\nname = "corp"\nnetworks = ["10.0.0.0/8", "2001:db8:9::/48"]\nports = [443]\n'
    enforce = build_ruleset(config(extra + "[firewall]\nforward = true\n"))
    assert enforce.startswith("table inet ztdns\ndelete table inet ztdns\n")
    assert enforce.count("policy drop;") == 2  # output and forward
    assert "ip daddr 192.0.2.10 tcp dport 853 accept" in enforce
    assert 'ip daddr { 10.0.0.0/8 } tcp dport { 443 } accept comment "exception corp"' in enforce
    assert 'ip6 daddr { 2001:db8:9::/48 } udp dport { 443 } accept comment "exception corp"' in enforce
    assert enforce.index("ct state established,related accept") < enforce.index("@allow4")
    audit = build_ruleset(config(top='mode = "audit"\n'))
    assert "policy accept;" in audit and "policy drop;" not in audit
    assert 'log group 7 prefix "ztdns-audit "' in audit
    assert "chain forward" not in audit


def test_ruleset_scopes_dhcp_icmp_and_neighbour_discovery_and_hooks_packet_sockets() -> None:
    ruleset = build_ruleset(config('[firewall]\nlink_networks = ["10.1.0.0/16"]\n'), ("eth0", "wlan0"), 0x5A5A1234)
    assert "udp sport 68 udp dport 67 ip daddr { 255.255.255.255, 10.1.0.0/16 } accept" in ruleset
    assert "udp sport 546 udp dport 547 ip6 daddr { ff02::1:2 } accept" in ruleset
    assert 'ip6 daddr { fe80::/10, ff02::/16 } accept comment "neighbour discovery"' in ruleset
    assert "destination-unreachable" not in ruleset  # ICMP errors only as ct related
    assert "meta mark set meta mark and 0x0000ffff or 0x5a5a0000" in ruleset
    assert 'type filter hook egress devices = { "eth0", "wlan0" }' in ruleset
    assert "meta mark and 0xffff0000 == 0x5a5a0000 meta mark set meta mark and 0x0000ffff accept" in ruleset
    assert ruleset.rstrip().endswith('counter drop comment "packet socket"\n  }\n}'.rstrip())
    assert "table netdev ztdns {" not in build_ruleset(config())  # no devices: only the delete


def test_ruleset_scopes_workload_grants_to_their_cgroup() -> None:
    workload = '[[workload]]\nname = "web"\ncgroup = "/system.slice/web.service/"\nidentity = "web"\n'
    workload += 'client_cert = "c"\nclient_key = "k"\n'
    ruleset = build_ruleset(config(workload), workloads=[("web", "unified/system.slice/web.service", 2)])
    assert "set allow4_web { type ipv4_addr; flags timeout;" in ruleset and "set allow6_web {" in ruleset
    match = 'socket cgroupv2 level 2 "unified/system.slice/web.service"'
    assert f"{match} ip daddr @allow4_web accept" in ruleset
    # The workload never falls through to the host's grants: its drop comes before them.
    assert ruleset.index(f'{match} counter drop comment "workload web"') < ruleset.index("ip daddr @allow4 accept")
    assert "socket cgroupv2" not in build_ruleset(config(workload))  # its cgroup does not exist: sets only
    with pytest.raises(ConfigError, match="not a cgroup path"):
        config(workload.replace("/system.slice/web.service/", "../x"))
    with pytest.raises(ConfigError, match="an identity of its own"):
        config(workload, top='identity = "web"\n')


def _elements(payload: bytes) -> list[tuple[bytes, int | None]]:
    """(key, timeout ms) of each element in a NEWSETELEM/DELSETELEM message payload."""
    found = []
    for kind, value in nfnetlink.attrs(payload[4:]):
        if kind != nfnetlink.NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for _, element in nfnetlink.attrs(value):
            fields = dict(nfnetlink.attrs(element))
            key = dict(nfnetlink.attrs(fields[nfnetlink.NFTA_SET_ELEM_KEY]))[nfnetlink.NFTA_DATA_VALUE]
            timeout = fields.get(nfnetlink.NFTA_SET_ELEM_TIMEOUT)
            found.append((key, int.from_bytes(timeout, "big") if timeout else None))
    return found


def test_element_batch_sets_exact_timeouts_and_closes() -> None:
    sets = packed_sets({"192.0.2.1": 30, "2001:db8::1": 40}, {"192.0.2.9"})
    batch, acked = nfnetlink.element_batch("ztdns", sets, 100)
    parsed = list(nfnetlink.messages(batch))
    assert [m[0] for m in parsed] == [16, *[(10 << 8) | t for t in (12, 14, 12, 12, 14, 12)], 17]
    assert [m[2] for m in parsed] == list(range(100, 108)) and acked == list(range(101, 107))
    assert [bool(m[1] & nfnetlink.NLM_F_ACK) for m in parsed] == [False] * 6 + [True, False]  # the last step only
    v4, gone, v6 = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]), socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    # Add everything (now all exist), delete everything (none do), add back what stays with its new timeout.
    assert _elements(parsed[1][4]) == [(v4, 30_000), (gone, 1_000)]
    assert _elements(parsed[2][4]) == [(v4, None), (gone, None)]
    assert _elements(parsed[3][4]) == [(v4, 30_000)]
    assert _elements(parsed[4][4]) == _elements(parsed[6][4]) == [(v6, 40_000)]
    assert dict(nfnetlink.attrs(parsed[1][4][4:]))[nfnetlink.NFTA_SET_NAME] == b"allow4\0"
    assert nfnetlink.element_batch("ztdns", packed_sets({}, ()), 1)[1] == []


def test_element_batch_in_place_adds_once_and_deletes_only_removals() -> None:
    sets = packed_sets({"192.0.2.1": 30, "2001:db8::1": 40}, {"192.0.2.9"})
    batch, acked = nfnetlink.element_batch("ztdns", sets, 100, in_place=True)
    parsed = list(nfnetlink.messages(batch))
    assert [m[0] for m in parsed] == [16, *[(10 << 8) | t for t in (12, 14, 12)], 17]
    assert acked == [101, 102, 103] and [bool(m[1] & nfnetlink.NLM_F_ACK) for m in parsed] == [False] * 3 + [
        True,
        False,
    ]
    v4, gone, v6 = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]), socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    # The removal is added first (so deleting it cannot fail), then deleted; what stays is added once.
    assert _elements(parsed[1][4]) == [(v4, 30_000), (gone, 1_000)]
    assert _elements(parsed[2][4]) == [(gone, None)]
    assert _elements(parsed[3][4]) == [(v6, 40_000)]


def test_element_batch_splits_steps_over_messages_below_the_attribute_limit() -> None:
    many = {f"10.0.{i >> 8}.{i & 255}": 60 for i in range(5000)}
    batch, acked = nfnetlink.element_batch("ztdns", packed_sets(many, ()), 1)
    parsed = list(nfnetlink.messages(batch))[1:-1]
    assert len(parsed) == len(acked) > 3 and all(len(m[4]) < 65536 for m in parsed)
    kinds = [m[0] & 0xFF for m in parsed]
    # All adds, then all deletes, then all add-backs; every address in each step.
    adds, deletes = kinds.index(14), kinds.count(14)
    assert set(kinds[:adds]) == {12} and set(kinds[adds : adds + deletes]) == {14}
    assert set(kinds[adds + deletes :]) == {12}
    steps: dict[int, list[bytes]] = {}
    step = 0
    for index, (kind, _, _, _, payload) in enumerate(parsed):
        if index and kind != parsed[index - 1][0]:
            step += 1
        steps.setdefault(step, []).extend(key for key, _ in _elements(payload))
    assert len(steps) == 3 and all(len(keys) == 5000 for keys in steps.values())


def test_table_notifications_are_matched_by_family_and_name() -> None:
    table = nfnetlink.attr(nfnetlink.NFTA_TABLE, b"ztdns\0")
    inet, ip = bytes([nfnetlink.NFPROTO_INET, 0, 0, 0]), bytes([socket.AF_INET, 0, 0, 0])
    delrule = (10 << 8) | 8
    assert nfnetlink.mentions_table(delrule, inet + table, b"ztdns")
    assert not nfnetlink.mentions_table(delrule, ip + table, b"ztdns")
    assert not nfnetlink.mentions_table(delrule, inet + nfnetlink.attr(1, b"other\0"), b"ztdns")
    assert not nfnetlink.mentions_table((10 << 8) | 12, inet + table, b"ztdns")  # set elements: not definitions
    assert not nfnetlink.mentions_table(delrule, b"\x01", b"ztdns")  # truncated


def test_ruleset_generation_replies_parse() -> None:
    payload = bytes([socket.AF_UNSPEC, 0, 0, 7]) + nfnetlink.attr(nfnetlink.NFTA_GEN_ID, struct.pack(">I", 4242))
    assert nfnetlink.parse_generation(payload + nfnetlink.attr(3, b"nft\0")) == 4242
    for broken in (b"", bytes(4), bytes(4) + nfnetlink.attr(nfnetlink.NFTA_GEN_ID, b"\1\2")):
        with pytest.raises(nfnetlink.NetlinkError):
            nfnetlink.parse_generation(broken)


def answer(state: AllowState, name: str, records: list[tuple[str, int]], now: float) -> SetUpdate:
    update = SetUpdate()
    state.answer(name, records, now, "", update)
    return update


def test_allow_state_lifetimes_refresh_and_shared_addresses() -> None:
    state = AllowState(AllowConfig(ttl_floor=30, ttl_ceiling=600, grace=10))
    first = answer(state, "a.test", [("192.0.2.1", 5)], now=1000.0)
    assert first.timeouts == {"192.0.2.1": 40} and first.added == 1  # floor 30 + grace 10
    # A cached answer with a smaller TTL later: refreshed, never shortened below what was granted.
    again = answer(state, "a.test", [("192.0.2.1", 1)], now=1020.0)
    assert again.refreshed == 1 and again.timeouts == {"192.0.2.1": 40}
    assert answer(state, "a.test", [("192.0.2.1", 9999)], now=1020.0).timeouts == {"192.0.2.1": 610}
    # Another name for the same address (a CDN): the address stays open until the later one expires.
    answer(state, "b.test", [("192.0.2.1", 30)], now=1030.0)
    assert state.live_timeouts(1030.0) == {"192.0.2.1": 600}
    assert state.expire(1081.0) == [Grant("192.0.2.1", "b.test", 1070.0)]
    assert len(state) == 1
    assert [g.name for g in state.expire(1700.0)] == ["a.test"]
    assert len(state) == 0 and state.last_name("192.0.2.1") == "b.test"  # the latest answer
    # In bounded steps: the earliest expiries first, the rest at the next step.
    for i in range(5):
        answer(state, f"n{i}.test", [(f"192.0.2.{10 + i}", 30)], now=2000.0 + i)
    assert [g.name for g in state.expire(3000.0, limit=2)] == ["n0.test", "n1.test"] and len(state) == 3
    assert len(state.expire(3000.0, limit=256)) == 3 and len(state) == 0


def test_repeated_answer_with_the_same_lifetime_writes_nothing() -> None:
    state = AllowState(AllowConfig(ttl_floor=0, ttl_ceiling=600, grace=10))
    first = answer(state, "a.test", [("192.0.2.1", 300)], now=1000.0)
    assert first.timeouts == {"192.0.2.1": 310} and len(first.grants) == 1
    # The resolver's cache counts the TTL down in whole seconds: 0.6 s later it still says 300.
    again = answer(state, "a.test", [("192.0.2.1", 300)], now=1000.6)
    assert not again and again.refreshed == 1 and not again.grants  # no transaction, no journal line
    counted_down = answer(state, "a.test", [("192.0.2.1", 200)], now=1100.5)
    assert not counted_down and counted_down.refreshed == 1
    # A longer lifetime is written, and so is the same address answered for another name (its own grant).
    longer = answer(state, "a.test", [("192.0.2.1", 600)], now=1100.5)
    assert longer.timeouts == {"192.0.2.1": 610} and len(longer.grants) == 1
    other = answer(state, "b.test", [("192.0.2.1", 30)], now=1100.5)
    assert other.timeouts == {"192.0.2.1": 610} and [g.name for g in other.grants] == ["b.test"]
    # Once the grant has expired, the same answer opens the address again.
    state.expire(1800.0)
    assert answer(state, "a.test", [("192.0.2.1", 300)], now=1800.0).added == 1


def test_allow_state_per_name_cap_evicts_least_recent() -> None:
    state = AllowState(AllowConfig(max_addresses_per_name=2))
    answer(state, "pool.test", [("192.0.2.1", 60), ("192.0.2.2", 60)], now=0.0)
    answer(state, "other.test", [("192.0.2.2", 60)], now=0.0)
    answer(state, "pool.test", [("192.0.2.1", 60)], now=1.0)  # .1 is now the most recent
    update = answer(state, "pool.test", [("192.0.2.3", 60)], now=2.0)
    # .2 leaves pool.test's list but stays open as long as other.test holds it (granted at 0 for 60 + 60 s).
    assert update.removals == set() and update.timeouts == {"192.0.2.3": 120, "192.0.2.2": 118}
    update = answer(state, "pool.test", [("192.0.2.4", 60)], now=3.0)
    assert update.removals == {"192.0.2.1"}


def test_cap_spares_the_answer_being_released() -> None:
    state = AllowState(AllowConfig())  # default cap 256
    records = [(f"10.0.{i // 256}.{i % 256}", 60) for i in range(300)]
    update = answer(state, "big.test", records, now=0.0)
    assert len(update.timeouts) == 300 and not update.removals
    small = AllowState(AllowConfig(max_addresses_per_name=16))
    update = answer(small, "big.test", records[:60], now=0.0)
    assert len(update.timeouts) == 60 and not update.removals
    # The next, different answer may close the older ones: only beyond the cap, least recently answered first.
    update = answer(small, "big.test", records[60:68], now=1.0)
    assert update.removals == {address for address, _ in records[:52]}


def test_rotating_pool_keeps_live_addresses_and_evicts_least_recently_used() -> None:
    """8 of 4096 addresses per answer (a CDN's rotation): the ones flows use are never closed by the cap."""
    import random

    live: set[str] = set()
    state = AllowState(AllowConfig(max_addresses_per_name=32), in_use=live.__contains__)
    pool = [f"10.1.{i // 256}.{i % 256}" for i in range(4096)]
    rotation = random.Random(7)
    first = rotation.sample(pool, 8)
    answer(state, "cdn.test", [(a, 60) for a in first], now=0.0)
    live.update(first)  # the application connected to all of them
    closed: set[str] = set()
    for turn in range(1, 41):
        update = answer(state, "cdn.test", [(a, 60) for a in rotation.sample(pool, 8)], now=float(turn))
        closed |= update.removals
        assert len(update.timeouts) >= 8  # every address of this answer was opened
    assert not closed & set(first)
    assert len(closed) >= 40 * 8 - 32 - 8  # the rest did rotate out, least recently answered first
    assert len(state) <= 32 + 8


def test_total_bound_sheds_the_grants_closest_to_expiry() -> None:
    state = AllowState(AllowConfig(ttl_floor=0, grace=0, max_addresses=3))
    for i, ttl in enumerate((100, 10, 50)):
        answer(state, f"n{i}.test", [(f"192.0.2.{i}", ttl)], now=0.0)
    update = answer(state, "n3.test", [("192.0.2.3", 70)], now=0.0)
    assert update.removals == {"192.0.2.1"} and update.shed == 1 and len(state) == 3
    assert state.last_name("192.0.2.1") == "n1.test" and not state.holds("192.0.2.1")


def test_bulk_restore_keeps_the_latest_lifetimes_and_identities() -> None:
    state = AllowState(AllowConfig(ttl_floor=0, grace=0), identity="host")
    grants = [
        Grant("192.0.2.1", "a.test", 200.0, "host"),
        Grant("192.0.2.1", "a.test", 300.0, "host"),  # a later journal line for the same grant
        Grant("192.0.2.1", "b.test", 250.0, "guest"),
        Grant("192.0.2.2", "old.test", 50.0, "host"),  # expired: skipped
    ]
    state.restore(grants, now=100.0)
    assert len(state) == 1 and state.live_timeouts(100.0) == {"192.0.2.1": 200}
    assert sorted(state.grants()) == [
        Grant("192.0.2.1", "a.test", 300.0, "host"),
        Grant("192.0.2.1", "b.test", 250.0, "guest"),
    ]
    assert [g.name for g in state.expire(260.0)] == ["b.test"] and state.holds("192.0.2.1")
    assert [g.name for g in state.expire(301.0)] == ["a.test"] and len(state) == 0


def test_answers_of_one_turn_share_one_update() -> None:
    state = AllowState(AllowConfig(ttl_floor=0, grace=0, max_addresses_per_name=1))
    shared = SetUpdate()
    state.answer("a.test", [("192.0.2.1", 100)], 0.0, "", shared)
    state.answer("b.test", [("192.0.2.1", 10)], 0.0, "", shared)  # shorter for b: a still holds it longer
    assert shared.timeouts == {"192.0.2.1": 100}
    state.answer("a.test", [("192.0.2.2", 50)], 0.0, "", shared)  # cap 1: a lets .1 go, b still holds it
    assert shared.timeouts == {"192.0.2.1": 10, "192.0.2.2": 50} and not shared.removals
    state.answer("b.test", [("192.0.2.3", 50)], 0.0, "", shared)  # now nobody holds .1: closed
    assert shared.removals == {"192.0.2.1"} and "192.0.2.1" not in shared.timeouts
    assert shared.added == 3 and shared.refreshed == 1


def _response(qname: str, *records: str) -> bytes:
    query = dns.message.make_query(qname, "A")
    response = dns.message.make_response(query)
    for text in records:
        owner, ttl, rdclass, rdtype, rdata = text.split(maxsplit=4)
        response.answer.append(dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, rdata))
    return response.to_wire()


def test_addresses_follow_the_cname_chain_only() -> None:
    wire = _response(
        "www.test.",
        "www.test. 300 IN CNAME cdn.test.",
        "cdn.test. 60 IN CNAME edge.test.",
        "edge.test. 20 IN A 192.0.2.7",
        "evil.test. 20 IN A 198.51.100.66",  # not on the chain: must not open
    )
    answer = addresses(wire)
    assert answer.name == "www.test" and answer.records == [("192.0.2.7", 20)]
    loop = _response("a.test.", "a.test. 1 IN CNAME b.test.", "b.test. 1 IN CNAME a.test.")
    assert addresses(loop).records == []
    for malformed in (b"\x00\x01garbage", wire[:-3], wire[:12] + b"\xc0\x0c" + wire[14:]):
        with pytest.raises(BadMessage):
            addresses(malformed)


def test_query_checks_servfail_and_truncation() -> None:
    query = dns.message.make_query("a.test.", "A", use_edns=0, payload=1232)
    wire = query.to_wire()
    check_query(wire)
    with pytest.raises(BadMessage):
        check_query(wire[:5])
    with pytest.raises(BadMessage):
        check_query(_response("a.test."))
    failed = dns.message.from_wire(error_response(wire, dns.rcode.SERVFAIL))
    assert failed.rcode() == dns.rcode.SERVFAIL and failed.id == query.id and failed.question == query.question
    assert struct.unpack("!H", error_response(b"\x12\x34\x01\x00" + b"\xff" * 9, dns.rcode.SERVFAIL)[:2])[0] == 0x1234
    assert payload_of(wire) == 1232 and payload_of(dns.message.make_query("a.", "A").to_wire()) == 0
    assert udp_limit(payload_of(wire), 65535) == 1232 and udp_limit(4096, 65535) == 4096 and udp_limit(0) == 512
    big = _response("a.test.", *(f"a.test. 60 IN A 192.0.2.{i}" for i in range(1, 60)))
    short = dns.message.from_wire(truncate(big))
    assert short.flags & dns.flags.TC and not short.answer and short.question[0].name.to_text() == "a.test."


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _nflog(payload: bytes, forwarded: bool = False) -> bytes:
    attrs = _attr(NFULA_PREFIX, b"ztdns-audit \0") + _attr(NFULA_UID, struct.pack("!I", 1000))
    attrs += _attr(NFULA_PAYLOAD, payload) + (_attr(NFULA_IFINDEX_INDEV, struct.pack("!I", 3)) if forwarded else b"")
    body = struct.pack("!BBH", 2, 0, 7) + attrs
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def test_nflog_messages_decode_to_packets() -> None:
    ipv4 = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(6) + bytes([198, 51, 100, 20]) + struct.pack("!HH", 40000, 443)
    ipv6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(16) + bytes.fromhex("20010db8" + "00" * 11 + "01")
    ipv6 += struct.pack("!HH", 5353, 53)
    packets = parse_messages(_nflog(ipv4) + _nflog(ipv6, forwarded=True) + _nflog(b"\x45\x00"))
    assert [(p.destination, p.protocol, p.source_port, p.port, p.forwarded) for p in packets] == [
        ("198.51.100.20", "tcp", 40000, 443, False),
        ("2001:db8::1", "udp", 5353, 53, True),
    ]
    assert packets[0].prefix == "ztdns-audit " and packets[0].uid == 1000
    assert parse_messages(b"\x01\x02") == []


def test_learn_proposes_refused_names_by_domain_and_flags_dns_resolvers() -> None:
    curl = {"pid": 7, "comm": "curl"}
    records = [
        {"time": 100, "destination": "198.51.100.20", "protocol": "tcp", "port": 443, "name": None},
        {"time": 101, "destination": "198.51.100.20", "protocol": "tcp", "port": 8443, "name": None},
        {"time": 102, "destination": "192.0.2.5", "protocol": "tcp", "port": 443, "name": "api.test"},
        {"time": 1, "destination": "192.0.2.99", "protocol": "udp", "port": 53, "name": None},  # too old
        {"time": 103, "destination": "not an address", "protocol": "tcp", "port": 1, "name": None},
        # A foreign resolver, plain and DoT, and a well-known DoH address: flagged, never exceptions.
        {"time": 104, "destination": "192.0.2.53", "protocol": "udp", "port": 53, "name": None},
        {"time": 104, "destination": "192.0.2.53", "protocol": "tcp", "port": 853, "name": None},
        {"time": 104, "destination": "1.1.1.1", "protocol": "tcp", "port": 443, "name": None},
        # Names the resolver refused, from a short-lived curl and from a cgroup.
        {"time": 105, "blocked_name": "api.example.co.uk", "process": curl},
        {"time": 106, "blocked_name": "api.example.co.uk", "process": None, "cgroup": "/system.slice/app"},
        {"time": 106, "blocked_name": "cdn.example.co.uk", "process": curl},
        {"time": 107, "blocked_name": "dns.google", "process": {"pid": 8, "comm": "chrome"}},
    ]
    proposal = learn(records, since=50)
    assert set(proposal.domains) == {"example.co.uk"}
    names = proposal.domains["example.co.uk"]
    assert names["api.example.co.uk"].count == 2 and names["api.example.co.uk"].who == {
        "curl",
        "cgroup /system.slice/app",
    }
    assert set(proposal.resolver_names) == {"dns.google"} and set(proposal.outlived) == {"api.test"}
    assert proposal.networks == {"198.51.100.20/32": {"tcp": {443, 8443}}}
    assert set(proposal.resolvers) == {"192.0.2.53/32", "1.1.1.1/32"}
    text = proposal_toml(proposal)
    assert 'networks = ["198.51.100.20/32"]' in text and "ports = [443, 8443]" in text
    assert '    "api.example.co.uk",  # 2 records; cgroup /system.slice/app, curl' in text
    assert "# example.co.uk: 3 records" in text
    allow = text.split("allow = [", 1)[1].split("]", 1)[0]
    assert "dns.google" not in allow and "api.test" not in allow  # flagged / already allowed: comments only
    assert "#   dns.google  (1 records; chrome)" in text and "#   api.test  (1 records)" in text
    assert "192.0.2.53" not in text.split("# NOT proposed — DNS resolvers this host")[0]
    assert "#   192.0.2.53/32  tcp/853, udp/53" in text
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", 0)


def test_grant_store_replays_snapshot_and_torn_journal(tmp_path: Path) -> None:
    store = GrantStore(tmp_path)
    store.snapshot([Grant("192.0.2.1", "a.test", 200.0, "host")])
    store.append([Grant("192.0.2.1", "a.test", 300.0), Grant("192.0.2.2", "b.test", 50.0)])
    store.close()
    with (tmp_path / "journal.jsonl").open("a") as journal:
        journal.write('[{"a": "192.0.2.3", "n"')  # killed mid-write
    assert GrantStore(tmp_path).load(now=100.0) == [Grant("192.0.2.1", "a.test", 300.0, "")]
    (tmp_path / "snapshot.jsonl").write_text("{torn")
    assert [g.address for g in GrantStore(tmp_path).load(now=100.0)] == ["192.0.2.1"]


def test_grant_store_compaction_loses_nothing_at_any_step(tmp_path: Path) -> None:
    def grant(i: int, expires: float = 500.0) -> Grant:
        return Grant(f"192.0.2.{i}", f"n{i}.test", expires, "host")

    store = GrantStore(tmp_path, compact_after=3)
    store.snapshot([grant(1)])
    assert not store.append([grant(2)]) and store.append([grant(3), grant(4)])  # due
    store.begin_compaction()
    assert not store.append([grant(5)])  # into the fresh journal; no second compaction while one runs
    store.write_snapshot([grant(1), grant(2)])
    # Killed here: the old snapshot, the journal moved aside and the new journal hold everything.
    everything = {grant(i) for i in range(1, 6)}
    assert set(GrantStore(tmp_path).load(now=0.0)) == everything
    # Started again (the snapshot at start) after that crash: the old journal is merged, not lost.
    restarted = GrantStore(tmp_path)
    restarted.begin_compaction()
    assert set(GrantStore(tmp_path).load(now=0.0)) == everything
    restarted.write_snapshot(everything)
    restarted.finish_compaction()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.jsonl", "snapshot.jsonl"]
    assert set(GrantStore(tmp_path).load(now=0.0)) == everything
    # A refresh journaled after the snapshot wins over the snapshot's older expiry.
    restarted.append([grant(1, 900.0)])
    assert grant(1, 900.0) in GrantStore(tmp_path).load(now=0.0)
    # An abandoned compaction leaves no partial snapshot behind, and its journal still counts.
    restarted.begin_compaction()
    restarted.write_snapshot([grant(1)])
    restarted.abort_compaction()
    assert not (tmp_path / "snapshot.jsonl.tmp").exists()
    assert set(GrantStore(tmp_path).load(now=0.0)) == (everything - {grant(1)}) | {grant(1, 900.0)}


def test_resolv_conf_pointed_and_restored(tmp_path: Path) -> None:
    target = tmp_path / "real-resolv.conf"
    target.write_text("nameserver 192.0.2.53\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    state = tmp_path / "state"
    hostdns.point_at_stub(link, state, ["127.0.0.53:53", "127.0.0.54:5353"])
    assert not link.is_symlink() and "nameserver 127.0.0.53\n" in link.read_text()
    assert "127.0.0.54" not in link.read_text()
    hostdns.point_at_stub(link, state, ["127.0.0.53:53"])  # a restart keeps the original backup
    assert json.loads((state / hostdns.BACKUP).read_text()) == {"link": str(target)}
    assert hostdns.restore(link, state)
    assert link.is_symlink() and link.read_text() == "nameserver 192.0.2.53\n"
    assert not hostdns.restore(link, state)


def test_example_config_checks_and_prints_the_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    from ztdns.cli import main

    example = Path(__file__).parents[2] / "examples" / "agent.toml"
    assert main(["agent", "--config", str(example), "check"]) == 0
    ruleset = capsys.readouterr().out
    assert "ip6 daddr 2001:db8::53 tcp dport 853 accept" in ruleset
    assert 'ip daddr { 203.0.113.123/32 } udp dport { 123 } accept comment "exception time"' in ruleset
