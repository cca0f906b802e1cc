"""x402-agent's cost per request through one batch-settlement channel against per-request
``exact`` on the same server, same run.

One local world, one agent home (the world's payer; a policy that lets USDC be paid with
``exact`` and ``batch-settlement``, channel deposits up to ``--deposit``). The agent pays
``--requests`` sequential GETs of ``/v2/batch`` (one deposit, then a voucher per request) and as
many of ``/v2/weather`` (``exact``: one EIP-3009 transfer each, same price, same server process),
in alternating blocks of 10 so both see the same load. Then the server claims and settles once
(the SDK channel manager, its timers off here) and the agent asks for the unused deposit back.

Latency: per ``Agent.fetch`` (the on-chain receipt check runs in the agent's verifier after the
body is returned, as in normal use; it is let finish between blocks, outside the timing). Gas:
every transaction each way, divided by the requests (the channel's: deposit, claims, settle,
refund; exact's: one transfer per request).

    .venv/bin/python bench/bench_batch_payments.py [--requests 100] [--deposit 150000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from channel_results import channel_against_exact
from eth_typing import HexStr
from web3 import Web3

from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.batch import BATCH_PATH, BatchServer, BatchSettings, batch_artifact
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.operations import Agent

# The server claims and settles once, at the end (its default timers run every second).
_ONCE = BatchSettings(claim_interval_s=86_400, settle_interval_s=86_400)
BLOCK = 10


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--deposit", type=int, default=150_000, help="the policy's max_channel_deposit")
    args = parser.parse_args()
    local = LocalWorld(batch=_ONCE)
    world = local.start()
    try:
        assert local.batch_server is not None
        with tempfile.TemporaryDirectory() as root:
            result = run(world, local.batch_server, Path(root), args.requests, args.deposit)
    finally:
        local.stop()
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def _home(world: WorldInfo, root: Path, deposit: int) -> Path:
    base = devnet_policy(world, schemes=("exact", "batch-settlement"))
    usdc = base.assets[0].model_copy(update={"max_channel_deposit": deposit})
    policy = base.model_copy(update={"assets": (usdc, *base.assets[1:])})
    return provision_devnet_home(world, root / "home", policy).root


def run(world: WorldInfo, server: BatchServer, root: Path, requests: int, deposit: int) -> dict[str, Any]:
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    batch_url, exact_url = world.route("GET", BATCH_PATH).url, world.route("GET", "/v2/weather").url
    agent = Agent.open(_home(world, root, deposit))
    timings: dict[str, list[float]] = {"batch": [], "exact": []}
    transactions: dict[str, list[str]] = {"batch": [], "exact": []}
    try:
        for start in range(0, requests, BLOCK):
            for name, url in (("batch", batch_url), ("exact", exact_url)):
                for _ in range(min(BLOCK, requests - start)):
                    began = time.perf_counter()
                    outcome = agent.fetch(url)
                    timings[name].append((time.perf_counter() - began) * 1000)
                    if outcome.status != 200 or outcome.payment is None:
                        raise RuntimeError(f"{url} answered {outcome.status}")
                    transactions[name].append(outcome.payment.settlement_tx or "")
                if agent.verifier is not None:
                    agent.verifier.wait_idle(60)  # outside the timing
        (channel,) = agent.channels()
        claimed = server.manager.claim()
        settled = server.manager.settle()
        refunded = agent.refund_channel(channel.channel_id)
    finally:
        agent.close()

    def gas(tx: str) -> int:
        return int(w3.eth.get_transaction_receipt(HexStr(tx))["gasUsed"])

    contract = w3.eth.contract(
        address=Web3.to_checksum_address(server.info.settlement),
        abi=batch_artifact("X402BatchSettlement")["abi"],
    )
    refunds = contract.events.Refunded().get_logs(from_block=0)
    refund_gas = gas("0x" + bytes(refunds[-1]["transactionHash"]).hex())
    deposits = [gas(tx) for tx in sorted(set(transactions["batch"]))]
    claims = [gas(r.transaction) for r in claimed]
    exact_gas = [gas(tx) for tx in transactions["exact"]]
    batch_ms, exact_ms = timings["batch"], timings["exact"]
    channel_gas = {
        "deposit": deposits,
        "claim": claims,
        "settle": gas(settled.transaction),
        "refund": refund_gas,
    }
    result = channel_against_exact(requests, batch_ms, exact_ms, channel_gas, exact_gas)
    result["batch"].update(deposit=channel.deposit, charged=refunded.charged, refunded=refunded.refunded)
    result["ratio"] = {
        "latency_p50_batch_over_exact": round(statistics.median(batch_ms) / statistics.median(exact_ms), 2),
        "gas_per_request_batch_over_exact": round(result["batch"]["gas_total"] / sum(exact_gas), 3),
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
