"""Detection on synthetic streams through the whole pipeline in-process (a resolver that answers at once).

A fake clock drives the detector, so minutes of traffic take milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Iterable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric

from detect_lab import open_identities
from ztdns.client import ClientInfo, Transport
from ztdns.config import Config, parse_config
from ztdns.detect.engine import Detector, split_name
from ztdns.handler import Frontend
from ztdns.model import Question, Resolution

CONFIG = (
    open_identities(lab=["127.0.0.0/8", "::1/128"])
    + """
[log.query_log]
output = "off"

[detect]
mode = "{mode}"
builtin_allow = true
{extra}
"""
)


def detect_config(mode: str, extra: str = "") -> Config:
    return parse_config(CONFIG.format(mode=mode, extra=extra), "test", Path("."))


UDP = ClientInfo(Transport.UDP, "127.0.0.1", 40000)
TCP = ClientInfo(Transport.TCP, "127.0.0.1", 40000, stream=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """Answers names under known.test (and www.example.com) with an address; NXDOMAIN for everything else."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(self, question: Question) -> Resolution:
        name = question.name.to_text()
        self.asked.append(name)
        response = dns.message.Message(id=0)
        response.flags = dns.flags.QR | dns.flags.RA
        if name.endswith("known.test.") or name == "www.example.com.":
            response.answer = [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1")]
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            soa = dns.rrset.from_text(question.name.parent(), 60, "IN", "SOA", "ns. h. 1 3600 600 86400 60")
            response.authority = [soa]
        return Resolution(response)

    async def close(self) -> None:
        pass

    def collect(self) -> Iterable[Metric]:
        return ()


class Harness:
    def __init__(self, mode: str = "enforce", extra: str = "") -> None:
        self.upstream = Upstream()
        config = detect_config(mode, extra)
        self.frontend = Frontend(config, resolver_factory=lambda _: self.upstream)
        self.clock = Clock()
        self.frontend.detector.clock = self.clock
        self.events: list[dict[str, object]] = []
        self.frontend.detector.emit = self.events.append

    async def ask(self, name: str, rdtype: str = "A", client: ClientInfo = UDP) -> dns.message.Message | None:
        query = dns.message.make_query(name, rdtype, use_edns=0)
        wire = query.to_wire()
        answer = self.frontend.fast(wire, client)
        if answer is None:
            answer = await self.frontend.handle(wire, client)
        await asyncio.sleep(0)  # the tick and replay bookkeeping run after the answer
        return None if answer is None else dns.message.from_wire(answer)

    def verdicts(self, detector: str) -> list[dict[str, object]]:
        return [event for event in self.events if event["detector"] == detector]


def _ede(message: dns.message.Message) -> tuple[int, str] | None:
    for option in message.options:
        if isinstance(option, dns.edns.EDEOption):
            return int(option.code), option.text or ""
    return None


def tunnel_names(domain: str, count: int, chunk: int, seed: int = 1) -> list[str]:
    generator = random.Random(seed)
    names = []
    for index in range(count):
        payload = base64.b32encode(generator.randbytes(chunk)).decode().strip("=").lower()
        labels = [payload[i : i + 60] for i in range(0, len(payload), 60)]
        names.append(".".join([*labels, f"{index:x}", domain]) + ".")
    return names


def test_a_fast_tunnel_is_flagged_within_ten_seconds_and_blocked_with_an_explaining_ede() -> None:
    async def run() -> None:
        harness = Harness()
        names = tunnel_names("t.tunnel.test", 400, 100)
        blocked_at = None
        # 20 queries a second of 100 payload bytes (160 name bytes): 2 kB/s through names.
        for index, name in enumerate(names):
            harness.clock.now += 0.05
            answer = await harness.ask(name, "TXT")
            assert answer is not None
            if answer.rcode() == dns.rcode.NXDOMAIN and _ede(answer) is not None and blocked_at is None:
                blocked_at = index * 0.05
                code, text = _ede(answer) or (0, "")
                assert code == 15
                assert text.startswith("detect=tunnel identity=lab domain=tunnel.test rate=")
                assert "limit=1000B/s until=" in text
        assert blocked_at is not None and blocked_at <= 10.0
        events = harness.verdicts("tunnel")
        assert events and events[0]["action"] == "nxdomain" and events[0]["mode"] == "enforce"
        # Other domains keep answering for the same identity.
        answer = await harness.ask("www.known.test.")
        assert answer is not None and answer.rcode() == dns.rcode.NOERROR and answer.answer

    asyncio.run(run())


def test_a_slow_tunnel_at_fifty_bytes_a_second_is_flagged_within_a_minute() -> None:
    async def run() -> None:
        harness = Harness()
        # One query every 1.2 s carrying 60 payload bytes (96 name bytes): 50 payload B/s.
        names = tunnel_names("t.slow.test", 60, 60)
        flagged_at = None
        for index, name in enumerate(names):
            harness.clock.now += 1.2
            await harness.ask(name, "NULL")
            if harness.verdicts("tunnel") and flagged_at is None:
                flagged_at = (index + 1) * 1.2
        assert flagged_at is not None and flagged_at <= 60.0

    asyncio.run(run())


def test_repeated_browsing_is_not_a_tunnel() -> None:
    async def run() -> None:
        harness = Harness()
        names = [f"host{i % 30}.known.test." for i in range(600)]
        for name in names:
            harness.clock.now += 0.1
            await harness.ask(name)
        assert harness.verdicts("tunnel") == []

    asyncio.run(run())


def test_observe_mode_logs_and_counts_but_answers() -> None:
    async def run() -> None:
        harness = Harness(mode="observe")
        for name in tunnel_names("t.tunnel.test", 300, 100):
            harness.clock.now += 0.05
            answer = await harness.ask(name, "TXT")
            assert answer is not None and _ede(answer) is None
        events = harness.verdicts("tunnel")
        assert events and events[0]["action"] == "log" and events[0]["mode"] == "observe"
        families = {family.name: family for family in harness.frontend.detector.collect()}
        samples = {tuple(s.labels.values()): s.value for s in families["ztdns_detect_verdicts"].samples}
        assert samples[("tunnel", "log")] >= 1

    asyncio.run(run())


def test_allow_listed_random_names_are_not_analysed() -> None:
    async def run() -> None:
        harness = Harness()
        for name in tunnel_names("avqs.mcafee.com", 300, 100):
            harness.clock.now += 0.05
            await harness.ask(name, "TXT")
        assert harness.verdicts("tunnel") == []

    asyncio.run(run())


def test_registered_domains_follow_the_public_suffix_list() -> None:
    def domain(text: str) -> bytes:
        return split_name(dns.name.from_text(text).labels).domain

    assert domain("a.b.example.co.uk.") == b"example.co.uk"
    assert domain("x.y.blogspot.com.") == b"y.blogspot.com"
    assert domain("deep.name.internal.") == b"name.internal"
    assert domain("co.uk.") == b"co.uk"
    assert domain("A.B.Example.COM.") == b"example.com"


def test_dga_names_give_a_client_verdict_and_benign_failures_do_not() -> None:
    async def run() -> None:
        harness = Harness(extra="[detect.dga]\nmin_names = 8\naction = 'refuse'")
        generator = random.Random(5)
        # Benign typos and dead names first: words, no verdict.
        for word in ["mountainview", "coffeeshop", "bestbooks", "printer", "mailhost", "intranet", "wiki", "backup"]:
            harness.clock.now += 1
            for tld in ("com", "net"):
                await harness.ask(f"{word}.{tld}.")
        assert harness.verdicts("dga") == []
        letters = "abcdefghijklmnopqrstuvwxyz"
        for _ in range(30):
            harness.clock.now += 0.5
            label = "".join(generator.choice(letters) for _ in range(generator.randint(12, 20)))
            await harness.ask(f"{label}.com.")
        events = harness.verdicts("dga")
        assert events and events[0]["key"] == "client=127.0.0.1"
        answer = await harness.ask("www.known.test.")
        assert answer is not None and answer.rcode() == dns.rcode.REFUSED
        assert (_ede(answer) or (0, ""))[0] == 17

    asyncio.run(run())


def test_rate_limits_slip_over_udp_and_refuse_over_tcp() -> None:
    async def run() -> None:
        harness = Harness(extra="[detect.rate_limit]\nper_prefix = 10\nburst_seconds = 1\nslip = 2")
        answers = [await harness.ask("www.known.test.") for _ in range(30)]  # cached and replayed after the first
        dropped = sum(answer is None for answer in answers)
        truncated = sum(answer is not None and bool(answer.flags & dns.flags.TC) for answer in answers)
        assert dropped >= 8 and truncated >= 8
        answer = await harness.ask("www.known.test.", client=TCP)
        assert answer is not None and answer.rcode() == dns.rcode.REFUSED
        assert "detect=ratelimit prefix=127.0.0.1/32" in (_ede(answer) or (0, ""))[1]
        harness.clock.now += 5  # the bucket refills
        answer = await harness.ask("www.known.test.")
        assert answer is not None and answer.rcode() == dns.rcode.NOERROR and not answer.flags & dns.flags.TC

    asyncio.run(run())


def test_a_verified_certificate_is_exempt_from_address_limits() -> None:
    async def run() -> None:
        harness = Harness(extra="[detect.rate_limit]\nper_prefix = 5\nburst_seconds = 1")
        client = ClientInfo(Transport.DOT, "127.0.0.1", 40000, certificate_identity="spiffe://x/y", stream=True)
        answers = [await harness.ask("www.known.test.", client=client) for _ in range(40)]
        assert all(answer is not None and answer.rcode() == dns.rcode.NOERROR for answer in answers)

    asyncio.run(run())


def test_a_random_subdomain_flood_caps_upstream_fetches_and_cached_names_keep_answering() -> None:
    async def run() -> None:
        flood = "[detect.flood]\nupstream_quota = 20\nblock_after = 0"
        harness = Harness(extra=f"[detect.rate_limit]\nmode = 'off'\n{flood}")
        assert (await harness.ask("www.known.test.")) is not None  # cached before the flood
        generator = random.Random(3)
        asked_before = len(harness.upstream.asked)
        per_second: list[int] = []
        for second in range(8):
            start = len(harness.upstream.asked)
            for _ in range(500):  # 500 q/s of random names under victim.test
                harness.clock.now += 0.002
                label = "".join(generator.choice("abcdefghijklmnop") for _ in range(10))
                await harness.ask(f"{label}.victim.test.")
            per_second.append(len(harness.upstream.asked) - start)
            cached = await harness.ask("www.known.test.")
            assert cached is not None and cached.rcode() == dns.rcode.NOERROR and cached.answer, second
        assert len(harness.upstream.asked) > asked_before
        assert max(per_second[5:]) <= 25  # the quota (20/s) plus the bucket's depth once
        assert harness.verdicts("flood")

    asyncio.run(run())


def test_events_escape_client_names() -> None:
    async def run() -> None:
        harness = Harness(mode="observe")
        for index in range(300):
            harness.clock.now += 0.05
            name = dns.name.Name([f'{index}x<script>\x00"{"a" * 40}'.encode("latin-1"), b"evil\n", b"test", b""])
            query = dns.message.make_query(name, "TXT")
            await harness.frontend.handle(query.to_wire(), UDP)
            await asyncio.sleep(0)
        events = harness.verdicts("tunnel")
        assert events
        text = json.dumps(events)
        assert "<" not in text and "\\n" not in text.replace("\\\\", "")
        assert "evil\\\\010" in text

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["off", "observe"])
def test_replays_still_answer_when_nothing_is_enforced(mode: str) -> None:
    async def run() -> None:
        harness = Harness(mode=mode)
        await harness.ask("www.known.test.")
        wire = dns.message.make_query("www.known.test.", "A", use_edns=0).to_wire()
        assert harness.frontend.fast(wire, UDP) is not None

    asyncio.run(run())


