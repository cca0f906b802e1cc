"""The hot wallet's cost: signing latency, per-payment overhead and gas, against a plain key.

In one run, on one local world (with the alto bundler):
- signing one EIP-3009 authorization: a plain key (65-byte ECDSA) versus the smart account's
  session key (the ERC-1271 envelope), and the wallet's pre-signing bound check (cached bounds);
- a paid fetch, p50 over alternating requests: a plain-key home versus a smart-account home
  (bound check, hot-balance read, envelope, ERC-1271 verification by the facilitator);
- gas: creating the account and vault (clones), one top-up user operation, one payment through
  ERC-1271 versus one EOA payment.

    .venv/bin/python bench/bench_hot_wallet.py [--signs 2000] [--fetches 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from x402_agent.chain.factory import create_account
from x402_agent.chain.wallet import HotWallet
from x402_agent.devnet import LocalWorld
from x402_agent.devnet.provision import provision_devnet_home, provision_smart_account_home
from x402_agent.operations import Agent
from x402_agent.signer import LocalKeySigner, TokenDomain, TransferAuthorization

ROUTE = ("GET", "/v2/weather")


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def time_each(n: int, fn: Callable[[], Any]) -> list[float]:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signs", type=int, default=2000)
    parser.add_argument("--fetches", type=int, default=40)
    args = parser.parse_args()
    with LocalWorld(bundler=True) as world, tempfile.TemporaryDirectory() as scratch:
        w3 = Web3(Web3.HTTPProvider(world.rpc_url))
        key_agent = Agent.open(provision_devnet_home(world, Path(scratch) / "key"))
        smart_agent = Agent.open(provision_smart_account_home(world, Path(scratch) / "smart", deploy=False))
        wallet = smart_agent.payer.signer
        key = key_agent.payer.signer
        assert isinstance(wallet, HotWallet) and isinstance(key, LocalKeySigner)
        url = world.route(*ROUTE).url

        # gas: deployment through the factory (clones), measured on an identical fresh config
        fresh = wallet.config.__class__(**{**wallet.config.__dict__, "salt": b"\x01" * 32})
        _, _, create_gas = create_account(
            w3, fresh, __import__("eth_account").Account.from_key(world.payer_private_key)
        )
        # warm-up: the first paid fetch deploys the account in its top-up user operation
        first = smart_agent.fetch(url)
        assert first.status == 200 and wallet.top_ups
        top_up = wallet.top_ups[0]
        top_up_receipt = w3.eth.get_transaction_receipt(top_up.transaction_hash)  # type: ignore[arg-type]
        key_agent.fetch(url)
        top_up_again = wallet.top_up(1)  # a top-up of an already deployed account
        smart_payment = smart_agent.fetch(url).payment
        key_payment = key_agent.fetch(url).payment
        assert smart_payment and key_payment
        smart_gas = w3.eth.get_transaction_receipt(smart_payment.settlement_tx)["gasUsed"]  # type: ignore[arg-type]
        key_gas = w3.eth.get_transaction_receipt(key_payment.settlement_tx)["gasUsed"]  # type: ignore[arg-type]

        # signing latency
        now = int(time.time())
        domain = TokenDomain(world.usdc.name, world.usdc.version, world.chain_id, world.usdc.address)

        def auth(payer: str) -> TransferAuthorization:
            return TransferAuthorization(
                domain, payer, world.payees["api"], 1_000, now - 60, now + 300, "0x" + "ab" * 32
            )

        key_auth, smart_auth = auth(key.address), auth(wallet.address)
        key_sign = time_each(args.signs, lambda: key.sign_authorization(key_auth))
        smart_sign = time_each(args.signs, lambda: wallet.sign_authorization(smart_auth))
        check = time_each(
            args.signs, lambda: wallet.check_payment(world.usdc.address, world.payees["api"], 1_000, 300)
        )
        funds = time_each(200, lambda: wallet.ensure_funds(1_000))

        # paid fetch, alternating
        key_fetch: list[float] = []
        smart_fetch: list[float] = []
        for _ in range(args.fetches):
            for agent, samples in ((key_agent, key_fetch), (smart_agent, smart_fetch)):
                began = time.perf_counter()
                assert agent.fetch(url).status == 200
                samples.append(time.perf_counter() - began)
        key_agent.close()
        smart_agent.close()

    print(
        f"signing one authorization, p50: plain key {p50_us(key_sign):.0f} us, session key + "
        f"ERC-1271 envelope {p50_us(smart_sign):.0f} us "
        f"({statistics.median(smart_sign) / statistics.median(key_sign):.2f}x)"
    )
    print(
        f"pre-signing bound check (cached bounds) p50 {p50_us(check):.1f} us; hot-balance check "
        f"(one RPC) p50 {p50_us(funds):.0f} us"
    )
    print(
        f"paid fetch p50: plain key {statistics.median(key_fetch) * 1e3:.1f} ms, smart account "
        f"{statistics.median(smart_fetch) * 1e3:.1f} ms "
        f"({statistics.median(smart_fetch) / statistics.median(key_fetch):.2f}x)"
    )
    print(
        f"gas: create account + vault (clones) {create_gas}; first top-up user operation "
        f"(deploys the account, pulls from the vault) tx {top_up_receipt['gasUsed']}, "
        f"actualGasUsed {top_up.gas_used}; top-up of a deployed account actualGasUsed "
        f"{top_up_again.gas_used}; payment via ERC-1271 {smart_gas} vs EOA payment {key_gas}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
