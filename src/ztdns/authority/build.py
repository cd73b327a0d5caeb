"""Build a running :class:`Authority` from ``[authority]`` configuration."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.tsigkeyring

from ztdns.authority.handler import DEFAULT_MAX_TTL, Authority, Quota, ServedZone, ZoneSettings, check_ttls
from ztdns.authority.kasp import KeyManager, KeyStore, Policy
from ztdns.authority.keys import ALGORITHMS, KeyStoreError
from ztdns.authority.rrl import RateLimiter
from ztdns.authority.signing import Validity
from ztdns.authority.transfer import TransferAcl
from ztdns.authority.update import Grant
from ztdns.authority.zone import Zone, ZoneError
from ztdns.config import Config
from ztdns.config.authority import AuthorityConfig, AuthZoneConfig, Pkcs11Config, SigningConfig
from ztdns.config.base import parse_hostport
from ztdns.observe.metrics import Metrics


def policy(signing: SigningConfig) -> Policy:
    return Policy(
        ALGORITHMS[signing.algorithm],
        signing.csk,
        signing.dnskey_ttl,
        signing.propagation_delay,
        signing.parent_propagation_delay,
        signing.parent_ds_ttl,
        signing.zsk_lifetime,
        signing.ksk_lifetime,
        signing.algorithm_rollover,
        signing.purge_delay,
        signing.cds_publish,
        signing.offline_ksk,
    )


def state_dir(config: Config) -> Path:
    """Where key timelines, keys and dynamic records live: ``[authority] state_dir`` or under the server's."""
    return Path(config.authority.state_dir or Path(config.server.state_dir) / "authority")


def build_authority(
    config: AuthorityConfig, base_dir: Path, state_dir: Path, metrics: Metrics | None = None
) -> Authority:
    """Load zone files and keys; raises ZoneError or KeyStoreError naming the zone. ``metrics``: the
    server's, so that one scrape shows everything."""
    return ZoneLoader(config, base_dir, state_dir, metrics).authority


class ZoneLoader:
    """Builds the authority from ``[authority]``, and applies a reloaded section to it: only zones whose config
    or zone file text changed are rebuilt (their keys and dynamic records are read back from the state
    directory, and their serial moves past the one served), so the others keep their signature caches."""

    def __init__(self, config: AuthorityConfig, base_dir: Path, state_dir: Path, metrics: Metrics | None) -> None:
        # The key store stays the process's: key_store and pkcs11 changes need a restart.
        self.store = key_store(config, base_dir)
        self.authority = Authority([], metrics=metrics)
        self.sources: dict[dns.name.Name, tuple[AuthZoneConfig, str]] = {}
        self.load(config, base_dir, state_dir)

    def load(self, config: AuthorityConfig, base_dir: Path, state_dir: Path) -> list[str]:
        """Serve ``config``; returns the zones (re)built. Raises ZoneError or KeyStoreError, changing nothing."""
        zones, sources, built = [], {}, []
        for zc in config.zones:
            origin = dns.name.from_text(zc.name)
            source = sources[origin] = (zc, zone_text(zc, base_dir))
            running = self.authority.zones.get(origin)
            if running is not None and self.sources.get(origin) == source:
                zones.append(running)
                continue
            zone = build_zone(zc, base_dir, state_dir, self.store, source[1])
            if running is not None:
                zone.follow(running.base.serial)
            zones.append(zone)
            built.append(zc.name)
        keyring = dns.tsigkeyring.from_text({name: (k.algorithm, k.secret) for name, k in config.tsig_keys.items()})
        identities = {dns.name.from_text(name): k.identity for name, k in config.tsig_keys.items() if k.identity}
        rrl = config.rrl
        exempt = [ipaddress.ip_network(n, strict=False) for n in rrl.exempt]
        limiter = (
            RateLimiter(rrl.rate, rrl.burst, rrl.slip, rrl.ipv4_prefix, rrl.ipv6_prefix, exempt=exempt)
            if rrl.enabled
            else None
        )
        self.authority.nsid = config.nsid.encode()
        self.authority.replace(zones, keyring, identities, limiter)
        self.sources = sources
        return built