def _cookie_query(name: str, client: bytes, server: bytes = b"") -> bytes:
    return dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.CookieOption(client, server)]).to_wire()


def _server_cookie(wire: bytes) -> bytes:
    message = dns.message.from_wire(wire)
    cookie = next(o for o in message.options if isinstance(o, dns.edns.CookieOption))
    return cookie.server


def test_server_cookies_are_answered_and_a_valid_one_exempts_from_address_limits() -> None:
    async def run() -> None:
        harness = Harness(extra="[detect.rate_limit]\nper_prefix = 5\nburst_seconds = 1\nslip = 0")
        frontend = harness.frontend
        client_cookie = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        first = await frontend.handle(_cookie_query("www.known.test.", client_cookie), UDP)
        assert first is not None
        server = _server_cookie(first)
        assert len(server) == 16 and server[0] == 1
        # With the server cookie: never limited, and never replayed (the cookie is this client's).
        for _ in range(40):
            wire = _cookie_query("www.known.test.", client_cookie, server)
            assert frontend.fast(wire, UDP) is None
            answer = await frontend.handle(wire, UDP)
            assert answer is not None and dns.message.from_wire(answer).rcode() == dns.rcode.NOERROR
        # The same cookie from another address is not valid there: that address is limited.
        other = ClientInfo(Transport.UDP, "127.0.0.2", 40000)
        results = [await frontend.handle(_cookie_query("www.known.test.", client_cookie, server), other)]
        results += [
            await frontend.handle(_cookie_query("www.known.test.", client_cookie, server), other) for _ in range(20)
        ]
        assert any(result is None for result in results)

    asyncio.run(run())


