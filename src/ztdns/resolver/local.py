"""Local zones: small zones answered from memory (the built-in ``ztdns.test.``, site-local names).

Answers carry AA. A name that exists with other types gets NODATA, a name that does not exist NXDOMAIN, both
with the zone's SOA; CNAMEs are followed while they stay inside local zones. Full authoritative serving
(wildcards, delegations, DNSSEC) is the ``authority`` capability's job.
"""

from __future__ import annotations

import bisect
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zone

from ztdns.config import ConfigError
from ztdns.config.local_zones import LocalZoneConfig
from ztdns.config.locate import Loc
from ztdns.model import Kind
from ztdns.pipeline import Asked, AskedNext
from ztdns.replay import StoreHint

# Local data changes only on reload, which drops fast-path replays.
LOCAL_REPLAY_SECONDS = 300.0
_MAX_CHAIN = 8


def load_zone(config: LocalZoneConfig, base_dir: Path, where: Callable[[Loc], str]) -> dns.zone.Zone:
    """Parse a local zone; ``where(key)`` ("file.toml:12: local_zones[0].records[3]") prefixes errors. The zone
    needs an SOA, and every record must belong to it (dnspython would drop the others silently: never served)."""
    origin = dns.name.from_text(config.name or ".")
    if config.file is not None:
        path = base_dir / config.file
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([f"{where(('file',))}: {config.name}: {exc}"]) from None
        zone = _parse(text, origin, str(path), lambda _line: where(("file",)))
        outside = _outside(text, origin)
        if outside:
            names = ", ".join(str(name) for name in outside[:3])
            raise ConfigError([f"{where(('file',))}: {path}: records outside the zone {origin}: {names}"])
    else:
        # One record per line, so dnspython's line numbers map back to array elements.
        firsts = list(itertools.accumulate((record.count("\n") + 1 for record in config.records), initial=1))
        text = "\n".join(config.records)
        zone = _parse(text, origin, "<records>", lambda line: where(("records", bisect.bisect(firsts, line) - 1)))
        for index, record in enumerate(config.records):
            if _outside(record, origin):
                raise ConfigError([f"{where(('records', index))}: the record is outside the zone {origin}"])
    if zone.get_rdataset(origin, dns.rdatatype.SOA) is None:
        key = "file" if config.file is not None else "records"
        raise ConfigError([f"{where((key,))}: {config.name}: the zone needs an SOA record at {origin}"])
    return zone


def _parse(text: str, origin: dns.name.Name, filename: str, at_line: Callable[[int], str]) -> dns.zone.Zone:
    try:
        return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False, filename=filename)
    except (dns.exception.DNSException, ValueError) as exc:  # ValueError: an SOA below the origin, for one
        # dnspython says "FILENAME:LINE: problem": name the config's file, line and key instead.
        match = re.match(rf"{re.escape(filename)}:(\d+): (.*)", str(exc), re.DOTALL)
        if match is None:
            raise ConfigError([f"{at_line(0)}: {exc}"]) from None
        line = int(match.group(1))
        where = at_line(line)
        detail = match.group(2) if filename == "<records>" else f"{filename}:{line}: {match.group(2)}"
        raise ConfigError([f"{where}: {detail}"]) from None


def _outside(text: str, origin: dns.name.Name) -> list[dns.name.Name]:
    """Owner names in zone text that are not at or below ``origin`` (the zone reader drops those records without a
    word). Called on text the reader accepted, so it only needs to follow owners and ``$ORIGIN``."""
    tokens = dns.tokenizer.Tokenizer(text)
    current, found = origin, []
    while not (token := tokens.get(want_leading=True)).is_eof():
        if token.is_eol():
            continue
        if token.is_identifier() and token.value.upper() == "$ORIGIN":
            current = dns.name.from_text(tokens.get_string(), current)
        elif token.is_identifier() and not token.value.startswith("$"):
            owner = current if token.value == "@" else dns.name.from_text(token.value, current)
            if not owner.is_subdomain(origin):
                found.append(owner)
        while not (rest := tokens.get()).is_eol_or_eof():  # the rest of the record (parentheses span lines)
            pass
        if rest.is_eof():
            break
    return found


class LocalZones:
    def __init__(self, zones: list[dns.zone.Zone]) -> None:
        # Longest origin first, so the most specific zone answers.
        self._zones = sorted(zones, key=lambda zone: len(zone.origin), reverse=True)  # type: ignore[arg-type]

    def find(self, name: dns.name.Name) -> dns.zone.Zone | None:
        for zone in self._zones:
            assert zone.origin is not None
            if name.is_subdomain(zone.origin):
                return zone
        return None

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """An authoritative answer from local data, or None when no local zone holds the name."""
        question = query.question[0]
        zone = self.find(question.name)
        if zone is None:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        name = question.name
        for _ in range(_MAX_CHAIN):
            node = zone.get_node(name)
            if node is None:
                if not _has_descendants(zone, name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return _with_soa(response, zone)
            if question.rdtype == dns.rdatatype.ANY and node.rdatasets:
                # Everything at the name (a CNAME alone, by RFC 1034): the ANY stage minimises it (RFC 8482).
                response.answer.extend(_rrset(name, rdataset) for rdataset in node.rdatasets)
                return response
            data = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if data is not None:
                response.answer.append(_rrset(name, data))
                return response
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                return _with_soa(response, zone)
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            next_zone = self.find(name)
            if next_zone is None:
                return response  # the chain leaves local data: the client follows it
            zone = next_zone
        return response


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def _has_descendants(zone: dns.zone.Zone, name: dns.name.Name) -> bool:
    return any(owner != name and owner.is_subdomain(name) for owner in zone.nodes)


def _with_soa(response: dns.message.Message, zone: dns.zone.Zone) -> dns.message.Message:
    assert zone.origin is not None
    soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
    if soa is not None:
        rrset = _rrset(zone.origin, soa)
        rrset.ttl = min(soa.ttl, soa[0].minimum)
        response.authority.append(rrset)
    return response


class LocalZoneStage:
    name = "local"

    def __init__(self, zones: LocalZones) -> None:
        self.zones = zones

    async def __call__(self, ctx: Asked, call_next: AskedNext) -> None:
        response = self.zones.answer(ctx.query)
        if response is None:
            await call_next(ctx)
            return
        ctx.response = response
        ctx.kind = Kind.LOCAL
        ctx.store = StoreHint(time.monotonic() + LOCAL_REPLAY_SECONDS)
