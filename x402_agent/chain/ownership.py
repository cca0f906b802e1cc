"""Who owns a home's smart account: the key the chain records, or the one its address commits to.

The enrollment (``device.json``) is a file an attacker on the host can rewrite; the account's
owner is not. A deployed account's owner is read on chain (``owner()``). An account not deployed
yet has no owner to read, but its address is derived from the factory and its whole initial
configuration, owner included: recomputed here (no chain read), it proves which key will own it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from eth_utils.address import to_checksum_address
from web3 import Web3

from ..errors import ChainError, ConfigError
from ..home import AgentHome, SmartAccountConfig
from ..policy_store import AccountOwner
from ..reasons import Reason
from .account import account_contract
from .factory import counterfactual_addresses
from .wallet import account_config


def account_owner(w3: Web3, signer: SmartAccountConfig, enrolled: str) -> AccountOwner:
    """The owner of ``signer.account``; ``enrolled`` is the enrolled key's address, tried as the
    owner a counterfactual address commits to (the home's recorded setup may name another)."""
    account = to_checksum_address(signer.account)
    try:
        deployed = bool(w3.eth.get_code(account))
        if deployed:
            owner = str(account_contract(w3, account).functions.owner().call())
            return AccountOwner(account, owner.lower(), "on chain")
    except (OSError, ValueError) as exc:
        raise ChainError(
            "cannot read the smart account's owner", reason=Reason.CHAIN_UNAVAILABLE, account=account
        ) from exc
    config = account_config(signer.setup)
    for owner in dict.fromkeys((enrolled.lower(), config.owner.lower())):
        if counterfactual_addresses(dataclasses.replace(config, owner=owner))[0] == account:
            return AccountOwner(account, owner, "committed to by the undeployed account's address")
    return AccountOwner(
        account,
        None,
        "the undeployed account's address commits to neither the enrolled key nor the home's recorded owner",
    )


def smart_account_rpc(home: AgentHome) -> tuple[SmartAccountConfig, str] | None:
    """A smart-account home's account and the RPC URL of its chain; None for a plain-key home.
    Without a URL nothing on chain can be checked: refused rather than trusting the files."""
    signer = home.config.signer
    if not isinstance(signer, SmartAccountConfig):
        return None
    rpc_url = home.config.rpc_urls.get(signer.network)
    if rpc_url is None:
        raise ConfigError(
            f"no RPC URL for {signer.network} in the home's rpc_urls", reason=Reason.CONFIG_INVALID
        )
    return signer, rpc_url


def owner_lookup(home: AgentHome) -> Callable[[str], AccountOwner] | None:
    """For a smart-account home, ``enrolled address -> AccountOwner`` (one RPC connection, used
    only when called); None for a plain-key home, which has no owner on chain to compare."""
    found = smart_account_rpc(home)
    if found is None:
        return None
    signer, rpc_url = found
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    return lambda enrolled: account_owner(w3, signer, enrolled)


__all__ = ["account_owner", "owner_lookup", "smart_account_rpc"]
