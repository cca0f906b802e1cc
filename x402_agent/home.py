"""The agent home: one directory holding configuration, the encrypted key, policy and ledger.

Layout (all paths inside the home unless absolute):
    config.json          which signer, ledger and RPC endpoints to use
    payer.keystore.json  eth-account v3 keystore (scrypt), mode 0600
    device.json, policy*.json   the enrolled device and the policy it approved (policy_store.py)
    ledger.sqlite3       payments and receipts
    content/ab/<sha256>  paid bodies, named by their hash (content_store.py)
The keystore password comes from $X402_AGENT_KEY_PASSWORD, else from the configured
password file (mode 0600). Neither is ever logged or echoed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .paths import HOME_ENV, default_home
from .reasons import Reason
from .secret_url import BUNDLER_KEY_ENV, clear_secret

PASSWORD_ENV = "X402_AGENT_KEY_PASSWORD"
CONFIG_FILE = "config.json"


class SignerConfig(BaseModel):
    """A plain key pays (an EOA)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["keystore"] = "keystore"
    keystore: str = "payer.keystore.json"
    password_file: str | None = None


class AccountSetup(BaseModel):
    """What the smart account was (or will be) created with: its address commits to it."""

    model_config = ConfigDict(extra="forbid")
    owner: str
    session_key: str
    session_expiry: int
    token: str
    max_value: int
    max_window: int
    allowance: int
    period: int
    salt: str = "0x" + "00" * 32
    payees: list[str] = Field(
        default_factory=list, description="the only payees the account pays (empty: any payee)"
    )


class SmartAccountConfig(BaseModel):
    """An ERC-4337 smart account pays; the keystore holds its session key."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["smart_account"] = "smart_account"
    keystore: str = "session.keystore.json"
    password_file: str | None = None
    network: str = Field(description="CAIP-2 network of the account")
    account: str
    vault: str
    setup: AccountSetup
    bundler_url: str | None = Field(
        None,
        description="ERC-4337 v0.7 bundler JSON-RPC URL; its API key written as ${VARIABLE}, "
        "read from the environment when used (never stored here in clear)",
    )
    relayer_keystore: str | None = Field(
        None, description="a key with ETH that sends handleOps when no bundler answers"
    )
    top_up_to: int = Field(0, description="refill the hot balance up to this (atomic units)")

    @field_validator("bundler_url")
    @classmethod
    def _no_key_in_clear(cls, url: str | None) -> str | None:
        where = None if url is None else clear_secret(url)
        if where is not None:  # the message never quotes the URL: it holds the key
            raise ValueError(
                f"bundler_url seems to hold an API key in clear ({where}): write it as "
                f"${{{BUNDLER_KEY_ENV}}} and export {BUNDLER_KEY_ENV}"
            )
        return url


class DeviceLocation(BaseModel):
    """Where to reach a device that HWI's scan does not find: HWI looks for a Trezor emulator
    only at ``udp:127.0.0.1:21324``, so a simulator on a port of its own (a devnet's, a test
    session's) is recorded here. A real device needs no entry: the scan finds it."""

    model_config = ConfigDict(extra="forbid")
    type: str = "trezor"
    path: str = Field(description="HWI device path, e.g. udp:127.0.0.1:40123")


class HomeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_id: Literal["x402-agent/config/1"] = Field("x402-agent/config/1", alias="schema")
    signer: SignerConfig | SmartAccountConfig = Field(SignerConfig(), discriminator="kind")
    ledger: str = Field(
        "ledger.sqlite3", description="SQLite file in the home, or a postgresql:// URL for fleets"
    )
    verify_on_chain: bool = Field(True, description="check each settlement's tx receipt")
    chain_id: int | None = Field(None, description="the chain an accepted policy must name")
    rpc_urls: dict[str, str] = Field(default_factory=dict, description="CAIP-2 network -> JSON-RPC URL")
    device: DeviceLocation | None = Field(
        None, description="a device path tried before HWI's scan (a simulator on its own port)"
    )
    facilitator_url: str | None = Field(
        None, description="the facilitator whose Bazaar listing `discover` reads (e.g. https://x402.example)"
    )


@dataclass(frozen=True)
class AgentHome:
    root: Path
    config: HomeConfig

    def path(self, name: str) -> Path:
        return (self.root / name).resolve()

    def payer_address(self) -> str:
        """The payer's address: the smart account, or the key's (read without decrypting it)."""
        if isinstance(self.config.signer, SmartAccountConfig):
            return self.config.signer.account.lower()
        try:
            keystore = json.loads(self.path(self.config.signer.keystore).read_text())
            return "0x" + str(keystore["address"]).lower().removeprefix("0x")
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError("cannot read the payer keystore", reason=Reason.KEYSTORE_UNREADABLE) from exc

    def keystore_password(self) -> str:
        password = os.environ.get(PASSWORD_ENV)
        if password is not None:
            return password
        if self.config.signer.password_file is None:
            raise ConfigError(
                f"set {PASSWORD_ENV} to unlock the payer key", reason=Reason.KEYSTORE_PASSWORD_MISSING
            )
        try:
            return self.path(self.config.signer.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                "cannot read the keystore password file", reason=Reason.KEYSTORE_PASSWORD_MISSING
            ) from exc


def open_home(root: Path | None = None) -> AgentHome:
    root = (root or default_home()).expanduser()
    config_path = root / CONFIG_FILE
    try:
        raw = config_path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"no agent home at {root} (missing {CONFIG_FILE}); set {HOME_ENV} "
            "or run `x402-agent devnet` for a ready one",
            reason=Reason.HOME_MISSING,
        ) from exc
    try:
        config = HomeConfig.model_validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid {config_path}: {exc.error_count()} problem(s): {exc.errors()[0]['msg']}",
            reason=Reason.CONFIG_INVALID,
        ) from exc
    return AgentHome(root, config)


