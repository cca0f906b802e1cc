"""The spending policy document: versioned, canonically serialised, identified by its digest.

Pure data and validation: no HTTP, chain or device imports. Amounts are integers in the
asset's atomic units. A policy that contradicts itself (a cap above its own daily limit, an
approval threshold that can never trigger, a session allowance for an asset it does not list)
is rejected when it is loaded, with the path of the offending field.

The day of a daily limit is stated in the policy: ``rolling_24h`` (the 24 hours before the
payment) or ``calendar`` (midnight to midnight in ``day.timezone``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from eth_utils.address import is_checksum_address, is_hex_address, to_checksum_address
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .addresses import parse_allow_entry
from .errors import ConfigError
from .money import LEDGER_AMOUNT_MAX
from .networks import caip2
from .reasons import Reason

_MACHINE_DEPENDENT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@cache
def _zone_names() -> frozenset[str]:
    """The IANA zone names, read once: ``available_timezones`` walks the tz database on every
    call (~25 ms), and every policy document read (an approval carries one too) checks a zone."""
    return frozenset(available_timezones())


DEFAULT_SESSION = "default"
# Fields added after policies were first signed: left out of the canonical form while unset, so
# every policy that does not use them keeps the digest its device approved.
_ADDED_LATER = ("private_network", "max_paid_body_bytes", "reaccess")
_ASSET_ADDED_LATER = ("schemes", "max_channel_deposit")
# What an asset may be paid with when its rule names no schemes (all that releases before the
# field paid).
DEFAULT_SCHEMES = ("exact",)

AtomicAmount = Annotated[int, Field(ge=0, le=LEDGER_AMOUNT_MAX, strict=True)]


def _checksummed(value: str) -> str:
    if not is_hex_address(value):
        raise ValueError(f"not an EVM address: {value!r}")
    if value != value.lower() and value[2:] != value[2:].upper() and not is_checksum_address(value):
        raise ValueError(f"bad EIP-55 checksum: {value!r}")
    return str(to_checksum_address(value))


def _network(value: str) -> str:
    if caip2(value) != value:
        raise ValueError(f"network must be a CAIP-2 EVM id like eip155:8453, got {value!r}")
    return value


def _host_pattern(value: str) -> str:
    # host_matches() ignores a host's trailing dot, so a pattern's must go too (else never matches).
    host = value.lower().removesuffix(".")
    bare = host.removeprefix("*.")
    if not bare or any(c in bare for c in "/:@ *") or "" in bare.split("."):
        raise ValueError(f"not a host name or *.domain pattern: {value!r}")
    return host


def _url_prefix(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"URL prefix must start with http:// or https://: {value!r}")
    return value


def _private_allow(value: str) -> str:
    return parse_allow_entry(value).text


Address = Annotated[str, AfterValidator(_checksummed)]
Network = Annotated[str, AfterValidator(_network)]
HostPattern = Annotated[str, AfterValidator(_host_pattern)]
UrlPrefix = Annotated[str, AfterValidator(_url_prefix)]
PrivateAllow = Annotated[str, AfterValidator(_private_allow)]


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """Exact host, or ``*.example.com`` for any subdomain of example.com (not itself)."""
    host = host.lower().rstrip(".")
    return any(host.endswith(p[1:]) if p.startswith("*.") else host == p for p in patterns)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AssetRule(_Model):
    """An asset the agent may pay with (the asset allowlist) and its limits."""

    network: Network = Field(description="CAIP-2 network id, e.g. eip155:8453")
    address: Address = Field(description="Token contract address")
    symbol: str = Field(min_length=1, max_length=16, pattern=r"^[A-Za-z][A-Za-z0-9.]*$")
    decimals: int = Field(ge=0, le=36, strict=True)
    eip712_name: str = Field(min_length=1, description="Token EIP-712 domain name")
    eip712_version: str = Field(min_length=1, description="Token EIP-712 domain version")
    per_request_max: AtomicAmount = Field(description="Largest single payment")
    daily_max: AtomicAmount | None = Field(default=None, description="Cumulative per day")
    approval_above: AtomicAmount | None = Field(
        default=None, description="Payments above this need a human yes, else are refused"
    )
    schemes: tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")], ...] | None = Field(
        default=None,
        min_length=1,
        description=f"x402 schemes this asset may be paid with (unset: {list(DEFAULT_SCHEMES)})",
    )

    max_channel_deposit: AtomicAmount | None = Field(
        default=None,
        description="Largest deposit into one batch-settlement channel (unset: channels refused)",
    )

    @property
    def allowed_schemes(self) -> tuple[str, ...]:
        return self.schemes or DEFAULT_SCHEMES

    @property
    def asset_id(self) -> str:
        return f"{self.network}/{self.address}"

    @model_validator(mode="after")
    def _consistent(self) -> AssetRule:
        if self.daily_max is not None and self.per_request_max > self.daily_max:
            raise ValueError(
                f"{self.symbol}: per_request_max {self.per_request_max} exceeds daily_max {self.daily_max}"
            )
        if self.approval_above is not None and self.approval_above >= self.per_request_max:
            raise ValueError(
                f"{self.symbol}: approval_above {self.approval_above} can never "
                f"trigger below per_request_max {self.per_request_max}"
            )
        return self


class AllowDeny(_Model):
    """``allow`` null means anything not denied; deny always wins."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _disjoint(self) -> AllowDeny:
        both = set(self.allow or ()) & set(self.deny)
        if both:
            raise ValueError(f"listed as both allowed and denied: {sorted(both)}")
        return self


