"""An agent home wired to a running local world: funded payer key, RPC endpoints, and a
policy approved on a hardware device (by default the simulator, through HWI)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from ..addresses import allow_entry_for
from ..device.approve import approve, enroll
from ..device.hwi import DEFAULT_APPROVAL_PATH, HardwareDevice, HwiDevice
from ..home import AgentHome, DeviceLocation, provision_home
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
    return AssetRule(
        network=network,
        address=token.address,
        symbol=token.symbol,
        decimals=token.decimals,
        eip712_name=token.name,
        eip712_version=token.version,
        per_request_max=DEVNET_PER_REQUEST_MAX,
        daily_max=DEVNET_DAILY_MAX,
    )


def devnet_policy(
    world: WorldInfo,
    *,
    include_eurc: bool = False,
    version: int = 1,
    also_fetch: Sequence[str] = (),
    account: str | None = None,
    schemes: tuple[str, ...] | None = None,
) -> Policy:
    """USDC on both local chains (and optionally EURC): 0.10 per request, 2.00 a day, 0.50 of
    main-chain USDC per session (an hour), a circuit breaker after 5 failed settlements. Of
    the machine's own addresses it may fetch the world's APIs only, and the URLs ``also_fetch``
    names (their exact host and port: a test's own server). ``account``: another payer than the
    world's; ``schemes``: what each asset may be paid with (unset: exact only)."""
    assets = [_rule(world.network, world.usdc), _rule(world.alt_network, world.alt_usdc)]
    if include_eurc:
        assets.append(_rule(world.network, world.eurc))
    if schemes is not None:
        assets = [rule.model_copy(update={"schemes": schemes}) for rule in assets]
    return Policy.model_validate(
        {
            "version": version,
            "assets": assets,
            "account": account or world.payer_address,
            "chain_id": world.chain_id,
            "day": {"kind": "calendar", "timezone": "UTC"},
            "circuit_breaker": {"max_consecutive_failures": 5},
            "sessions": {
                "default": {
                    "lifetime_seconds": 3600,
                    "allowance": {f"{world.network}/{world.usdc.address}": DEVNET_SESSION_ALLOWANCE},
                }
            },
            "private_network": {"allow": [*world.own_apis(), *(allow_entry_for(url) for url in also_fetch)]},
        }
    )


def _simulator(world: WorldInfo) -> DeviceLocation:
    """The world's simulator, on a port HWI's scan does not look at: the home records it so
    `x402-agent policy approve` and the wallet's owner actions find it."""
    return DeviceLocation(type="trezor", path=world.device_path)


def provision_devnet_home(
    world: WorldInfo,
    root: Path,
    policy: Policy | None = None,
    device: HardwareDevice | None = None,
    private_key: str | None = None,
) -> AgentHome:
    """A ready home: the keystore password sits in a 0600 file (devnet only); the device
    (default: the simulator through HWI) is enrolled and approves the policy. ``private_key``:
    another payer key than the world's (its policy must name its address)."""
    home = provision_home(
        root,
        private_key=private_key or world.payer_private_key,
        rpc_urls={world.network: world.rpc_url, world.alt_network: world.alt_rpc_url},
        password=secrets.token_urlsafe(24),
        store_password=True,
        chain_id=world.chain_id,
        kdf_iterations=DEVNET_SCRYPT_N,
        device=_simulator(world),
        facilitator_url=world.facilitator_url,
    )
    store = PolicyStore(home.root, expectations(home))
    opened = device or HwiDevice.at("trezor", world.device_path)
    try:
        enroll(store, opened, DEFAULT_APPROVAL_PATH)
        approve(store, opened, policy or devnet_policy(world))
    finally:
        if device is None:
            opened.close()
    return home


DEVNET_VAULT_FUNDING = 20_000_000  # 20 USDC in the vault
DEVNET_ACCOUNT_ETH = 10**17  # 0.1 ETH: gas for the account's own user operations (top-ups)
DEVNET_SESSION_DAYS = 30


def smart_account_policy(
    world: WorldInfo, account: str, *, version: int = 1, schemes: tuple[str, ...] | None = None
) -> Policy:
    """The devnet policy for a smart account: it pays main-chain USDC only (its one token)."""
    base = devnet_policy(world, version=version, schemes=schemes)
    return base.model_copy(update={"account": account, "assets": (base.assets[0],)})


def provision_smart_account_home(
    world: WorldInfo,
    root: Path,
    *,
    deploy: bool = True,
    device: HardwareDevice | None = None,
    policy: Callable[[str], Policy] | None = None,
) -> AgentHome:
    """A home paying from an X402Account owned by the device: the session key is encrypted in
    the home, the vault holds the funds, the policy names the account and is device-approved.

    ``deploy=False`` leaves the account counterfactual (its first payment or top-up deploys it).
    ``policy`` makes the policy for the account's address (default: ``smart_account_policy``).
    """
    from eth_account import Account
    from web3 import Web3

    from ..chain.setup import WalletBounds, create_wallet
    from ..signer import write_keystore

    home = provision_home(  # no payer key: the world's payer only funds this home
        root,
        private_key=None,
        rpc_urls={world.network: world.rpc_url},
        password=secrets.token_urlsafe(24),
        store_password=True,
        chain_id=world.chain_id,
        device=_simulator(world),
        facilitator_url=world.facilitator_url,
    )
    password = home.keystore_password()
    relayer = Account.create()
    write_keystore(
        root / "relayer.keystore.json", "0x" + bytes(relayer.key).hex(), password, iterations=DEVNET_SCRYPT_N
    )
    opened = device or HwiDevice.at("trezor", world.device_path)
    try:
        enrollment = opened.enroll(DEFAULT_APPROVAL_PATH)  # the person confirms the address once
        owner = enrollment.eth_address
        w3 = Web3(Web3.HTTPProvider(world.rpc_url))
        payer = Account.from_key(world.payer_private_key)
        bounds = WalletBounds(
            world.usdc.address,
            max_value=DEVNET_PER_REQUEST_MAX,
            max_window=devnet_policy(world).max_authorization_seconds + 60,
            allowance=DEVNET_DAILY_MAX,
        )
        home = create_wallet(
            home,
            w3,
            network=world.network,
            owner=owner,
            bounds=bounds,
            session_seconds=DEVNET_SESSION_DAYS * 86400,
            password=password,
            bundler_url=world.bundler_url,
            relayer_keystore="relayer.keystore.json",
            top_up_to=DEVNET_SESSION_ALLOWANCE,
            deploy_with=payer if deploy else None,
            kdf_iterations=DEVNET_SCRYPT_N,
        )
        wallet = home.config.signer
        assert wallet.kind == "smart_account"
        fund(world, wallet.vault, usdc=DEVNET_VAULT_FUNDING)
        for to in (wallet.account, relayer.address):
            fund(world, to, eth=DEVNET_ACCOUNT_ETH)
        store = PolicyStore(home.root, expectations(home))
        store.enroll(enrollment)
        from ..chain.anchor import home_anchor

        approve(  # anchored as `policy approve` does; a counterfactual account has no anchor yet
            store,
            opened,
            policy(wallet.account) if policy else smart_account_policy(world, wallet.account),
            home_anchor(home) if deploy else None,
        )
    finally:
        if device is None:
            opened.close()
    return home


def fund(world: WorldInfo, to: str, *, usdc: int = 0, eth: int = 0) -> None:
    """Send main-chain USDC and/or ETH (wei) from the world's funded payer to ``to``."""
    from web3 import Web3

    from ..chain.account import send_transaction

    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    if usdc:
        token = w3.eth.contract(
            address=Web3.to_checksum_address(world.usdc.address),
            abi=[
                {
                    "name": "transfer",
                    "type": "function",
                    "stateMutability": "nonpayable",
                    "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
                    "outputs": [{"name": "", "type": "bool"}],
                }
            ],
        )
        send_transaction(
            w3,
            world.payer_private_key,
            {"to": token.address, "data": token.encode_abi("transfer", args=[to, usdc])},
        )
    if eth:
        send_transaction(w3, world.payer_private_key, {"to": to, "value": eth, "gas": 60_000})
