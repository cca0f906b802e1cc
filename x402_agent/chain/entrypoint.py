"""The ERC-4337 v0.7 EntryPoint at its canonical address on a local chain.

The creation code comes from npm ``@account-abstraction/contracts@0.7.0``; sent through the
deterministic CREATE2 deployer with the canonical salt, it lands at the same address as on
public chains. (Never ``anvil_setCode`` it: the SenderCreator immutable would be wrong.)
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3

from ..paths import PROJECT_ROOT

CREATE2_DEPLOYER = to_checksum_address("0x4e59b44847b379578588920cA78FbF26c0B4956C")
ENTRY_POINT_V07 = to_checksum_address("0x0000000071727De22E5E9d8BAf0edAc6f37da032")
ENTRY_POINT_V07_SALT = bytes.fromhex("90d8084deab30c2a37c45e8d47f49f2f7965183cb6990a98943ef94940681de3")

_ARTIFACTS = PROJECT_ROOT / "node_modules" / "@account-abstraction" / "contracts" / "artifacts"
_DEPLOY_GAS = 6_000_000  # the deployment uses ~4.3M gas


@cache
def _artifact(name: str) -> dict[str, Any]:
    artifact: dict[str, Any] = json.loads((_ARTIFACTS / f"{name}.json").read_text())
    return artifact


def entry_point_v07_abi() -> list[dict[str, Any]]:
    """The EntryPoint v0.7 ABI from the npm artifact."""
    abi: list[dict[str, Any]] = _artifact("EntryPoint")["abi"]
    return abi


def entry_point_v07_creation_code() -> bytes:
    """The EntryPoint v0.7 creation code from the npm artifact (it has no libraries to link)."""
    return bytes.fromhex(_artifact("EntryPoint")["bytecode"].removeprefix("0x"))


def create2_address(deployer: str, salt: bytes, init_code: bytes) -> ChecksumAddress:
    """The address CREATE2 gives ``init_code`` deployed by ``deployer`` with ``salt``."""
    if len(salt) != 32:
        raise ValueError("a CREATE2 salt is 32 bytes")
    preimage = b"\xff" + bytes.fromhex(deployer.removeprefix("0x")) + salt + keccak(init_code)
    return to_checksum_address(keccak(preimage)[12:])


def deploy_entry_point_v07(w3: Web3, funder: LocalAccount) -> ChecksumAddress:
    """Deploy EntryPoint v0.7 at its canonical address unless code is already there; return it."""
    if w3.eth.get_code(ENTRY_POINT_V07):
        return ENTRY_POINT_V07
    code = entry_point_v07_creation_code()
    if create2_address(CREATE2_DEPLOYER, ENTRY_POINT_V07_SALT, code) != ENTRY_POINT_V07:
        raise RuntimeError("the npm EntryPoint creation code does not match the canonical deployment")
    if not w3.eth.get_code(CREATE2_DEPLOYER):
        raise RuntimeError(f"no CREATE2 deployer at {CREATE2_DEPLOYER} on this chain")
    tx: dict[str, Any] = {
        "chainId": w3.eth.chain_id,
        "from": funder.address,
        "to": CREATE2_DEPLOYER,
        "data": ENTRY_POINT_V07_SALT + code,
        "nonce": w3.eth.get_transaction_count(funder.address, "pending"),
        "gas": _DEPLOY_GAS,
        "maxFeePerGas": 2 * w3.eth.gas_price + 1,
        "maxPriorityFeePerGas": 1,
    }
    signed = funder.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    if receipt["status"] != 1 or not w3.eth.get_code(ENTRY_POINT_V07):
        raise RuntimeError(f"EntryPoint v0.7 deployment failed (tx {receipt['transactionHash'].hex()})")
    return ENTRY_POINT_V07