class HostLists(AllowDeny):
    allow: tuple[HostPattern, ...] | None = None
    deny: tuple[HostPattern, ...] = ()


class PayeeLists(AllowDeny):
    allow: tuple[Address, ...] | None = None
    deny: tuple[Address, ...] = ()


class NetworkLists(AllowDeny):
    allow: tuple[Network, ...] | None = None
    deny: tuple[Network, ...] = ()


class Scope(_Model):
    """What a session may pay for; null fields do not narrow."""

    hosts: tuple[HostPattern, ...] | None = None
    url_prefixes: tuple[UrlPrefix, ...] | None = None
    payees: tuple[Address, ...] | None = None
    networks: tuple[Network, ...] | None = None
    assets: tuple[str, ...] | None = Field(default=None, description="symbols or asset ids")


class PrivateNetwork(_Model):
    """Non-public addresses the agent may fetch from; every other one is refused (see netguard)."""

    allow: tuple[PrivateAllow, ...] = Field(
        default=(),
        description="host names (*.domain for subdomains), addresses or CIDR ranges, "
        "each optionally with :port, e.g. 127.0.0.1:4021, 10.0.0.0/8",
    )


class SessionRule(_Model):
    """An allowance for one session (an MCP connection, a toolkit instance, a CLI session)."""

    lifetime_seconds: int = Field(gt=0, le=30 * 86_400, strict=True)
    allowance: dict[str, AtomicAmount] = Field(
        min_length=1, description="asset symbol or id -> atomic amount per session"
    )
    scope: Scope = Scope()


class ReAccess(_Model):
    """Re-access instead of repayment: where a payment bought access (a server offering
    sign-in-with-x), sign in with the paying key instead of paying again.

    On by default: a sign-in moves no money, signs nothing a token or the account would take
    as a payment, names only the fetched URL's own host and the paid offer's chain, and tells
    the server only the address it was paid from."""

    sign_in: bool = Field(default=True, strict=True, description="Sign in where a payment bought access")
    max_entitlement_seconds: int = Field(
        default=86_400,
        ge=60,
        le=30 * 86_400,
        strict=True,
        description="How long after a payment the agent signs in instead of paying again, at most",
    )


class DayRule(_Model):
    kind: Literal["rolling_24h", "calendar"] = "rolling_24h"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        # Only IANA names that mean the same on every machine (not "localtime" and kin).
        if value not in _zone_names() or value in _MACHINE_DEPENDENT_ZONES:
            raise ValueError(f"unknown or machine-dependent time zone {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    def start(self, now: float) -> float:
        """Start of the day window containing ``now`` (a Unix time)."""
        if self.kind == "rolling_24h":
            return now - 86_400
        local = datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        # timestamp() applies midnight's own UTC offset, which on DST days differs from now's.
        # fold=0: in a repeated hour that contains midnight (America/Havana), ``now`` may carry
        # fold=1, which would start the day at the second midnight and drop the first hour.
        return local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0).timestamp()


class CircuitBreaker(_Model):
    max_consecutive_failures: int = Field(ge=1, le=1000, strict=True)


