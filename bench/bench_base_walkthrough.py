"""The new user's walk-through on the Base-shaped chain: wall time and gas of each step.

The steps of tests/test_base_shaped.py, each a separate `x402-agent` process as the user types
it (so each wall time includes the CLI's start-up), on a Base Sepolia-shaped anvil with alto as
a separate bundler and the official SDK's server and facilitator. Gas is what every transaction
mined during the step used (anvil mines only those and idle blocks), by transaction: who sent it,
to what, and its calldata size (on Base the L1 data fee grows with it; anvil does not charge it).

    .venv/bin/python bench/bench_base_walkthrough.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from x402_agent.chain.account import send_transaction
from x402_agent.chain.entrypoint import ENTRY_POINT_V07
from x402_agent.chain.factory import factory_address
from x402_agent.device.simulator import DeviceSimulator
from x402_agent.devnet.base_shaped import BaseShapedInfo, BaseShapedWorld
from x402_agent.signer import write_keystore

CLI = [sys.executable, "-m", "x402_agent.cli"]
PASSWORD = "bench passphrase"
VAULT_FUNDING, ACCOUNT_ETH, TOP_UP_TO, ALLOWANCE = 5_000_000, 10**16, 300_000, 2_000_000


def _gas_since(w3: Web3, first_block: int, names: dict[str, str]) -> list[dict[str, Any]]:
    """Every transaction mined from ``first_block`` on: sender, target, gas used, calldata bytes."""
    found = []
    for number in range(first_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)  # full transactions were asked for
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            to = str(tx["to"]) if tx["to"] else "(create)"
            found.append(
                {
                    "from": names.get(str(tx["from"]), str(tx["from"])),
                    "to": names.get(to, to),
                    "gas_used": int(receipt["gasUsed"]),
                    "calldata_bytes": len(tx["input"]),
                }
            )
    return found


def _children_cpu() -> float:
    """CPU seconds of the finished CLI processes (a step's own work, whatever else shares the
    cores; the running anvil, alto and servers are not counted until they exit)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


class Walk:
    """One walk-through on a fresh home; ``step`` times one step and collects its gas."""

    def __init__(self, chain: BaseShapedInfo, scratch: Path, names: dict[str, str]) -> None:
        self.chain, self.scratch, self.names = chain, scratch, names
        self.home = scratch / "home"
        self.w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        self.rows: list[dict[str, Any]] = []

    def cli(self, *args: str) -> str:
        env = {**os.environ, "X402_AGENT_HOME": str(self.home), "X402_AGENT_KEY_PASSWORD": PASSWORD}
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"x402-agent {' '.join(args[:2])} failed: {done.stderr[-2000:]}")
        return done.stdout

    def step(self, name: str, action: Callable[[], object]) -> Any:
        first = self.w3.eth.block_number + 1
        cpu_before = _children_cpu()
        began = time.perf_counter()
        result = action()
        wall = time.perf_counter() - began
        cpu = _children_cpu() - cpu_before
        txs = _gas_since(self.w3, first, self.names)
        gas = sum(t["gas_used"] for t in txs)
        self.rows.append({"step": name, "wall_s": wall, "cli_cpu_s": cpu, "gas": gas, "txs": txs})
        return result

    def user_sends(self, to: str, *, usdc: int = 0, eth: int = 0) -> None:
        if usdc:
            data = Web3.keccak(text="transfer(address,uint256)")[:4] + bytes(12) + bytes.fromhex(to[2:])
            data += usdc.to_bytes(32, "big")
            send_transaction(
                self.w3, self.chain.user_private_key, {"to": self.chain.usdc.address, "data": data}
            )
        if eth:
            send_transaction(self.w3, self.chain.user_private_key, {"to": to, "value": eth, "gas": 60_000})


