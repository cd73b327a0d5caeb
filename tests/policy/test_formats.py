"""List formats operators use: AdBlock operators and modifiers, IDN, empty lists, RPZ (against Unbound's rpz)."""

from __future__ import annotations

import logging
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from fixtures.unbound import UnboundFactory
from ztdns.config import parse_config
from ztdns.policy import View, compile_views
from ztdns.policy.lists import read_list
from ztdns.policy.stage import blocked_response

A = int(dns.rdatatype.A)


def view(tmp_path: Path, policy: str, lists: dict[str, str]) -> View:
    for name, text in lists.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    text = f'[identities.x]\npolicies = ["p"]\n[policies.p]\n{policy}\n'
    return compile_views(parse_config(text, "test.toml", tmp_path))["x"]


def blocked(v: View, name: str, qtype: int = A) -> bool:
    return not v.decide(name, qtype).allowed


def test_adblock_operators(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        'allow = ["**"]\ndeny_lists = ["ads.txt"]',
        {
            "ads.txt": "||tree.example^\n||*.below.example^\n|exact.example|\n|exact2.example^\n"
            "||IMP.example^$important\n"
        },
    )
    assert blocked(v, "tree.example") and blocked(v, "a.b.tree.example")
    assert not blocked(v, "below.example") and blocked(v, "a.below.example") and blocked(v, "a.b.below.example")
    assert blocked(v, "exact.example") and not blocked(v, "www.exact.example")
    assert blocked(v, "exact2.example") and not blocked(v, "www.exact2.example")
    assert blocked(v, "imp.example") and blocked(v, "www.imp.example")


def test_modifiers_are_counted_by_name_not_dropped_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "mods.txt"
    path.write_text(
        "||a.example^$third-party\n||b.example^$client=10.0.0.1\n||c.example^$dnstype=AAAA\n"
        "||d.example^$important,badfilter\n||e.example^$important\n/ads[0-9]+\\.example/\n||f.example/path\n"
    )
    with caplog.at_level(logging.INFO, logger="ztdns.policy"):
        parsed = read_list(path, "mods.txt")
    assert set(parsed.entries()) == {"e.example", "/ads[0-9]+\\.example/"}  # regexes are entries now
    assert dict(parsed.tally.skipped) == {
        "adblock-modifier:third-party": 1,
        "adblock-modifier:client": 1,
        "adblock-modifier:dnstype": 1,
        "adblock-modifier:badfilter": 1,
        "adblock-unsupported": 1,
    }
    assert "adblock-modifier:client=1" in caplog.text


def test_plain_wildcards_mean_what_the_grammar_says(tmp_path: Path) -> None:
    v = view(tmp_path, 'allow = ["**"]\ndeny_lists = ["plain.txt"]', {"plain.txt": "*.one.example\n**.deep.example\n"})
    assert blocked(v, "a.one.example") and not blocked(v, "a.b.one.example") and not blocked(v, "one.example")
    assert blocked(v, "a.b.deep.example") and not blocked(v, "deep.example")


def test_idn_in_rules_and_lists(tmp_path: Path) -> None:
    v = view(
        tmp_path,
        'allow = ["**.Bücher.example", "bücher.example"]\ndeny_lists = ["idn.txt"]',
        {"idn.txt": "schädlich.example\n0.0.0.0 böse.example\n||werbung.münchen.example^\n"},
    )
    assert not blocked(v, "xn--bcher-kva.example") and not blocked(v, "www.xn--bcher-kva.example")
    assert blocked(v, "xn--schdlich-5za.example")
    assert blocked(v, "xn--bse-sna.example")
    assert blocked(v, "a.werbung.xn--mnchen-3ya.example")


def test_a_list_without_entries_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("<html><body>502 Bad Gateway</body></html>\n")
    with caplog.at_level(logging.INFO, logger="ztdns.policy"):
        read_list(path, "empty.txt")
    [record] = [r for r in caplog.records if "empty.txt" in r.getMessage()]
    assert record.levelno == logging.WARNING and "0 entries" in record.getMessage()


RPZ = """\
$TTL 300
$ORIGIN rpz.test.
@ SOA ns.rpz.test. hostmaster.rpz.test. 1 3600 600 86400 60
@ NS ns.rpz.test.
nx.site.test CNAME .
*.nx.site.test CNAME .
nodata.site.test CNAME *.
pass.site.test CNAME rpz-passthru.
drop.site.test CNAME rpz-drop.
alias.site.test CNAME www.site.test.
sink.site.test A 192.0.2.66
sink.site.test AAAA 2001:db8::66
32.1.2.0.192.rpz-ip CNAME .
24.0.100.51.198.rpz-ip CNAME *.
32.7.100.51.198.rpz-ip CNAME rpz-passthru.
64.zz.db8.2001.rpz-ip CNAME .
33.1.2.0.192.rpz-ip CNAME .
tcp.site.test CNAME rpz-tcp-only.
txt.site.test TXT "local text"
"""
# The real data behind the policy: an auth-zone, because Unbound answers local zones before applying RPZ.
SITE = """\
$ORIGIN site.test.
@ 300 IN SOA ns.site.test. h.site.test. 1 3600 600 86400 60
@ 300 IN NS ns.site.test.
ns 300 IN A 127.0.0.1
pass 300 IN A 192.0.2.10
www 300 IN A 192.0.2.11
ipnx 300 IN A 192.0.2.1
ipnx6 300 IN AAAA 2001:db8::99
ipnodata 300 IN A 198.51.100.9
ippass 300 IN A 198.51.100.7
"""


