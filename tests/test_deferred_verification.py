"""Settlement verification off the critical path, against the local world.

The body comes back once the server's settlement header matches what was signed; the agent's
verifier then reads the named transaction's receipt. A server that names a transaction which
did not move the payment is caught after the fact: the payment stays counted and is reported
as a mismatch, the circuit breaker opens, and nothing more is paid.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from faulty_proxy import FaultyProxy

from x402_agent.agent_tools import AgentTools, ToolRefusal
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import PolicyDenied
from x402_agent.ledger import PaymentState, SQLiteLedger, Verification
from x402_agent.operations import Agent
from x402_agent.policy import PrivateNetwork

CLI = [sys.executable, "-m", "x402_agent.cli"]
CRASH_CHILD = Path(__file__).with_name("crash_child.py")


@pytest.fixture
def proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.api_url)
    with ServedApp(faulty, "claiming-proxy") as served:
        yield faulty, served.url


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path, proxy: tuple[FaultyProxy, str]) -> Path:
    """A devnet home whose policy opts the proxy's loopback port in past the network guard."""
    policy = devnet_policy(world)
    allow = (*policy.private_allow, f"127.0.0.1:{urlsplit(proxy[1]).port}")
    policy = policy.model_copy(update={"private_network": PrivateNetwork(allow=allow)})
    return provision_devnet_home(world, tmp_path / "home", policy).root


@pytest.fixture
def agent(home: Path) -> Iterator[Agent]:
    agent = Agent.open(home)
    yield agent
    agent.close()


def hold_checks(agent: Agent) -> threading.Event:
    """Instrumentation: the verifier's receipt check waits for the returned event, so a test
    can look at the ledger between the body's return and the check."""
    verifier = agent.verifier
    assert verifier is not None
    release, original = threading.Event(), verifier.check

    def gated(records: Any) -> Any:
        assert release.wait(60), "the test never released the check"
        return original(records)

    verifier.check = gated  # type: ignore[method-assign]
    return release


def counted_today(agent: Agent) -> int:
    return int(agent.budget()["assets"][0]["counted_today"])


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_body_returns_before_the_receipt_is_checked(world: WorldInfo, agent: Agent, driver: str) -> None:
    route = world.route("GET", "/v2/weather")
    release = hold_checks(agent)

    outcome = agent.fetch(route.url) if driver == "sync" else asyncio.run(agent.afetch(route.url))

    # The body is here while the receipt check has not run: committed settled by the server's
    # header, verification pending, counted.
    assert outcome.status == 200 and json.loads(outcome.content or b"{}")
    paid = outcome.payment
    assert paid is not None and paid.state == PaymentState.SETTLED
    assert paid.verification == Verification.PENDING and not outcome.confirmed_on_chain
    row = agent.payer.gate.ledger.get(paid.id)
    assert row is not None and row.verification == Verification.PENDING
    assert [r.id for r in agent.payer.gate.ledger.unverified()] == [paid.id]
    assert counted_today(agent) == route.price_atomic

    release.set()
    checked = agent.verified(outcome, timeout=60)

    assert checked.payment is not None and checked.payment.verification == Verification.VERIFIED
    assert checked.confirmed_on_chain
    assert agent.payer.gate.ledger.unverified() == []
    assert agent.take_alerts() == []
    assert counted_today(agent) == route.price_atomic


def _claims(world: WorldInfo, agent: Agent, claim: str) -> str:
    """A transaction hash that did not move the next payment."""
    if claim == "tx_that_does_not_exist":
        assert agent.verifier is not None
        agent.verifier.receipt_grace_seconds = 0  # no wait for a receipt that may yet appear
        return "0x" + secrets.token_hex(32)
    # A real settlement of the same payer to the same payee, for the same price: only the
    # nonce in its logs tells it apart.
    honest = agent.verified(agent.fetch(world.route("GET", "/v2/weather").url), timeout=60)
    assert honest.payment is not None and honest.payment.verification == Verification.VERIFIED
    assert honest.payment.settlement_tx is not None
    return honest.payment.settlement_tx


