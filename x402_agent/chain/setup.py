"""Create a home's smart account (its session keys: ``session_keys``).

Creating an account needs no gas and no device signature: its address commits to the owner (the
enrolled device key), the session key and the bounds, so it can be funded before it exists and
is deployed by its first top-up (or by a facilitator, through ERC-6492).
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3

from ..home import CONFIG_FILE, AccountSetup, AgentHome, HomeConfig, SmartAccountConfig
from ..secret_url import check_no_clear_secret
from .factory import create_account, predicted_addresses
from .factory_deploy import require_factory
from .session_keys import SESSION_KEYSTORE, check_session_expiry, write_session_key
from .wallet import account_config


def connect(rpc_url: str) -> Web3:
    return Web3(Web3.HTTPProvider(rpc_url))


@dataclass(frozen=True)
class WalletBounds:
    """What the account enforces on chain, in the token's atomic units and seconds."""

    token: str
    max_value: int
    max_window: int
    allowance: int
    period: int = 86_400
    # Empty: the account pays any payee (the agent's policy still restricts); else only these.
    payees: tuple[str, ...] = ()


def create_wallet(
    home: AgentHome,
    w3: Web3,
    *,
    network: str,
    owner: str,
    bounds: WalletBounds,
    session_seconds: int,
    password: str,
    bundler_url: str | None = None,
    relayer_keystore: str | None = None,
    top_up_to: int = 0,
    deploy_with: LocalAccount | None = None,
    kdf_iterations: int | None = None,
) -> AgentHome:
    """Give ``home`` a smart account paying ``bounds.token`` on ``network``; rewrite its config.
    Refused (``FactoryError``, nothing written) on a chain without the factory, or with another
    contract at its address: the account's address would mean nothing there."""
    if bundler_url is not None:  # before anything is written
        check_no_clear_secret(bundler_url, "bundler URL")
    require_factory(w3)
    now = int(w3.eth.get_block("latest")["timestamp"])
    expiry = check_session_expiry(now + session_seconds)
    session = write_session_key(home.root / SESSION_KEYSTORE, password, kdf_iterations)
    setup = AccountSetup(
        owner=owner,
        session_key=session.address,
        session_expiry=expiry,
        token=bounds.token,
        max_value=bounds.max_value,
        max_window=bounds.max_window,
        allowance=bounds.allowance,
        period=bounds.period,
        payees=[to_checksum_address(payee) for payee in bounds.payees],
    )
    config = account_config(setup)
    account, vault = predicted_addresses(w3, config)
    if deploy_with is not None:
        create_account(w3, config, deploy_with)
    signer = SmartAccountConfig(
        password_file=home.config.signer.password_file,
        network=network,
        account=account,
        vault=vault,
        setup=setup,
        bundler_url=bundler_url,
        relayer_keystore=relayer_keystore,
        top_up_to=top_up_to,
    )
    updated = home.config.model_copy(update={"signer": signer})
    (home.root / CONFIG_FILE).write_text(updated.model_dump_json(by_alias=True, indent=2) + "\n")
    return AgentHome(home.root, HomeConfig.model_validate_json((home.root / CONFIG_FILE).read_text()))
