"""The batch-settlement world's cost per request against per-request ``exact``, official SDK only.

In one run, on one local world: the SDK's own httpx client pays ``--requests`` sequential GETs of
``/v2/batch`` (one channel: a deposit, then vouchers) and as many of ``/v2/weather`` (``exact``,
one EIP-3009 transfer each), alternating blocks of the two. Then the world's server claims and
settles once (the SDK channel manager's claim and settle, its timers off here) and the client asks
for the unused deposit back. Prints latency (p50, mean, the deposit's first request) and the gas
of every transaction each way, per request.

This measures the world (our contracts under the SDK's server, facilitator and client), not our
agent's channel client.

    .venv/bin/python bench/bench_batch_world.py [--requests 99]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from channel_results import channel_against_exact
from eth_account import Account
from eth_typing import HexStr
from web3 import Web3
from x402 import x402Client
from x402.http import decode_payment_response_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
)
from x402.mechanisms.evm.exact import ExactEvmScheme

from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.batch import BATCH_PATH, BatchServer, BatchSettings, batch_artifact

# Timers far beyond the run: the bench claims and settles once, at the end, as a server with a
# long interval would (the world's default, every second, spends a claim and a settle per second).
_ONCE = BatchSettings(claim_interval_s=86_400, settle_interval_s=86_400)


async def pay(client: x402Client, url: str, count: int) -> tuple[list[float], list[str]]:
    """``count`` sequential paid GETs: per-request milliseconds and the settle transactions."""
    latencies, transactions = [], []
    async with x402HttpxClient(client, timeout=30) as http:
        for _ in range(count):
            began = time.perf_counter()
            response = await http.get(url)
            await response.aread()
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
            transactions.append(
                decode_payment_response_header(response.headers["PAYMENT-RESPONSE"]).transaction
            )
    return latencies, transactions


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=99, help="fewer than the 100 the deposit covers")
    args = parser.parse_args()
    local = LocalWorld(batch=_ONCE)
    world = local.start()
    try:
        assert local.batch_server is not None
        result = run(world, local.batch_server, args.requests)
    finally:
        local.stop()
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def run(world: WorldInfo, server: BatchServer, requests: int) -> dict[str, Any]:
    assert world.batch is not None
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    signer = EthAccountSigner(Account.from_key(world.payer_private_key))
    channel = BatchSettlementEvmScheme(signer, BatchSettlementEvmSchemeOptions(salt="0x" + "b0" * 32))
    client = x402Client()
    client.register(world.network, channel)
    client.register(world.network, ExactEvmScheme(signer=signer))
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": world.usdc.address}]})
    batch_url, exact_url = world.route("GET", BATCH_PATH).url, world.route("GET", "/v2/weather").url

    batch_ms: list[float] = []
    exact_ms: list[float] = []
    batch_tx: list[str] = []
    exact_tx: list[str] = []
    for start in range(0, requests, 10):  # alternate blocks of 10: both see the same machine load
        count = min(10, requests - start)
        for url, ms, txs in ((batch_url, batch_ms, batch_tx), (exact_url, exact_ms, exact_tx)):
            latencies, sent = asyncio.run(pay(client, url, count))
            ms += latencies
            txs += sent

    def gas(tx: str) -> int:
        return int(w3.eth.get_transaction_receipt(HexStr(tx))["gasUsed"])

    claimed = server.manager.claim()  # the server's claim and settle, once for the whole run
    settled = server.manager.settle()
    refund = channel.refund(batch_url)
    deposits = [gas(tx) for tx in batch_tx if tx]
    claims = [gas(r.transaction) for r in claimed]
    exact_gas = [gas(tx) for tx in exact_tx]
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(world.batch.settlement),
        abi=batch_artifact("X402BatchSettlement")["abi"],
    )
    channel_gas = {
        "deposit": deposits,
        "claim": claims,
        "settle": gas(settled.transaction),
        "refund": gas(refund.transaction),
    }
    result = channel_against_exact(requests, batch_ms, exact_ms, channel_gas, exact_gas)
    result["batch"].update(
        receiver_claimed_settled=contract.functions.receivers(
            world.batch.receiver, world.usdc.address
        ).call(),
        refunded=refund.amount,
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
