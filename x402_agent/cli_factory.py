"""`x402-agent wallet deploy-factory`: the account factory on a chain, once, from a funded key.

Works from an agent home (its network, RPC URL and relayer key) or without one (``--rpc-url``,
``--keystore`` and the password in the environment): deploying the factory is not tied to any
one home, and anyone may do it once per chain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ChainError, ConfigError
from .reasons import Reason

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from .home import AgentHome


def deploy_factory_command(args: argparse.Namespace) -> int:
    from .chain.factory_deploy import deploy_factory_once
    from .chain.setup import connect

    home = _home_if_any(args)
    network = args.network or _home_network(home)
    rpc_url = args.rpc_url or (home.config.rpc_urls.get(network) if home and network else None)
    if rpc_url is None:
        raise ConfigError(
            "name the chain: --rpc-url URL (or a --network the home has an RPC URL for)",
            reason=Reason.CONFIG_INVALID,
        )
    funder = _funder(args, home)
    w3 = connect(rpc_url)
    try:
        chain_id = int(w3.eth.chain_id)
    except (OSError, ValueError) as exc:  # requests' errors are OSErrors
        raise ChainError(f"cannot reach the chain at the RPC URL ({type(exc).__name__})") from exc
    if network is not None and network != f"eip155:{chain_id}":
        raise ConfigError(f"the RPC URL serves chain {chain_id}, not {network}", reason=Reason.CONFIG_INVALID)
    report = deploy_factory_once(w3, funder)
    if report.already_deployed:
        print(f"already deployed on chain {chain_id} at {report.factory}: nothing sent", file=sys.stderr)
    else:
        print(f"deployed on chain {chain_id} at {report.factory}", file=sys.stderr)
    print(
        json.dumps(
            {
                "factory": report.factory,
                "chain_id": chain_id,
                "already_deployed": report.already_deployed,
                "owner_action_text": report.owner_action_text,
                "entry_point": report.entry_point,
                "deployer": funder.address,
                "transactions": report.transactions,
                "gas_used": report.gas_used,
            },
            indent=2,
        )
    )
    return 0


def _home_if_any(args: argparse.Namespace) -> AgentHome | None:
    """The agent home, or None when there is none and the command names all it needs."""
    from .home import open_home

    try:
        return open_home(args.home)
    except ConfigError as exc:
        if exc.reason is Reason.HOME_MISSING and args.rpc_url and args.keystore:
            return None
        raise


def _home_network(home: AgentHome | None) -> str | None:
    if home is None:
        return None
    signer = home.config.signer
    return signer.network if signer.kind == "smart_account" else f"eip155:{home.config.chain_id}"


def _funder(args: argparse.Namespace, home: AgentHome | None) -> LocalAccount:
    """The key paying the gas: ``--keystore``, else the home's relayer key. Decrypted here; the
    password and key never reach an output."""
    from eth_account import Account

    from .home import PASSWORD_ENV
    from .signer import LocalKeySigner

    if args.keystore is not None:
        path = Path(args.keystore).expanduser()
    elif (
        home is not None
        and home.config.signer.kind == "smart_account"
        and home.config.signer.relayer_keystore
    ):
        path = home.path(home.config.signer.relayer_keystore)
    else:
        raise ConfigError(
            "deploying the factory needs a key with ETH: --keystore FILE (or a home with a relayer key)",
            reason=Reason.RELAYER_MISSING,
        )
    if home is not None:
        password = home.keystore_password()
    elif (password_env := os.environ.get(PASSWORD_ENV)) is not None:
        password = password_env
    else:
        raise ConfigError(
            f"set {PASSWORD_ENV} to unlock {path.name}", reason=Reason.KEYSTORE_PASSWORD_MISSING
        )
    account: LocalAccount = Account.from_key(LocalKeySigner.from_keystore(path, password).private_key_bytes())
    return account