def test_rpz_entries_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "policy.rpz"
    path.write_text(RPZ)
    parsed = read_list(path, "policy.rpz")
    assert set(parsed.entries()) == {
        "nx.site.test",
        "nodata.site.test",
        "pass.site.test",
        "drop.site.test",
        "alias.site.test",
        "sink.site.test",
    }
    assert dict(parsed.tally.skipped) == {"rpz-ip-invalid": 1, "rpz-tcp-only": 1, "rpz-local-data-TXT": 1}
    assert sorted(str(network) for network, _ in parsed.addresses) == [
        "192.0.2.1/32",
        "198.51.100.0/24",
        "198.51.100.7/32",
        "2001:db8::/64",
    ]


def _ours(v: View, name: str, rdtype: str, answer: str | None = None) -> tuple[str, list[str]] | None:
    """What ztdns answers for ``name`` from its policy (None: dropped; 'pass' when the policy lets it through),
    given the address the name resolves to (``answer``, for RPZ-IP triggers)."""
    decision = v.decide(name.rstrip("."), int(dns.rdatatype.from_text(rdtype)))
    if decision.allowed and answer is not None:
        decision = v.decide_addresses([answer]) or decision
    if decision.allowed:
        return "pass", []
    if decision.blocked_response == "drop":
        return None
    response = blocked_response(dns.message.make_query(name, rdtype), decision)
    return dns.rcode.to_text(response.rcode()), sorted(rr.to_text() for rrset in response.answer for rr in rrset)


def _unbound(address: str, name: str, rdtype: str) -> tuple[str, list[str]] | None:
    host, port = address.split(":")
    try:
        response = dns.query.udp(dns.message.make_query(name, rdtype), host, port=int(port), timeout=1.0)
    except dns.exception.Timeout:
        return None
    # Unbound's local data for PASSTHRU names is the 'real' answer here: ztdns would resolve them.
    if name in ("pass.site.test.", "ippass.site.test."):
        return "pass", []
    return dns.rcode.to_text(response.rcode()), sorted(rr.to_text() for rrset in response.answer for rr in rrset)


@pytest.mark.slow
def test_rpz_answers_match_unbound(tmp_path: Path, unbound_upstream: UnboundFactory) -> None:
    zone = tmp_path / "policy.rpz"
    zone.write_text(RPZ)
    site = tmp_path / "site.zone"
    site.write_text(SITE)
    address = unbound_upstream(
        [],
        zones=(),
        extra=(
            'module-config: "respip iterator"',
            'local-zone: "test." nodefault',
            "auth-zone:",
            "  name: site.test.",
            f'  zonefile: "{site}"',
            "  for-upstream: yes",
            "  for-downstream: no",
            "rpz:",
            "  name: rpz.test.",
            f'  zonefile: "{zone}"',
            "  rpz-log: no",
        ),
    )
    v = view(tmp_path, 'allow = ["**"]\ndeny_lists = ["policy.rpz"]', {})
    cases = [
        ("nx.site.test.", "A"),
        ("a.b.nx.site.test.", "A"),
        ("nodata.site.test.", "A"),
        ("pass.site.test.", "A"),
        ("drop.site.test.", "A"),
        ("alias.site.test.", "A"),
        ("sink.site.test.", "A"),
        ("sink.site.test.", "AAAA"),
        ("sink.site.test.", "MX"),
    ]
    # RPZ-IP: the real answer's address decides (NXDOMAIN, NODATA, PASSTHRU for a longer prefix, IPv6).
    answers = {
        "ipnx.site.test.": "192.0.2.1",
        "ipnx6.site.test.": "2001:db8::99",
        "ipnodata.site.test.": "198.51.100.9",
        "ippass.site.test.": "198.51.100.7",
        "www.site.test.": "192.0.2.11",
    }
    cases += [(name, "AAAA" if ":" in answer else "A") for name, answer in answers.items()]
    for name, rdtype in cases:
        theirs = _unbound(address, name, rdtype)
        if theirs is not None and name == "www.site.test.":
            theirs = ("pass", []) if theirs[0] == "NOERROR" and theirs[1] else theirs
        ours = _ours(v, name, rdtype, answers.get(name))
        if theirs is not None and ours is not None and name == "alias.site.test.":
            # Unbound follows the local CNAME to the real data; ztdns answers the CNAME and lets the client
            # (or the chain check) go on. The CNAME itself must agree.
            theirs = theirs[0], [rr for rr in theirs[1] if "." in rr and not rr[0].isdigit()]
        assert ours == theirs, (name, rdtype)


def test_lists_read_a_block_and_a_slice_at_a_time_give_what_whole_files_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading in blocks and parsing in slices (so a feed's compile never holds the GIL for long) changes nothing:
    CRLF ends, a last line without its end, invalid UTF-8 and comment lines cut at every possible place."""
    from ztdns.policy import lists

    body = b"# c\r\nads.example\r\n||track.example^\n0.0.0.0 sink.example\n\xff\xfebad\n\nlast.example"
    path = tmp_path / "list.txt"
    path.write_bytes(body)
    whole = read_list(path, "list.txt")
    expected = body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    for block in range(1, len(body) + 1):
        monkeypatch.setattr(lists, "_BLOCK", block)
        monkeypatch.setattr(lists, "_SLICE", 1 + block % 3)
        assert lists._lines(path) == expected
        parsed = read_list(path, "list.txt")
        # The order inside a group is free: every name of a group gets the same entry.
        assert {bits: sorted(names) for bits, names in parsed.groups.items()} == {
            bits: sorted(names) for bits, names in whole.groups.items()
        }
        assert parsed.tally.summary() == whole.tally.summary()
