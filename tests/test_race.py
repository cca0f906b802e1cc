"""200 payment attempts from 4 processes race for a budget that fits exactly 10 payments,
against the local x402 world: exactly 10 pay, on every ledger backend."""

from __future__ import annotations

import json
import subprocess
import sys
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


def race(home: Path, url: str) -> Counter[str]:
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(home), url,
                                 str(ATTEMPTS_EACH)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
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
def test_exactly_the_budget_pays(world: WorldInfo, tmp_path: Path, backend: str,
                                 request: pytest.FixtureRequest) -> None:
    route = world.route("GET", "/v2/weather")
    home = provision_devnet_home(world, tmp_path / "home",
                                 budget_for(world, route.price_atomic)).root
    if backend == "postgres":
        config = json.loads((home / CONFIG_FILE).read_text())
        config["ledger"] = request.getfixturevalue("postgres_url")
        (home / CONFIG_FILE).write_text(json.dumps(config))
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    results = race(home, route.url)

    assert results == Counter({"paid": FITS,
                               "daily_limit_exceeded": PROCESSES * ATTEMPTS_EACH - FITS})
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (
        FITS * route.price_atomic)
    agent = Agent.open(home)
    try:
        settled = agent.receipts(limit=1000, states=[PaymentState.SETTLED])
        assert len(settled) == FITS and agent.receipts(limit=1000) == settled
    finally:
        agent.close()