class Policy(_Model):
    """A complete spending policy. Any change to it changes its digest."""

    schema_id: Literal["x402-agent/policy/1"] = Field(default="x402-agent/policy/1", alias="schema")
    version: int = Field(ge=1, strict=True, description="Monotonic; higher replaces lower")
    account: Address | None = Field(default=None, description="The paying account it governs")
    chain_id: int | None = Field(default=None, ge=1, strict=True)
    day: DayRule = DayRule()
    assets: tuple[AssetRule, ...] = Field(min_length=1)
    hosts: HostLists = HostLists()
    payees: PayeeLists = PayeeLists()
    networks: NetworkLists = NetworkLists()
    max_payments_per_minute: int | None = Field(default=None, ge=1, strict=True)
    circuit_breaker: CircuitBreaker | None = None
    sessions: dict[str, SessionRule] = Field(
        default_factory=dict, description=f"by profile name; {DEFAULT_SESSION!r} when unnamed"
    )
    max_authorization_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        strict=True,
        description="Upper bound on an authorization's validity window",
    )
    private_network: PrivateNetwork | None = Field(
        default=None, description="Opt-ins to loopback, private, link-local... addresses"
    )
    max_paid_body_bytes: int | None = Field(
        default=None,
        ge=1,
        le=1 << 40,
        strict=True,
        description="Largest paid body kept in the agent home (default 256 MiB)",
    )
    reaccess: ReAccess | None = Field(
        default=None, description="Sign-in-with-x re-access (unset: on, entitlements up to 24 h)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        ids = [a.asset_id for a in self.assets]
        for i, asset_id in enumerate(ids):
            if asset_id in ids[:i]:
                raise ValueError(f"assets.{i}: asset {asset_id} is listed twice")
        for name, session in self.sessions.items():
            seen: dict[str, str] = {}
            for key, amount in session.allowance.items():
                where = f"sessions.{name}.allowance.{key}"
                rule = self.asset(key)
                if rule is None:
                    raise ValueError(
                        f"{where}: allowance for {key!r}, which is not "
                        "an asset of this policy (or its symbol is ambiguous)"
                    )
                # Two keys for one asset: which one applied would depend on key order, which the
                # canonical JSON (and so the digest) does not keep.
                if rule.asset_id in seen:
                    raise ValueError(
                        f"{where}: {rule.asset_id} already has an allowance under {seen[rule.asset_id]!r}"
                    )
                seen[rule.asset_id] = key
                if (
                    rule.daily_max is not None
                    and amount > rule.daily_max
                    and (session.lifetime_seconds <= 86_400)
                ):
                    raise ValueError(
                        f"{where}: allowance {amount} exceeds its daily_max "
                        f"{rule.daily_max} (session lifetime <= 24 h)"
                    )
            for i, key in enumerate(session.scope.assets or ()):
                if self.asset(key) is None:
                    raise ValueError(f"sessions.{name}.scope.assets.{i}: unknown asset {key!r}")
        for i, rule in enumerate(self.assets):
            if rule.network in self.networks.deny or (
                self.networks.allow is not None and rule.network not in self.networks.allow
            ):
                raise ValueError(
                    f"assets.{i}.network: asset {rule.symbol} is on network "
                    f"{rule.network}, which the network lists refuse"
                )
        return self

    def asset(self, key: str) -> AssetRule | None:
        """An asset by id (``network/address``) or by symbol if the symbol is unique."""
        by_id = [a for a in self.assets if a.asset_id.lower() == key.lower()]
        if by_id:
            return by_id[0]
        by_symbol = [a for a in self.assets if a.symbol.upper() == key.upper()]
        return by_symbol[0] if len(by_symbol) == 1 else None

    def find_asset(self, network: str, address: str) -> AssetRule | None:
        for rule in self.assets:
            if rule.network == network and rule.address.lower() == address.lower():
                return rule
        return None

    @property
    def reaccess_rule(self) -> ReAccess:
        return self.reaccess if self.reaccess is not None else ReAccess()

    @property
    def private_allow(self) -> tuple[str, ...]:
        return self.private_network.allow if self.private_network is not None else ()

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, aliases: the bytes the digest (and signatures) bind."""
        data = self.model_dump(mode="json", by_alias=True)
        for name in _ADDED_LATER:
            if data.get(name) is None:
                del data[name]
        for asset in data["assets"]:
            for name in _ASSET_ADDED_LATER:
                if asset.get(name) is None:
                    del asset[name]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()


def parse_policy(raw: str | bytes, source: str = "policy") -> Policy:
    """Validate a policy document; every problem becomes one clear ConfigError."""
    try:
        return Policy.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid policy {source}: {problems}", reason=Reason.POLICY_INVALID) from exc


def load_policy(path: Path) -> Policy:
    try:
        raw = path.read_bytes()  # bytes: bad UTF-8 is a policy_invalid, not a UnicodeDecodeError
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}", reason=Reason.POLICY_MISSING) from exc
    return parse_policy(raw, str(path))


def json_schema() -> dict[str, object]:
    """The JSON schema of policy documents (exported to policies/policy.schema.json)."""
    return Policy.model_json_schema(by_alias=True)
