"""The spending policy document: versioned, canonically serialised, identified by its digest.

This module is pure data and validation: no HTTP, chain or device imports. The policy engine
(cumulative limits, sessions, approvals) builds on these types.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from eth_utils.address import is_checksum_address, is_hex_address, to_checksum_address
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .money import LEDGER_AMOUNT_MAX
from .networks import caip2

POLICY_SCHEMA_ID = "x402-agent/policy/1"

AtomicAmount = Annotated[int, Field(ge=0, le=LEDGER_AMOUNT_MAX, strict=True)]


def _checksummed(value: str) -> str:
    if not is_hex_address(value):
        raise ValueError(f"not an EVM address: {value!r}")
    if value != value.lower() and value[2:] != value[2:].upper() and not is_checksum_address(value):
        raise ValueError(f"bad EIP-55 checksum: {value!r}")
    return str(to_checksum_address(value))


class AssetRule(BaseModel):
    """An asset the agent may pay with, and what a single request may cost in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str = Field(description="CAIP-2 network id, e.g. eip155:8453")
    address: str = Field(description="Token contract address")
    symbol: str = Field(min_length=1, max_length=16)
    decimals: int = Field(ge=0, le=36, strict=True)
    eip712_name: str = Field(min_length=1, description="Token EIP-712 domain name")
    eip712_version: str = Field(min_length=1, description="Token EIP-712 domain version")
    per_request_max: AtomicAmount = Field(description="Largest single payment, atomic units")

    @field_validator("network")
    @classmethod
    def _network_is_caip2(cls, value: str) -> str:
        if caip2(value) != value:
            raise ValueError(f"network must be a CAIP-2 EVM id like eip155:8453, got {value!r}")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _checksummed(value)


class Policy(BaseModel):
    """A complete spending policy. Any change to it changes its digest."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["x402-agent/policy/1"] = Field(default="x402-agent/policy/1", alias="schema")
    version: int = Field(ge=1, strict=True, description="Monotonic; higher replaces lower")
    assets: tuple[AssetRule, ...] = Field(min_length=1)
    allowed_hosts: tuple[str, ...] | None = Field(
        default=None, description="Hosts that may be paid; null means any host not denied"
    )
    denied_hosts: tuple[str, ...] = ()
    max_authorization_seconds: int = Field(
        default=300, ge=10, le=86_400, strict=True,
        description="Upper bound on an authorization's validity window",
    )

    @model_validator(mode="after")
    def _unique_assets(self) -> Policy:
        keys = [(a.network, a.address) for a in self.assets]
        if len(set(keys)) != len(keys):
            raise ValueError("an asset is listed twice")
        return self

    def find_asset(self, network: str, address: str) -> AssetRule | None:
        for rule in self.assets:
            if rule.network == network and rule.address == address:
                return rule
        return None

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        if host in (h.lower() for h in self.denied_hosts):
            return False
        return self.allowed_hosts is None or host in (h.lower() for h in self.allowed_hosts)

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, aliases: the bytes the digest (and signatures) bind."""
        data = self.model_dump(mode="json", by_alias=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file; every problem becomes one clear ConfigError."""
    try:
        raw = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}", reason="policy_missing") from exc
    try:
        return Policy.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid policy {path}: {problems}", reason="policy_invalid") from exc
