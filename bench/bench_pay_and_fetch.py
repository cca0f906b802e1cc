"""Paid fetches against the local world: x402-agent versus the official SDK's httpx client.

Both clients pay the same route of the same server (the SDK's FastAPI middleware and its own
facilitator settling on anvil), from the same payer, in the same run, in alternating rounds so
drift hits both alike. The world runs in its own process (`x402-agent devnet`) so the servers
do not share an interpreter with the clients being measured.

x402-agent does more per payment: policy check, a ledger reservation before signing, state
changes, a stored receipt, and an on-chain check of the settlement transaction receipt (done by
the agent's verifier after the body is returned).

Latency: sequential (strictly alternating single requests, ratio of medians; our verifier's
check is let finish after each of our requests, outside the timing, so that it does not run
into the next client's request) and ``--concurrency`` at a time (alternating rounds, ratio of
the median round's wall time per request; our rounds include waiting for the verifier to
finish). The median round, not the sum: with a test suite running on the same 2 cores, one
round of each of our clients once stalled ~18-20 s (all 16 requests together), which summed
over 3 rounds read as 4.26x; each round's wall time is in the output (``round_wall_ms``).
Client CPU: ``time.process_time()`` of this process (all its threads) per paid request, the
world in its own process, alternating requests; ours includes the verifier's check.

Per scheme (``--route``): ``exact`` pays /v2/weather (EIP-3009), ``permit2`` pays /v2/permit2
(exact over Permit2), ``upto`` pays /v2/metered settling 2,500 of a 10,000 maximum. For the Permit2
routes the payer approves Permit2 once before the run (the SDK client does not approve itself),
so neither client sends an approval while measured.

    .venv/bin/python bench/bench_pay_and_fetch.py [--route exact] [--rounds 6] [--per-round 32]
        [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3
from x402 import x402Client
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.upto import UptoEvmClientScheme

from x402_agent.chain.account import send_transaction
from x402_agent.home import open_home
from x402_agent.operations import Agent

ROUTES = {"exact": "/v2/weather", "permit2": "/v2/permit2", "upto": "/v2/metered?used=2500"}
ERC20_APPROVE = [
    {
        "name": "approve",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
]
SDK = "x402 SDK httpx client"
OURS = "x402-agent"
OURS_NO_CHAIN = "x402-agent without on-chain check"


def start_world(home: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "x402_agent.cli", "--home", str(home), "devnet"),
            *("--wallet", "key", "--schemes", "exact,upto"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def payer_key(home: Path) -> bytes:
    agent_home = open_home(home)
    keystore = json.loads(agent_home.path(agent_home.config.signer.keystore).read_text())
    return bytes(Account.decrypt(keystore, agent_home.keystore_password()))


def sdk_client(key: bytes, network: str, token: str) -> x402Client:
    signer = EthAccountSigner(Account.from_key(key))
    client = x402Client()
    client.register(network, ExactEvmScheme(signer=signer))
    client.register(network, UptoEvmClientScheme(signer=signer))
    client.set_spend_controls({"allowed_assets": [{"network": network, "asset": token}]})
    return client


def approve_permit2(rpc_url: str, token: str, key: bytes, amount: int) -> None:
    """Both clients pay Permit2 routes from one payer: its allowance is set once, before timing."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    data = w3.eth.contract(address=Web3.to_checksum_address(token), abi=ERC20_APPROVE).encode_abi(
        "approve", args=[PERMIT2_ADDRESS, amount]
    )
    receipt = send_transaction(w3, key, {"to": Web3.to_checksum_address(token), "data": data})
    assert receipt["status"] == 1, receipt


def settle_checks(agent: Agent | None) -> None:
    """Wait until the agent's verifier has checked every payment it was given."""
    if agent is not None and agent.verifier is not None:
        assert agent.verifier.wait_idle(60)


