"""A new user on the Base-shaped chain (x402_agent/devnet/base_shaped.py), as they type it.

Every step of the user's is a separate `x402-agent` process; only the user's own wallet (sending
USDC and ETH, writing a keystore) is done here in Python, as any wallet app would do it.
Shared by tests/test_base_shaped.py and tests/test_base_shaped_fallback.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain_reads import rpc
from eth_abi.abi import encode
from web3 import Web3

from x402_agent.chain.account import send_transaction
from x402_agent.devnet.base_shaped import BaseShapedInfo
from x402_agent.signer import write_keystore

CLI = [sys.executable, "-m", "x402_agent.cli"]
PASSWORD = "a new user's passphrase"
VAULT_FUNDING = 5_000_000  # 5 USDC into the vault
ACCOUNT_ETH = 10**16  # 0.01 ETH for the account's top-up gas


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home), "X402_AGENT_KEY_PASSWORD": PASSWORD}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=180)


def user_keystore(chain: BaseShapedInfo, folder: Path) -> Path:
    """The user's funded key, in the keystore their wallet tool exported (scrypt, same password)."""
    path = folder / "funded.keystore.json"
    write_keystore(path, chain.user_private_key, PASSWORD, iterations=2**14)
    return path


def send_from_user(chain: BaseShapedInfo, to: str, *, usdc: int = 0, eth: int = 0) -> None:
    """The user's wallet app sends USDC (a plain ERC-20 transfer) or ETH."""
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    if usdc:
        data = Web3.keccak(text="transfer(address,uint256)")[:4] + encode(["address", "uint256"], [to, usdc])
        send_transaction(w3, chain.user_private_key, {"to": chain.usdc.address, "data": data})
    if eth:
        send_transaction(w3, chain.user_private_key, {"to": to, "value": eth, "gas": 60_000})


def nonce_of(chain: BaseShapedInfo, address: str) -> int:
    return int(rpc(chain.rpc_url, "eth_getTransactionCount", address, "latest"), 16)


def base_sepolia_policy(account: str, seller_url: str) -> dict[str, Any]:
    """The policy the user writes for the account: USDC on Base Sepolia, the local seller only."""
    return {
        "schema": "x402-agent/policy/1",
        "version": 1,
        "account": account,
        "chain_id": 84532,
        "day": {"kind": "calendar", "timezone": "UTC"},
        "assets": [
            {
                "network": "eip155:84532",
                "address": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "symbol": "USDC",
                "decimals": 6,
                "eip712_name": "USDC",
                "eip712_version": "2",
                "per_request_max": 50_000,
                "daily_max": 1_000_000,
            }
        ],
        "networks": {"allow": ["eip155:84532"], "deny": []},
        # The seller runs on this machine: its exact host and port only.
        "private_network": {"allow": [seller_url.split("/")[2]]},
    }


def wallet_create_args(chain: BaseShapedInfo, allowance: int, top_up_to: int, bundler_url: str) -> list[str]:
    """`wallet create` for USDC with the user's bounds and bundler."""
    return [
        "wallet", "create",
        "--network", chain.network,
        "--token", chain.usdc.address,
        "--max-value", "100000",
        "--allowance", str(allowance),
        "--top-up-to", str(top_up_to),
        "--bundler-url", bundler_url,
    ]  # fmt: skip


@dataclass(frozen=True)
class NewUser:
    home: Path
    account: str
    vault: str


def set_up_new_user(
    chain: BaseShapedInfo,
    device_path: str,
    folder: Path,
    *,
    bundler_url: str,
    top_up_to: int,
    allowance: int,
    relayer_keystore: Path | None = None,
) -> NewUser:
    """init, device enroll, deploy-factory (or finding it there), wallet create, fund the vault
    and the account's gas, policy propose and approve: each step asserted to succeed."""
    assert chain.route is not None
    home = folder / "home"
    steps: list[tuple[str, ...]] = [
        ("init", "--network", chain.network, "--rpc-url", chain.rpc_url),
        ("device", "enroll", "--device-path", device_path),
        ("wallet", "deploy-factory", "--keystore", str(user_keystore(chain, folder))),
    ]
    for step in steps:
        done = cli(home, *step)
        assert done.returncode == 0, (step, done.stderr)
    create = wallet_create_args(chain, allowance, top_up_to, bundler_url)
    if relayer_keystore is not None:
        create += ["--relayer-keystore", str(relayer_keystore)]
    made_run = cli(home, *create)
    assert made_run.returncode == 0, made_run.stderr
    made = json.loads(made_run.stdout[: made_run.stdout.rindex("}") + 1])
    send_from_user(chain, made["vault"], usdc=VAULT_FUNDING)
    send_from_user(chain, made["account"], eth=ACCOUNT_ETH)
    policy = folder / "base-sepolia.json"
    policy.write_text(json.dumps(base_sepolia_policy(made["account"], chain.route.url)))
    for step in (("policy", "propose", str(policy)), ("policy", "approve")):  # the simulator confirms
        done = cli(home, *step)
        assert done.returncode == 0, (step, done.stderr)
    return NewUser(home, made["account"], made["vault"])
