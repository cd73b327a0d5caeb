"""``[authority]`` configuration models (docs/authority.md); building from them is in :mod:`ztdns.authority.build`."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import dns.name
import dns.rdatatype
from pydantic import Field, field_validator, model_validator

from ztdns.config.base import Section, check_networks, parse_hostport

DAY = 86400


class TsigKeyConfig(Section):
    algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    secret: str  # base64
    # Who holds this key, for update grants (e.g. a SPIFFE ID); default "tsig:<key name>".
    identity: str | None = None

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        try:
            if len(base64.b64decode(value, validate=True)) < 16:
                raise ValueError("TSIG secret shorter than 16 bytes")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"secret: {exc}") from None
        return value


class GrantConfig(Section):
    identity: str  # e.g. "spiffe://corp/ns/{ns}/sa/{sa}"
    names: list[str]  # e.g. ["{sa}.{ns}.svc.corp.internal"]
    types: list[str] = ["A", "AAAA", "SRV", "TXT"]

    @field_validator("types")
    @classmethod
    def _types(cls, values: list[str]) -> list[str]:
        for value in values:
            dns.rdatatype.from_text(value)
        return values


def _check_hostports(values: list[str]) -> list[str]:
    for value in values:
        parse_hostport(value, 53)
    return values


class SigningConfig(Section):
    enabled: bool = True
    algorithm: Literal["ecdsap256sha256", "ed25519"] = "ecdsap256sha256"
    # A change of algorithm rolls the keys by double signature (RFC 6781 §4.1.4); false: the change is refused.
    algorithm_rollover: bool = False
    cds_digest: Literal["sha256", "sha384"] = "sha256"  # digest of the published CDS records
    # Which keys get CDS/CDNSKEY records (Knot's cds-cdnskey-publish): none, rollover (a KSK in submission),
    # always (that one, else the active KSK), double-ds (both), delete-dnssec (RFC 8078 delete records).
    cds_publish: Literal["none", "rollover", "always", "double-ds", "delete-dnssec"] = "rollover"
    # The parent zone's servers ("address[:port]"), asked for our DS while a KSK is in submission: when all serve
    # it the roll goes on by itself (Knot's submission parent / check-interval); empty: `ztdns keys ds-seen`.
    parent_servers: list[str] = []
    parent_check_interval: Annotated[int, Field(gt=0)] = 3600
    # The parent's primary ("address[:port]"), sent the new DS by a dynamic update (Knot's ds-push), signed with
    # the TSIG key ds_push_key (a name in tsig_keys) when set.
    ds_push: str | None = None
    ds_push_key: str | None = None
    denial: Literal["nsec3", "compact"] = "nsec3"
    csk: bool = False
    dnskey_ttl: Annotated[int, Field(ge=0)] = 3600
    propagation_delay: Annotated[int, Field(ge=0)] = 300
    parent_propagation_delay: Annotated[int, Field(ge=0)] = 3600
    parent_ds_ttl: Annotated[int, Field(ge=0)] = DAY
    zsk_lifetime: Annotated[int, Field(ge=0)] = 90 * DAY
    ksk_lifetime: Annotated[int, Field(ge=0)] = 0
    # Seconds after a key left the zone before it is destroyed (file deleted, token objects destroyed); none: kept.
    purge_delay: Annotated[int, Field(ge=0)] | None = None
    signature_lifetime: Annotated[int, Field(gt=0)] = 14 * DAY
    signature_jitter: Annotated[int, Field(ge=0)] = DAY
    signature_refresh: Annotated[int, Field(gt=0)] = 5 * DAY
    # The KSK is held by an offline signer (Knot's offline-ksk): no KSK on the server; the DNSKEY/CDS/CDNSKEY
    # RRsets and their signatures come from an imported SKR (`ztdns keys generate-ksr` / `import-skr`).
    offline_ksk: bool = False
    # Offline KSK: warn (log, and the ztdns_authority_skr_remaining_seconds gauge) this long before the
    # imported SKR's last signatures expire.
    skr_warning: Annotated[int, Field(ge=0)] = 14 * DAY

    @field_validator("parent_servers", "ds_push")
    @classmethod
    def _addresses(cls, value: list[str] | str | None) -> list[str] | str | None:
        _check_hostports([value] if isinstance(value, str) else value or [])
        return value

    @model_validator(mode="after")
    def _refresh(self) -> SigningConfig:
        if self.signature_refresh >= self.signature_lifetime:
            raise ValueError("signature_refresh must be shorter than signature_lifetime")
        if self.offline_ksk:
            online = {
                "csk": self.csk,
                "algorithm_rollover": self.algorithm_rollover,
                "ksk_lifetime": self.ksk_lifetime,
                "parent_servers": self.parent_servers,
                "ds_push": self.ds_push,
            }
            for key, value in online.items():
                if value:
                    raise ValueError(f"offline_ksk: {key} needs the KSK on the server (the offline signer rolls it)")
        return self


class AuthZoneConfig(Section):
    name: str
    file: str | None = None  # RFC 1035 zone file, relative to the config file
    records: list[str] = []  # extra records in zone-file syntax, relative to the zone name
    signing: SigningConfig = SigningConfig()
    transfer_keys: list[str] = []
    transfer_networks: list[str] = []
    notify: list[str] = []  # secondaries, "address[:port]"
    notify_key: str | None = None  # a name in tsig_keys: NOTIFY messages are signed with it
    grants: list[GrantConfig] = []
    # No TTL above this from any input (Knot's zone-max-ttl); when set, also the TTL rollovers wait for.
    max_zone_ttl: Annotated[int, Field(gt=0, le=0x7FFFFFFF)] | None = None
    # What one identity may register (dynamic records): records and bytes of record data; 0 = no limit.
    quota_records: Annotated[int, Field(ge=0)] = 100
    quota_bytes: Annotated[int, Field(ge=0)] = 65536
    # How the SOA serial advances on every new version (Knot's serial-policy).
    serial_policy: Literal["increment", "unixtime", "dateserial"] = "increment"

    @field_validator("transfer_networks")
    @classmethod
    def _nets(cls, values: list[str]) -> list[str]:
        return check_networks(values)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return dns.name.from_text(value).to_text()

    @model_validator(mode="after")
    def _compact_not_transferred(self) -> AuthZoneConfig:
        if (
            self.signing.enabled
            and self.signing.denial == "compact"
            and (self.notify or self.transfer_keys or self.transfer_networks)
        ):
            raise ValueError(
                f"zone {self.name}: compact denial answers are made per query and cannot be transferred "
                '(secondaries could not prove non-existence); use denial = "nsec3" for zones with secondaries'
            )
        return self


class RrlConfig(Section):
    enabled: bool = True
    rate: Annotated[float, Field(gt=0)] = 20.0
    burst: Annotated[float, Field(ge=1)] = 40.0
    slip: Annotated[int, Field(ge=0, le=10)] = 2
    ipv4_prefix: Annotated[int, Field(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, Field(ge=16, le=128)] = 56
    exempt: list[str] = []  # networks never rate-limited (your resolvers, monitoring)

    @field_validator("exempt")
    @classmethod
    def _exempt(cls, values: list[str]) -> list[str]:
        return check_networks(values)


class Pkcs11Config(Section):
    """The PKCS#11 token holding zone keys (``key_store = "pkcs11"``)."""

    module: str = "/usr/lib/softhsm/libsofthsm2.so"  # the token's PKCS#11 library
    token_label: str
    pin_file: str | None = None  # a file holding the user PIN, relative to the config file
    pin_env: str | None = None  # or an environment variable holding it

    @model_validator(mode="after")
    def _one_pin(self) -> Pkcs11Config:
        if (self.pin_file is None) == (self.pin_env is None):
            raise ValueError("set exactly one of pin_file and pin_env")
        return self


