"""Permit2 and the x402 Permit2 proxies at their canonical addresses on a local chain.

Permit2 is compiled from the sources npm ``@uniswap/v4-periphery`` ships; the two proxies are our
own implementation of the interface the x402 SDK's facilitator calls (no package ships them; on
public chains the SDK uses the deployed originals). ``contracts/build_permit2.py`` builds all three.

Placing code with ``anvil_setCode`` skips the constructor. The proxies have none (no immutables),
so their compiled runtime code is what a deployment would leave. Permit2's constructor caches its
EIP-712 domain separator, built from its own address, as an immutable: it is deployed normally
first and the cached separator in its runtime code is swapped for the canonical address's.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    X402_EXACT_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)

from ..chain.account import send_transaction
from ..paths import PROJECT_ROOT

_BUILD = PROJECT_ROOT / "contracts" / "permit2" / "build"
_PERMIT2_DEPLOY_GAS = 6_000_000  # creation measured ~2.1M gas; anvil charges only what is used
_DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,uint256 chainId,address verifyingContract)")


@cache
def permit2_artifact(name: str) -> dict[str, Any]:
    """``Permit2``, ``X402ExactPermit2Proxy`` or ``X402UptoPermit2Proxy`` (abi, bytecode)."""
    built: dict[str, Any] = json.loads((_BUILD / f"{name}.json").read_text())
    return built


def permit2_domain_separator(chain_id: int, address: str = PERMIT2_ADDRESS) -> bytes:
    """The EIP-712 domain separator Permit2 at ``address`` signs under (name "Permit2", no version)."""
    return keccak(
        encode(
            ["bytes32", "bytes32", "uint256", "address"],
            [_DOMAIN_TYPEHASH, keccak(text="Permit2"), chain_id, Web3.to_checksum_address(address)],
        )
    )


def install_permit2(rpc_url: str, deployer: LocalAccount) -> None:
    """Permit2 and both x402 proxies at their canonical addresses (anvil only: ``anvil_setCode``)."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    receipt = send_transaction(
        w3, deployer, {"data": permit2_artifact("Permit2")["bytecode"], "gas": _PERMIT2_DEPLOY_GAS}
    )
    runtime = bytes(w3.eth.get_code(receipt["contractAddress"]))
    chain_id = w3.eth.chain_id
    cached = permit2_domain_separator(chain_id, receipt["contractAddress"])
    if cached not in runtime:
        raise RuntimeError("Permit2's runtime code holds no cached domain separator to move")
    _set_code(w3, PERMIT2_ADDRESS, runtime.replace(cached, permit2_domain_separator(chain_id)))
    for name, address in (
        ("X402ExactPermit2Proxy", X402_EXACT_PERMIT2_PROXY_ADDRESS),
        ("X402UptoPermit2Proxy", X402_UPTO_PERMIT2_PROXY_ADDRESS),
    ):
        _set_code(w3, address, bytes.fromhex(permit2_artifact(name)["deployedBytecode"].removeprefix("0x")))


def _set_code(w3: Web3, address: str, code: bytes) -> None:
    w3.provider.make_request("anvil_setCode", [address, "0x" + code.hex()])  # type: ignore[arg-type]