def test_forged_and_expired_server_cookies_are_not_valid() -> None:
    from ztdns.detect.cookies import ServerCookies

    cookies = ServerCookies(b"k" * 16)
    client = b"abcdefgh"
    server = cookies.make(client, "192.0.2.1", 1_000_000)
    assert cookies.valid(client, server, "192.0.2.1", 1_000_100)
    assert not cookies.valid(client, server, "192.0.2.2", 1_000_100)  # another address
    assert not cookies.valid(b"abcdefgi", server, "192.0.2.1", 1_000_100)  # another client cookie
    assert not cookies.valid(client, server, "192.0.2.1", 1_000_000 + 3601)  # expired
    assert not cookies.valid(client, server[:-1] + bytes([server[-1] ^ 1]), "192.0.2.1", 1_000_100)
    assert not cookies.valid(client, b"", "192.0.2.1", 1_000_100)
    assert not ServerCookies(b"j" * 16).valid(client, server, "192.0.2.1", 1_000_100)  # another secret


labels_strategy = st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=labels_strategy, rdtype=st.integers(min_value=1, max_value=65535), rcode=st.integers(0, 15))
def test_any_name_is_analysed_without_crashing(labels: list[bytes], rdtype: int, rcode: int) -> None:
    """Binary, dotted, escaped, empty-ish and oversized labels: every detector takes them, and the tick runs."""
    try:
        name = dns.name.Name([*labels, b""])
    except dns.name.NameTooLong:
        name = dns.name.Name([*labels[:3], b""])
    detector = Detector(detect_config("enforce").detect)
    clock = Clock()
    detector.clock = clock
    events: list[dict[str, object]] = []
    detector.emit = events.append
    for index in range(30):
        clock.now += 0.01
        split = split_name(name.labels)
        detector.allowed(split)
        detector.blocked("lab", "127.0.0.1", split, clock.now)
        detector.record("lab", "127.0.0.1", split, rdtype, rcode if index else 3, False, clock.now)
    # Analysed, not skipped (a registered domain alone carries nothing for the tunnel detector).
    assert len(detector.tunnels) == (1 if split_name(name.labels).below else 0)
    assert len(detector.zones) == 1
    detector.tick()
    for event in events:
        json.dumps(event)  # printable and serialisable whatever the name held
        assert all(ord(ch) < 127 and ch.isprintable() for ch in str(event["text"]))