def provision_home(
    root: Path,
    *,
    private_key: str | None,
    rpc_urls: dict[str, str],
    password: str,
    store_password: bool,
    chain_id: int | None = None,
    kdf_iterations: int | None = None,
    device: DeviceLocation | None = None,
    facilitator_url: str | None = None,
) -> AgentHome:
    """Create a home with an encrypted payer key (``private_key`` None: no key yet, e.g. for a
    smart account). Returns the opened home; a device must then be enrolled and a policy
    approved on it before the agent pays anything.

    ``store_password`` writes the password to a 0600 file beside the keystore, for unattended
    local worlds only; real homes take it from the environment.
    """
    from .signer import write_keystore

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    signer = SignerConfig()
    if private_key is not None:
        write_keystore(root / signer.keystore, private_key, password, iterations=kdf_iterations)
    if store_password:
        signer.password_file = "payer.password"
        secret = root / signer.password_file
        secret.write_text(password)
        secret.chmod(0o600)
    config = HomeConfig.model_validate(
        {
            "signer": signer,
            "rpc_urls": rpc_urls,
            "chain_id": chain_id,
            "device": device,
            "facilitator_url": facilitator_url,
        }
    )
    (root / CONFIG_FILE).write_text(config.model_dump_json(by_alias=True, indent=2) + "\n")
    return AgentHome(root, config)


def record_device(home: AgentHome, device: DeviceLocation) -> AgentHome:
    """Remember where the home's device answers (``device enroll --device-path``)."""
    config = home.config.model_copy(update={"device": device})
    (home.root / CONFIG_FILE).write_text(config.model_dump_json(by_alias=True, indent=2) + "\n")
    return AgentHome(home.root, config)


def init_home(root: Path, *, network: str, rpc_url: str, ledger: str | None = None) -> AgentHome:
    """A new, empty home for ``network``: configuration only. A payer comes next (a smart
    account through ``x402-agent wallet create``, or a key), then the device and its policy."""
    if (root / CONFIG_FILE).exists():
        raise ConfigError(f"{root} is already an agent home", reason=Reason.HOME_EXISTS)
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isdigit():
        raise ConfigError(
            f"{network!r} is not an EVM network id like eip155:8453", reason=Reason.CONFIG_INVALID
        )
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    fields: dict[str, object] = {"rpc_urls": {network: rpc_url}, "chain_id": int(reference)}
    if ledger is not None:
        fields["ledger"] = ledger
    config = HomeConfig.model_validate(fields)
    (root / CONFIG_FILE).write_text(config.model_dump_json(by_alias=True, indent=2) + "\n")
    return AgentHome(root, config)
