"""Re-access by sign-in-with-x against paying again, on the same route of the same server.

The local world's ``/v2/siwx`` (the SDK's middleware with its sign-in-with-x extension and its
own facilitator settling on anvil). Two agent homes with the world's plain-key payer: one with
re-access off (every fetch pays: EIP-3009 transfer, settlement on chain, receipt check), one
with it on (paid once, then every fetch signs in: one EIP-191 signature, the server's recovery,
no chain). Requests alternate between the two, sequentially; latency is the wall time of
``Agent.fetch``, gas the settlement transaction's ``gasUsed`` (a sign-in has none). The world
runs in this process (uvicorn threads), so absolute figures include its share of the CPU.

    .venv/bin/python bench/bench_siwx.py [--requests 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from x402_agent.devnet import LocalWorld
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.operations import Agent
from x402_agent.policy import ReAccess

ROUTE = "/v2/siwx"


def _gas(rpc_url: str, tx: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt", "params": [tx]}
    return int(httpx.post(rpc_url, json=body).json()["result"]["gasUsed"], 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with LocalWorld() as world, tempfile.TemporaryDirectory() as tmp:
        off = devnet_policy(world).model_copy(update={"reaccess": ReAccess(sign_in=False)})
        paying = Agent.open(provision_devnet_home(world, Path(tmp) / "paying", off).root)
        signing = Agent.open(provision_devnet_home(world, Path(tmp) / "signing", devnet_policy(world)).root)
        url = world.api_url + ROUTE
        try:
            first = signing.fetch(url)  # buys the entitlement
            assert first.payment is not None
            paid_ms, sign_in_ms, gas = [], [], []
            for _ in range(args.requests):
                began = time.perf_counter()
                paid = paying.fetch(url)
                paid_ms.append((time.perf_counter() - began) * 1000)
                assert paid.payment is not None and paid.payment.settlement_tx is not None
                gas.append(_gas(world.rpc_url, paid.payment.settlement_tx))
                began = time.perf_counter()
                signed = signing.fetch(url)
                sign_in_ms.append((time.perf_counter() - began) * 1000)
                assert signed.sign_in is not None and signed.payment is None
        finally:
            paying.close()
            signing.close()
    print(
        json.dumps(
            {
                "requests": args.requests,
                "pay_again_ms_p50": round(statistics.median(paid_ms), 1),
                "sign_in_ms_p50": round(statistics.median(sign_in_ms), 1),
                "pay_again_gas_per_request": round(statistics.median(gas)),
                "sign_in_gas_per_request": 0,
                "price_atomic_per_paid_request": world.route("GET", ROUTE).price_atomic,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