def test_memory_stays_bounded_whatever_the_number_of_names() -> None:
    harness = Detector(detect_config("observe", "max_keys = 1000\nmax_zones = 500").detect)
    clock = Clock()
    harness.clock = clock
    for index in range(30_000):  # distinct registered domains and clients, 30 times the bounds
        clock.now += 0.0003
        name = split_name((f"n{index}".encode(), f"zone{index % 15_000}".encode(), b"com", b""))
        harness.record("lab", f"10.{index % 250}.{index // 250 % 250}.1", name, 1, 3, False, clock.now)
        harness.admit("lab", f"10.{index % 250}.{index // 250 % 250}.{index % 7}", False, clock.now)
        if index % 3000 == 0:
            harness.tick()
    assert len(harness.tunnels) <= 1000 and len(harness.clients) <= 1000 and len(harness.zones) <= 500
    assert len(harness.buckets) <= 1000


def test_at_most_one_event_per_key_per_log_interval() -> None:
    async def run() -> None:
        harness = Harness(mode="observe", extra="[detect.rate_limit]\nper_prefix = 5\nburst_seconds = 1")
        for _ in range(200):  # 200 queries over 2 s: over the limit nearly all the time
            harness.clock.now += 0.01
            await harness.ask("www.known.test.")
        assert 1 <= len(harness.verdicts("ratelimit")) <= 3

    asyncio.run(run())


