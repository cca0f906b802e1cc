"""An agent home wired to a running local world: funded payer key, RPC endpoints, and a
policy approved on a hardware device (by default the simulator, through HWI)."""

from __future__ import annotations

import secrets
from pathlib import Path

from ..device.approve import approve, enroll
from ..device.hwi import DEFAULT_APPROVAL_PATH, HardwareDevice, HwiDevice
from ..home import AgentHome, provision_home
from ..policy import AssetRule, Policy
from ..policy_store import PolicyStore, expectations
from .info import WorldInfo
from .usdc import TokenInfo

# 0.10 of a 6-decimal token: the world's 0.25 "premium" route is refused by this cap.
DEVNET_PER_REQUEST_MAX = 100_000
DEVNET_DAILY_MAX = 2_000_000  # 2.00 per token per calendar day (UTC)
DEVNET_SESSION_ALLOWANCE = 500_000  # 0.50 USDC per session, for one hour
# scrypt at n=2**14 instead of eth-account's 2**18: a throwaway devnet key must not cost every
# CLI start a second. Real homes use the default.
DEVNET_SCRYPT_N = 2**14


def _rule(network: str, token: TokenInfo) -> AssetRule:
    return AssetRule(network=network, address=token.address, symbol=token.symbol,
                     decimals=token.decimals, eip712_name=token.name,
                     eip712_version=token.version, per_request_max=DEVNET_PER_REQUEST_MAX,
                     daily_max=DEVNET_DAILY_MAX)


def devnet_policy(world: WorldInfo, *, include_eurc: bool = False, version: int = 1) -> Policy:
    """USDC on both local chains (and optionally EURC): 0.10 per request, 2.00 a day, 0.50 of
    main-chain USDC per session (an hour), a circuit breaker after 5 failed settlements."""
    assets = [_rule(world.network, world.usdc), _rule(world.alt_network, world.alt_usdc)]
    if include_eurc:
        assets.append(_rule(world.network, world.eurc))
    return Policy.model_validate({
        "version": version, "assets": assets,
        "account": world.payer_address, "chain_id": world.chain_id,
        "day": {"kind": "calendar", "timezone": "UTC"},
        "circuit_breaker": {"max_consecutive_failures": 5},
        "sessions": {"default": {"lifetime_seconds": 3600, "allowance": {
            f"{world.network}/{world.usdc.address}": DEVNET_SESSION_ALLOWANCE}}},
    })


def provision_devnet_home(world: WorldInfo, root: Path, policy: Policy | None = None,
                          device: HardwareDevice | None = None) -> AgentHome:
    """A ready home: the keystore password sits in a 0600 file (devnet only); the device
    (default: the simulator through HWI) is enrolled and approves the policy."""
    home = provision_home(
        root, private_key=world.payer_private_key,
        rpc_urls={world.network: world.rpc_url, world.alt_network: world.alt_rpc_url},
        password=secrets.token_urlsafe(24), store_password=True, chain_id=world.chain_id,
        kdf_iterations=DEVNET_SCRYPT_N)
    store = PolicyStore(home.root, expectations(home))
    opened = device or HwiDevice.at("trezor", world.device_path)
    try:
        enroll(store, opened, DEFAULT_APPROVAL_PATH)
        approve(store, opened, policy or devnet_policy(world))
    finally:
        if device is None:
            opened.close()
    return home
