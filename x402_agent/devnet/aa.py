"""Account-abstraction parts of a local chain: EntryPoint v0.7, our account factory, Multicall3.

The x402 facilitator simulates an ERC-6492 payment (deploy the account, then transfer) in one
call through Multicall3 at its canonical address, which anvil does not ship. Its creation code
comes from npm ``viem`` (which deploys it for its own deployless calls); it has no constructor
arguments or immutables, so its runtime code can be placed at the canonical address.
"""

from __future__ import annotations

import re
from functools import cache

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from web3 import Web3

from ..chain.account import send_transaction
from ..chain.factory import deploy_factory
from ..paths import PROJECT_ROOT

MULTICALL3 = to_checksum_address("0xcA11bde05977b3631167028862bE2a173976CA11")
_VIEM_CONTRACTS = PROJECT_ROOT / "node_modules" / "viem" / "_cjs" / "constants" / "contracts.js"


@cache
def multicall3_creation_code() -> bytes:
    found = re.search(r"multicall3Bytecode = '0x([0-9a-fA-F]+)'", _VIEM_CONTRACTS.read_text())
    if found is None:
        raise RuntimeError(f"no Multicall3 creation code in {_VIEM_CONTRACTS}")
    return bytes.fromhex(found.group(1))


def install_multicall3(w3: Web3, funder: LocalAccount) -> ChecksumAddress:
    """Put Multicall3 at its canonical address (anvil only: uses ``anvil_setCode``)."""
    if w3.eth.get_code(MULTICALL3):
        return MULTICALL3
    receipt = send_transaction(w3, funder, {"data": multicall3_creation_code()})
    runtime = w3.eth.get_code(receipt["contractAddress"])
    w3.provider.make_request("anvil_setCode", [MULTICALL3, "0x" + bytes(runtime).hex()])  # type: ignore[arg-type]
    return MULTICALL3


def install_account_abstraction(rpc_url: str, funder: LocalAccount) -> ChecksumAddress:
    """EntryPoint v0.7, the X402 account factory and Multicall3; returns the factory address."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    install_multicall3(w3, funder)
    return deploy_factory(w3, funder)