class ApiConfig(Section):
    """The HTTPS registration API (docs/authority.md). Clients must present a certificate issued by ``ca``."""

    address: str = "127.0.0.1:8443"
    cert: str  # server certificate and key, relative to the config file
    key: str
    ca: str  # CA bundle client certificates must chain to
    crl: list[str] = []
    tls_min_version: Literal["1.2", "1.3"] = "1.3"


class AuthorityConfig(Section):
    # Own UDP+TCP listeners ("127.0.0.1:5300") for secondaries, UPDATE and validating resolvers elsewhere.
    listen: list[str] = []
    # The protective resolver (`ztdns serve` listeners) answers names in these zones from them, after policy.
    resolver_view: bool = True
    state_dir: str | None = None  # default: <server.state_dir>/authority
    tsig_keys: dict[str, TsigKeyConfig] = {}
    zones: list[AuthZoneConfig] = []
    rrl: RrlConfig = RrlConfig()
    # Where zone private keys live: PEM files under state_dir/keys, or a PKCS#11 token ([authority.pkcs11]).
    key_store: Literal["file", "pkcs11"] = "file"
    pkcs11: Pkcs11Config | None = None
    api: ApiConfig | None = None  # the HTTPS registration API, authenticated by client certificates
    nsid: str = ""  # RFC 5001 name server identifier sent to clients asking for it; empty: none

    @field_validator("listen")
    @classmethod
    def _listen(cls, values: list[str]) -> list[str]:
        return _check_hostports(values)

    @model_validator(mode="after")
    def _keys_exist(self) -> AuthorityConfig:
        if self.key_store == "pkcs11" and self.pkcs11 is None:
            raise ValueError('key_store = "pkcs11" needs an [authority.pkcs11] section')
        for zone in self.zones:
            named = [zone.notify_key, zone.signing.ds_push_key]
            for key in [*zone.transfer_keys, *(k for k in named if k)]:
                if key not in self.tsig_keys:
                    raise ValueError(f"zone {zone.name}: unknown TSIG key {key!r}")
        return self
