"""Read the local chain directly (raw JSON-RPC), independent of the code under test."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


def rpc(url: str, method: str, *params: Any) -> Any:
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def token_balance(url: str, token: str, holder: str) -> int:
    data = "0x70a08231" + holder.lower().removeprefix("0x").rjust(64, "0")
    return int(rpc(url, "eth_call", {"to": token, "data": data}, "latest"), 16)


def transfer_logs(url: str, tx: str | None) -> list[tuple[str, str, str, int]]:
    """(token, from, to, value) of every ERC-20 Transfer in a transaction."""
    receipt = rpc(url, "eth_getTransactionReceipt", tx)
    return [
        (
            to_checksum_address(log["address"]),
            to_checksum_address("0x" + log["topics"][1][-40:]),
            to_checksum_address("0x" + log["topics"][2][-40:]),
            int(log["data"], 16),
        )
        for log in receipt["logs"]
        if log["topics"][0] == TRANSFER
    ]


def advance_time(url: str, seconds: int) -> None:
    """Move the chain's clock forward and mine, so deadlines pass without waiting."""
    rpc(url, "evm_increaseTime", seconds)
    rpc(url, "evm_mine")


def window_past_skew(url: str, seconds: int) -> int:
    """An authorization window of ``seconds`` as the chain will see it: tests that move the
    shared chain's clock forward leave it ahead of the wall clock the signer uses, and a short
    window would already have expired on chain."""
    latest = int(rpc(url, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    return seconds + max(0, math.ceil(latest - time.time()))