async def timed(calls: int, concurrency: int, one: Callable[[], Awaitable[int]]) -> list[float]:
    """Per-request latencies (s) of ``calls`` paid fetches, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def run() -> None:
        async with gate:
            began = time.perf_counter()
            status = await one()
            latencies.append(time.perf_counter() - began)
            assert status == 200, status

    await asyncio.gather(*(run() for _ in range(calls)))
    return latencies


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {
        "mean_ms": 1000 * statistics.fmean(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98],
        "per_request_wall_ms": 1000 * wall / len(latencies),
        "requests": len(latencies),
    }


async def measure(
    url: str, agents: dict[str, Agent], sdk: x402Client, rounds: int, per_round: int, concurrency: int
) -> dict[str, Any]:
    """Sequential: strictly alternating single requests (ratio of medians). Concurrent:
    alternating rounds of ``per_round`` requests, ``concurrency`` at a time (ratio of
    the median round's wall time per request)."""
    async with x402HttpxClient(sdk, timeout=60) as http:

        async def theirs() -> int:
            response = await http.get(url)
            await response.aread()
            return response.status_code

        def ours(agent: Agent) -> Callable[[], Awaitable[int]]:
            async def fetch() -> int:
                return (await agent.afetch(url)).status

            return fetch

        calls = {SDK: theirs, **{name: ours(agent) for name, agent in agents.items()}}
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        walls: dict[str, list[float]] = {name: [] for name in calls}
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # warm up: connection pools, imports, caches
            await timed(4, 1, call)
        for agent in agents.values():
            settle_checks(agent)
        batches = rounds * per_round if concurrency == 1 else rounds
        size = 1 if concurrency == 1 else per_round
        names = list(calls)
        for batch in range(batches):
            for name in names[batch % len(names) :] + names[: batch % len(names)]:
                began, began_cpu = time.perf_counter(), time.process_time()
                latencies[name] += await timed(size, concurrency, calls[name])
                if concurrency > 1:
                    settle_checks(agents.get(name))
                walls[name].append(time.perf_counter() - began)
                settle_checks(agents.get(name))
                cpu[name].append((time.process_time() - began_cpu) / size)
    figures = {
        name: {
            **summary(latencies[name], sum(walls[name])),
            "cpu_ms_per_request": 1000 * statistics.fmean(cpu[name]),
        }
        for name in calls
    }
    if concurrency > 1:
        for name in calls:
            figures[name]["round_wall_ms"] = [round(1000 * wall, 1) for wall in walls[name]]
            figures[name]["median_round_per_request_ms"] = 1000 * statistics.median(walls[name]) / size
    key = "p50_ms" if concurrency == 1 else "median_round_per_request_ms"
    for name in agents:
        figures[name]["ratio_over_sdk"] = round(figures[name][key] / figures[SDK][key], 3)
        figures[name]["cpu_ratio_over_sdk"] = round(
            figures[name]["cpu_ms_per_request"] / figures[SDK]["cpu_ms_per_request"], 3
        )
    return {"concurrency": concurrency, "ratio_basis": key, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--route", choices=sorted(ROUTES), default="exact", help="scheme to pay")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        proc, ready = start_world(home)
        try:
            agent, unchecked = Agent.open(home), Agent.open(home)
            unchecked.payer.rpc_urls = {}  # policy, ledger and receipts, but no chain RPC
            agents = {OURS: agent, OURS_NO_CHAIN: unchecked}
            key = payer_key(home)
            if args.route != "exact":
                approve_permit2(str(ready["rpc_url"]), str(ready["token"]), key, 10**12)
            sdk = sdk_client(key, str(ready["network"]), str(ready["token"]))
            url = f"{ready['api_url']}{ROUTES[args.route]}"
            report: dict[str, Any] = {"route": args.route}
            for label, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
                report[label] = asyncio.run(
                    measure(url, agents, sdk, args.rounds, args.per_round, concurrency)
                )
            agent.close()
            unchecked.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(report, indent=2))
    for label, data in report.items():
        if label == "route":
            continue
        key = data["ratio_basis"]
        print(
            f"{label} (x{data['concurrency']}, {key}): SDK {data[SDK][key]:.2f} ms", end="", file=sys.stderr
        )
        for name in (OURS, OURS_NO_CHAIN):
            print(
                f"; {name} {data[name][key]:.2f} ms = {data[name]['ratio_over_sdk']:.3f}x",
                end="",
                file=sys.stderr,
            )
        print(file=sys.stderr)
        print(
            f"  client CPU per request: SDK {data[SDK]['cpu_ms_per_request']:.2f} ms", end="", file=sys.stderr
        )
        for name in (OURS, OURS_NO_CHAIN):
            print(
                f"; {name} {data[name]['cpu_ms_per_request']:.2f} ms = "
                f"{data[name]['cpu_ratio_over_sdk']:.3f}x",
                end="",
                file=sys.stderr,
            )
        print(file=sys.stderr)


if __name__ == "__main__":
    main()
