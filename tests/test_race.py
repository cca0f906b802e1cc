"""Processes sharing one ledger, against the local x402 world, on every ledger backend:
200 payment attempts from 4 processes race for a budget that fits exactly 10 payments (exactly
10 pay); many `x402-agent fetch` commands at once each keep the payment they made (each exits 0
with its body and a complete receipt; a starting process never takes over a live one's row)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from chain_reads import token_balance

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.home import CONFIG_FILE
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.policy import Policy

WORKER = Path(__file__).with_name("race_worker.py")
PROCESSES, ATTEMPTS_EACH, FITS = 4, 50, 10


def budget_for(world: WorldInfo, price: int) -> Policy:
    base = devnet_policy(world).model_dump(by_alias=True)
    for asset in base["assets"]:
        asset["per_request_max"], asset["daily_max"] = price, FITS * price
    base["sessions"] = {}
    return Policy.model_validate(base)


def race(home: Path, url: str, *, attempts: int = ATTEMPTS_EACH, session: str | None = None) -> Counter[str]:
    """PROCESSES workers making ``attempts`` each at once (in ``session``, when given)."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(home), url, str(attempts), *([session] if session else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:  # wait until every process has opened its agent
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    total: Counter[str] = Counter()
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0
        total.update(json.loads(out.strip().splitlines()[-1]))
    return total


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_exactly_the_budget_pays(
    world: WorldInfo, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    route = world.route("GET", "/v2/weather")
    home = provision_devnet_home(world, tmp_path / "home", budget_for(world, route.price_atomic)).root
    if backend == "postgres":
        config = json.loads((home / CONFIG_FILE).read_text())
        config["ledger"] = request.getfixturevalue("postgres_url")
        (home / CONFIG_FILE).write_text(json.dumps(config))
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    results = race(home, route.url)

    assert results == Counter({"paid": FITS, "daily_limit_exceeded": PROCESSES * ATTEMPTS_EACH - FITS})
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (
        FITS * route.price_atomic
    )
    agent = Agent.open(home)
    try:
        settled = agent.receipts(limit=1000, states=[PaymentState.SETTLED])
        assert len(settled) == FITS and agent.receipts(limit=1000) == settled
    finally:
        agent.close()


CLI = [sys.executable, "-m", "x402_agent.cli"]
# backend: (homes, processes per home)
CLI_CROWDS = {"sqlite": (1, 30), "postgres": (4, 10)}


@pytest.mark.parametrize("backend", list(CLI_CROWDS))
def test_concurrent_cli_fetches_keep_their_payments(
    world: WorldInfo, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    route = world.route("GET", "/v2/weather")
    homes_count, each = CLI_CROWDS[backend]
    homes = [provision_devnet_home(world, tmp_path / f"home{i}").root for i in range(homes_count)]
    if backend == "postgres":  # one fleet ledger for every home
        url = request.getfixturevalue("postgres_url")
        for home in homes:
            config = json.loads((home / CONFIG_FILE).read_text())
            config["ledger"] = url
            (home / CONFIG_FILE).write_text(json.dumps(config))
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    started = time.monotonic()
    crowd = [
        subprocess.Popen(
            [*CLI, "fetch", route.url, "--json"],
            env={**os.environ, "X402_AGENT_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for home in homes
        for _ in range(each)
    ]
    done = [(child, *child.communicate(timeout=600)) for child in crowd]
    elapsed = time.monotonic() - started

    receipts = []
    for child, out, err in done:
        assert child.returncode == 0, (out, err)
        result = json.loads(out)
        paid = result["receipt"]
        assert result["status"] == 200 and json.loads(result["text"]), result
        assert paid["state"] == "settled" and paid["settlement_tx"], paid
        assert paid["response_body_sha256"] == hashlib.sha256(result["text"].encode()).hexdigest()
        receipts.append(paid)
    paid_count = len(crowd)
    assert len({r["id"] for r in receipts}) == paid_count
    assert len({r["settlement_tx"] for r in receipts}) == paid_count
    moved = token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before
    assert moved == paid_count * route.price_atomic, "the chain's transfers"
    agent = Agent.open(homes[0])
    try:
        rows = agent.receipts(limit=1000)
        assert len(rows) == paid_count and all(
            r.state == PaymentState.SETTLED and r.settlement_tx and r.response_body_sha256 and r.delivered
            for r in rows
        )
        usdc = next(a for a in agent.budget()["assets"] if a["network"] == world.network)
        assert int(usdc["counted_today"]) == moved
    finally:
        agent.close()
    print(f"{backend}: {paid_count} CLI fetches over {homes_count} home(s) in {elapsed:.1f} s")