def walk(chain: BaseShapedInfo, device_path: str, scratch: Path, *, first: bool) -> list[dict[str, Any]]:
    assert chain.route is not None and chain.bundler_url is not None
    names = {
        ENTRY_POINT_V07: "EntryPoint",
        factory_address(): "factory",
        "0x4e59b44847b379578588920cA78FbF26c0B4956C": "CREATE2 proxy",
        chain.usdc.address: "USDC",
        chain.user_address: "user",
        str(chain.bundler_executor): "bundler",
        str(chain.facilitator_address): "facilitator",
    }
    w = Walk(chain, scratch, names)
    scratch.mkdir(parents=True)
    keystore = scratch / "funded.keystore.json"
    write_keystore(keystore, chain.user_private_key, PASSWORD, iterations=2**14)
    w.step("init", lambda: w.cli("init", "--network", chain.network, "--rpc-url", chain.rpc_url))
    w.step("device enroll", lambda: w.cli("device", "enroll", "--device-path", device_path))
    label = "wallet deploy-factory" if first else "wallet deploy-factory (already there)"
    w.step(label, lambda: w.cli("wallet", "deploy-factory", "--keystore", str(keystore)))
    if first:
        w.step(
            "wallet deploy-factory (again)",
            lambda: w.cli("wallet", "deploy-factory", "--keystore", str(keystore)),
        )
    out = w.step(
        "wallet create",
        lambda: w.cli(
            "wallet",
            "create",
            "--network",
            chain.network,
            "--token",
            chain.usdc.address,
            "--max-value",
            "100000",
            "--allowance",
            str(ALLOWANCE),
            "--top-up-to",
            str(TOP_UP_TO),
            "--bundler-url",
            str(chain.bundler_url),
        ),
    )
    made = json.loads(out[: out.rindex("}") + 1])
    names |= {made["account"]: "account", made["vault"]: "vault"}
    w.step("fund the vault (USDC transfer)", lambda: w.user_sends(made["vault"], usdc=VAULT_FUNDING))
    w.step("fund the gas (ETH to the account)", lambda: w.user_sends(made["account"], eth=ACCOUNT_ETH))
    policy = {
        "schema": "x402-agent/policy/1",
        "version": 1,
        "account": made["account"],
        "chain_id": chain.chain_id,
        "day": {"kind": "calendar", "timezone": "UTC"},
        "assets": [
            {
                "network": chain.network,
                "address": chain.usdc.address,
                "symbol": "USDC",
                "decimals": 6,
                "eip712_name": chain.usdc.name,
                "eip712_version": chain.usdc.version,
                "per_request_max": 50_000,
                "daily_max": 1_000_000,
            }
        ],
        "networks": {"allow": [chain.network], "deny": []},
        "private_network": {"allow": [chain.route.url.split("/")[2]]},
    }
    (scratch / "policy.json").write_text(json.dumps(policy))
    w.step("policy propose", lambda: w.cli("policy", "propose", str(scratch / "policy.json")))
    w.step("policy approve", lambda: w.cli("policy", "approve"))
    url = chain.route.url
    w.step("first paid fetch (top-up deploys the account)", lambda: w.cli("fetch", url))
    w.step("second paid fetch (hot balance covers it)", lambda: w.cli("fetch", url))
    w.step("wallet topup (deployed account)", lambda: w.cli("wallet", "topup", "100000"))
    return w.rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--runs", type=int, default=3, help="walk-throughs (fresh home each; the first deploys)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    simulator = DeviceSimulator(confirm="auto", port=0)
    simulator.start()
    try:
        with BaseShapedWorld() as chain, tempfile.TemporaryDirectory() as scratch:
            startup = time.perf_counter() - began
            runs = [
                walk(chain, simulator.path, Path(scratch) / f"run{i}", first=i == 0) for i in range(args.runs)
            ]
    finally:
        simulator.stop()
    report = {"world_startup_s": startup, "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Base-shaped world (anvil 84532, alto, SDK server+facilitator) up in {startup:.1f} s")
    by_step: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run:
            by_step.setdefault(row["step"], []).append(row)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (wall times stretch with it; CPU does not)")
    print(f"{'step':48} {'wall s':>7} {'cpu s':>6} {'gas':>9}  transactions: gas (calldata bytes)")
    for step, rows in by_step.items():
        wall = statistics.median(r["wall_s"] for r in rows)
        cpu = statistics.median(r["cli_cpu_s"] for r in rows)
        txs = "; ".join(
            f"{t['from']}->{t['to']} {t['gas_used']} ({t['calldata_bytes']} B)" for t in rows[0]["txs"]
        )
        print(f"{step:48} {wall:7.2f} {cpu:6.2f} {rows[0]['gas']:9}  {txs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