@pytest.mark.parametrize("claim", ["tx_of_another_payment", "tx_that_does_not_exist"])
def test_false_settlement_claim_opens_the_breaker(
    world: WorldInfo, agent: Agent, home: Path, proxy: tuple[FaultyProxy, str], claim: str
) -> None:
    faulty, base = proxy
    route = world.route("GET", "/v2/weather")
    faulty.claimed_tx = _claims(world, agent, claim)
    faulty.mode = "claim_settled"
    counted_before = counted_today(agent)

    outcome = agent.fetch(base + route.path)

    # The header matches what was signed, so the body is returned at once...
    assert outcome.status == 200 and outcome.content == b"content that was never paid for"
    assert outcome.payment is not None and len(faulty.captured) == 1
    # ...and the chain check finds the lie afterwards.
    checked = agent.verified(outcome, timeout=60)
    paid = checked.payment
    assert paid is not None and paid.verification == Verification.MISMATCH
    assert paid.state == PaymentState.SETTLED and not checked.confirmed_on_chain
    mismatch = json.loads(paid.evidence_json or "{}")["mismatch"]
    expected = "settlement_not_ours" if claim == "tx_of_another_payment" else "settlement_tx_not_found"
    assert mismatch["reason"] == expected and mismatch["tx"] == faulty.claimed_tx
    # Stays counted (the server holds a valid authorization it may still settle).
    assert counted_today(agent) == counted_before + route.price_atomic
    # Reported: the breaker is open and names the payment; the alert is given once.
    breaker = agent.budget()["circuit_breaker"]
    assert breaker["open"] and breaker["settlement_mismatch"] == paid.id
    [alert] = agent.take_alerts()
    assert alert["payment_id"] == paid.id and alert["reason"] == expected
    assert agent.take_alerts() == []
    receipt = next(r for r in agent.receipts() if r.id == paid.id).to_receipt()
    assert receipt["verification"] == "mismatch"

    # Further payments are refused, by this agent, a new one on the same ledger, and its tools.
    signed = len(agent.receipts())
    with pytest.raises(PolicyDenied) as refused:
        agent.fetch(route.url)
    assert refused.value.reason == "circuit_open" and paid.id in refused.value.message
    with Agent.open(home) as other:
        with pytest.raises(PolicyDenied):
            other.fetch(route.url)
        tools = AgentTools(other)
        with pytest.raises(ToolRefusal) as tool_refusal:
            tools.fetch(route.url)
        assert tool_refusal.value.reason == "circuit_open"
        assert tools.budget().circuit_breaker.settlement_mismatch == paid.id
    assert len(agent.receipts()) == signed

    # A human resets the breaker: paying resumes, the mismatch stays on the receipt.
    agent.reset_breaker()
    again = agent.verified(agent.fetch(route.url), timeout=60)
    assert again.payment is not None and again.payment.verification == Verification.VERIFIED
    assert agent.payer.gate.ledger.get(paid.id).verification == Verification.MISMATCH  # type: ignore[union-attr]


def test_the_next_tool_call_reports_a_mismatch(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    faulty.claimed_tx = _claims(world, agent, "tx_of_another_payment")
    faulty.mode = "claim_settled"
    tools = AgentTools(agent)
    release = hold_checks(agent)

    lied = tools.fetch(base + world.route("GET", "/v2/weather").path)
    assert lied.paid and lied.verification == "pending" and lied.alerts == []
    release.set()
    assert agent.verifier is not None and agent.verifier.wait_idle(60)

    free = tools.fetch(world.route("GET", "/free").url)
    [alert] = free.alerts
    assert alert["payment_id"] == lied.receipt_id and alert["reason"] == "settlement_not_ours"
    assert alert["next_step"]


def _ledger(home: Path) -> SQLiteLedger:
    return SQLiteLedger(home / "ledger.sqlite3")


def test_cli_fetch_then_exit_leaves_nothing_unverified(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/weather")
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    done = subprocess.run(
        [*CLI, "fetch", route.url, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["confirmed_on_chain"] and printed["receipt"]["verification"] == "verified"

    ledger = _ledger(home)
    try:
        assert ledger.unverified() == []
        [row] = ledger.recent()
        assert row.verification == Verification.VERIFIED and row.state == PaymentState.SETTLED
    finally:
        ledger.close()


def test_a_process_killed_before_the_check_is_verified_at_the_next_open(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/weather")
    child = subprocess.run(
        [sys.executable, str(CRASH_CHILD), str(home), route.url, "job-1", "after_settle"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr  # SIGKILL right after the settled commit

    ledger = _ledger(home)
    try:
        [left] = ledger.unverified()
        assert left.state == PaymentState.SETTLED  # counted meanwhile
    finally:
        ledger.close()

    with Agent.open(home) as agent:
        row = agent.payer.gate.ledger.get(left.id)
        assert row is not None and row.verification == Verification.VERIFIED
        assert agent.payer.gate.ledger.unverified() == []
