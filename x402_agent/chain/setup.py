"""Create a home's smart account and manage its session key (owner actions go to the device).

Creating an account needs no gas and no device signature: its address commits to the owner (the
enrolled device key), the session key and the bounds, so it can be funded before it exists and
is deployed by its first top-up (or by a facilitator, through ERC-6492).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ..home import CONFIG_FILE, AccountSetup, AgentHome, HomeConfig, SmartAccountConfig
from ..signer import write_keystore
from .account import SignLine, run_owner_action
from .factory import create_account, predicted_addresses
from .wallet import HotWallet, account_config

SESSION_KEYSTORE = "session.keystore.json"


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


def _write_session_key(root: Path, password: str, iterations: int | None) -> LocalAccount:
    key: LocalAccount = Account.from_key(secrets.token_bytes(32))
    write_keystore(root / SESSION_KEYSTORE, "0x" + bytes(key.key).hex(), password, iterations=iterations)
    return key


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
    """Give ``home`` a smart account paying ``bounds.token`` on ``network``; rewrite its config."""
    session = _write_session_key(home.root, password, kdf_iterations)
    now = int(w3.eth.get_block("latest")["timestamp"])
    setup = AccountSetup(
        owner=owner,
        session_key=session.address,
        session_expiry=now + session_seconds,
        token=bounds.token,
        max_value=bounds.max_value,
        max_window=bounds.max_window,
        allowance=bounds.allowance,
        period=bounds.period,
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


def ensure_deployed(wallet: HotWallet, relayer: LocalAccount) -> None:
    """Owner actions need the contracts: deploy a counterfactual account (and vault) first."""
    if not wallet.is_deployed():
        create_account(wallet.w3, wallet.config, relayer)


def rotate_session_key(
    home: AgentHome,
    wallet: HotWallet,
    sign_line: SignLine,
    relayer: LocalAccount,
    *,
    session_seconds: int,
    password: str,
    kdf_iterations: int | None = None,
) -> str:
    """Add a new session key and revoke the current one (two owner actions signed on the
    device); the new key replaces the old one in the home. Returns the new key's address."""
    ensure_deployed(wallet, relayer)
    old = wallet.session_address
    previous = (home.root / SESSION_KEYSTORE).read_bytes()
    new = _write_session_key(home.root, password, kdf_iterations)
    try:
        expiry = int(wallet.w3.eth.get_block("latest")["timestamp"]) + session_seconds
        run_owner_action(
            wallet.w3, wallet.account, "setSessionKey", [new.address, expiry], sign_line, relayer
        )
    except BaseException:
        (home.root / SESSION_KEYSTORE).write_bytes(previous)  # the old key still works
        raise
    run_owner_action(wallet.w3, wallet.account, "revokeSessionKey", [old], sign_line, relayer)
    return str(new.address)


def revoke_session_key(wallet: HotWallet, sign_line: SignLine, relayer: LocalAccount) -> None:
    """Revoke the home's session key on chain: it can sign nothing the account accepts."""
    run_owner_action(
        wallet.w3, wallet.account, "revokeSessionKey", [wallet.session_address], sign_line, relayer
    )