def key_store(config: AuthorityConfig, base_dir: Path) -> KeyStore | None:
    """The configured key store; None means the default, files under the state directory."""
    if config.key_store != "pkcs11":
        return None
    assert config.pkcs11 is not None  # the config model requires it
    # Imported here: only a PKCS#11 deployment loads the binding.
    from ztdns.authority.pkcs11 import Pkcs11Store, Token, TokenSettings

    return Pkcs11Store(
        Token(TokenSettings(config.pkcs11.module, config.pkcs11.token_label, _pin(config.pkcs11, base_dir)))
    )


def _pin(config: Pkcs11Config, base_dir: Path) -> str:
    if config.pin_env is not None:
        pin = os.environ.get(config.pin_env)
        if pin is None:
            raise KeyStoreError(f"[authority.pkcs11] pin_env: environment variable {config.pin_env} is not set")
        return pin
    assert config.pin_file is not None
    path = base_dir / config.pin_file
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KeyStoreError(f"[authority.pkcs11] pin_file: cannot read {path}: {exc}") from None


def key_manager(zc: AuthZoneConfig, state_dir: Path, store: KeyStore | None = None) -> KeyManager:
    return KeyManager(dns.name.from_text(zc.name), policy(zc.signing), state_dir, store)


def zone_text(zc: AuthZoneConfig, base_dir: Path) -> str:
    """The zone file's text followed by the inline records."""
    text = ""
    if zc.file is not None:
        path = base_dir / zc.file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ZoneError(f"zone {zc.name}: cannot read {path}: {exc}") from None
    return text + "\n" + "\n".join(zc.records) + "\n"


def check_zone(zc: AuthZoneConfig, base_dir: Path, state: Path | None = None) -> None:
    """What ``ztdns check`` reads of a zone: its file and records must load and obey ``max_zone_ttl``; with the
    state directory, a change of algorithm must be allowed to roll (no key is loaded or made)."""
    zone = Zone.from_text(zone_text(zc, base_dir), dns.name.from_text(zc.name))
    check_ttls(zone, zc.max_zone_ttl or DEFAULT_MAX_TTL)
    if state is not None and zc.signing.enabled and (state / f"{zc.name.rstrip('.') or 'root'}.keys.json").exists():
        reason = key_manager(zc, state).algorithm_change()
        if reason is not None:
            raise ZoneError(reason)


def build_zone(
    zc: AuthZoneConfig, base_dir: Path, state_dir: Path, store: KeyStore | None = None, text: str | None = None
) -> ServedZone:
    """One served zone from its config (``text``: its :func:`zone_text`, when already read)."""
    origin = dns.name.from_text(zc.name)
    text = zone_text(zc, base_dir) if text is None else text
    zone = Zone.from_text(text, origin)
    grants = tuple(
        Grant(g.identity, tuple(g.names), frozenset(dns.rdatatype.from_text(t) for t in g.types)) for g in zc.grants
    )
    settings = ZoneSettings(
        origin,
        grants=grants,
        transfer=TransferAcl(
            frozenset(dns.name.from_text(k) for k in zc.transfer_keys),
            tuple(ipaddress.ip_network(n, strict=False) for n in zc.transfer_networks),
        ),
        notify=tuple(parse_hostport(n, 53) for n in zc.notify),
        notify_key=dns.name.from_text(zc.notify_key) if zc.notify_key else None,
        denial=zc.signing.denial,
        validity=Validity(zc.signing.signature_lifetime, zc.signing.signature_jitter, zc.signing.signature_refresh),
        state_path=state_dir / f"{zc.name.rstrip('.') or 'root'}.dynamic.json",
        serial_policy=zc.serial_policy,
        cds_digest="SHA384" if zc.signing.cds_digest == "sha384" else "SHA256",
        max_ttl=zc.max_zone_ttl or DEFAULT_MAX_TTL,
        max_ttl_explicit=zc.max_zone_ttl is not None,
        quota=Quota(zc.quota_records, zc.quota_bytes),
        source=hashlib.sha256(text.encode()).hexdigest(),
        parents=tuple(parse_hostport(p, 53) for p in zc.signing.parent_servers),
        parent_check_interval=zc.signing.parent_check_interval,
        ds_push=parse_hostport(zc.signing.ds_push, 53) if zc.signing.ds_push else None,
        ds_push_key=dns.name.from_text(zc.signing.ds_push_key) if zc.signing.ds_push_key else None,
        skr_warning=zc.signing.skr_warning,
    )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = key_manager(zc, state_dir, store) if zc.signing.enabled else None
    return ServedZone(settings, zone, keys)