def test_explain_shows_what_the_detectors_make_of_a_name() -> None:
    from ztdns.explain import run

    config = detect_config("enforce")
    text = run(config, "127.0.0.1", "xjkqwhdkfjqwe.com", "A")
    assert "tracked as identity=lab domain=xjkqwhdkfjqwe.com" in text
    assert "DGA score of 'xjkqwhdkfjqwe': 0.9" in text or "DGA score of 'xjkqwhdkfjqwe': 1.0" in text
    assert "verdict:   none in force here" in text
    assert "under the allow-list" in run(config, "127.0.0.1", "abc.avqs.mcafee.com", "A")


def test_a_reload_keeps_the_verdicts_and_follows_the_new_mode() -> None:
    async def run() -> None:
        harness = Harness()
        for name in tunnel_names("t.tunnel.test", 200, 100):
            harness.clock.now += 0.05
            await harness.ask(name, "TXT")
        detector = harness.frontend.detector
        assert detector.blocks
        await harness.frontend.reload(detect_config("observe"))
        assert harness.frontend.detector is detector and detector.blocks  # state survives, as the cache does
        assert detector.modes["tunnel"] == "observe"
        assert not any(verdict.enforced for verdict in detector.blocks.values())
        answer = await harness.ask(tunnel_names("t.tunnel.test", 1, 10, seed=9)[0], "TXT")
        assert answer is not None and _ede(answer) is None
        await harness.frontend.reload(detect_config("off"))
        assert not detector.enabled and detector.cookies is None

    asyncio.run(run())


def test_cookies_are_answered_only_where_the_limits_act() -> None:
    async def run() -> None:
        harness = Harness(mode="observe")
        wire = _cookie_query("www.known.test.", b"\x01" * 8)
        answer = await harness.frontend.handle(wire, UDP)
        await asyncio.sleep(0)
        assert answer is not None
        assert not any(isinstance(o, dns.edns.CookieOption) for o in dns.message.from_wire(answer).options)
        assert harness.frontend.fast(wire, UDP) is not None  # still replayed

    asyncio.run(run())


def test_a_verdict_text_follows_its_measured_value_and_expiry() -> None:
    from ztdns.detect.verdict import Verdict

    verdict = Verdict("tunnel", "identity=lab domain=ex.com", "812B/s", "50B/s", 100.0, "refuse", True)
    first = verdict.text(40.0)
    assert verdict.text(40.0) is first  # made once while nothing changes
    verdict.measured = "900B/s"
    assert "rate=900B/s" in verdict.text(40.0)
    later = verdict.text(40.0)
    verdict.until = 160.0  # renewed by a tick: a minute later
    assert verdict.text(40.0) != later
    assert verdict.text(40.0).endswith(f"until={verdict.expiry_text(40.0)}")


def test_the_dga_score_of_a_domain_is_remembered_and_equals_the_model() -> None:
    detector = Detector(detect_config("observe").detect)
    score = detector.dga_score(b"xjkqwhdkfjqwe.com")
    assert score == detector.model.score("xjkqwhdkfjqwe")
    assert detector.scores == {b"xjkqwhdkfjqwe.com": score}


def test_check_does_not_read_the_dga_model() -> None:
    from ztdns.config import load_config
    from ztdns.daemon import verify
    from ztdns.detect.dga import shipped_model

    shipped_model.cache_clear()
    verify(load_config(str(Path(__file__).resolve().parents[2] / "examples" / "detect.toml")))  # every detector on
    assert shipped_model.cache_info().currsize == 0
    assert Detector(detect_config("enforce").detect).model is not None
    assert shipped_model.cache_info().currsize == 1


SERVED = """
[[listen]]
transport = "udp"
address = "127.0.0.1:0"

[metrics]
enabled = false
"""


def test_a_starting_server_reads_the_dga_model_before_its_first_failing_name() -> None:
    """Read on the first NXDOMAIN, the model cost that answer ~12 ms (a cold recursion bench case)."""
    from ztdns.daemon import Service
    from ztdns.detect.dga import shipped_model

    async def start(mode: str) -> int:
        shipped_model.cache_clear()
        service = Service(detect_config(mode, SERVED), None)
        await service.start()
        await service.drain()
        return shipped_model.cache_info().currsize

    assert asyncio.run(start("observe")) == 1
    assert asyncio.run(start("off")) == 0
