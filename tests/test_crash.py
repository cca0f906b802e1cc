"""SIGKILL the agent at each step of a payment, restart it: the ledger reconciles with the
chain, nothing is lost, nothing is counted twice, nothing is paid twice."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import token_balance
from faulty_proxy import FaultyProxy

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import PaymentInFlight
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent

CHILD = Path(__file__).with_name("crash_child.py")


@pytest.fixture
def proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.api_url)
    with ServedApp(faulty, "crash-proxy") as served:
        yield faulty, served.url


def spawn(home: Path, url: str, key: str, step: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(home), url, key, step], stderr=subprocess.PIPE, text=True
    )


def killed(child: subprocess.Popen[str]) -> None:
    code = child.wait(timeout=60)
    assert code == -signal.SIGKILL, child.stderr.read() if child.stderr else code


STEPS = {
    # step: the state a restart finds before reconciling
    "after_reserve": PaymentState.RESERVED,  # nothing signed yet: released, its owner is gone
    "after_mark_sent": PaymentState.SENT,  # signed and recorded, never sent
    "settled_no_answer": PaymentState.SENT,  # the server settled; the answer never arrived
    "before_settle": PaymentState.SENT,  # answer and chain check done, commit not written
}


@pytest.mark.parametrize("step", list(STEPS))
def test_killed_at_each_step_then_restarted(
    world: WorldInfo, tmp_path: Path, proxy: tuple[FaultyProxy, str], step: str
) -> None:
    faulty, base = proxy
    home = provision_devnet_home(world, tmp_path / "home", devnet_policy(world, also_fetch=[base])).root
    route = world.route("GET", "/v2/report")
    url, key = base + route.path, f"crash-{step}"
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    if step == "settled_no_answer":
        faulty.mode = "hold_after_settle"
        child = spawn(home, url, key, "none")
        assert faulty.held.wait(timeout=60), "the paid request never reached the server"
        child.kill()
    else:
        child = spawn(home, url, key, step)
    killed(child)

    agent = Agent.open(home)  # a restart reconciles what the dead process left
    try:
        (left,) = agent.receipts()
        settled_on_chain = step in ("settled_no_answer", "before_settle")
        if step == "after_reserve":
            # The process that made it is gone (its owner lock was freed by the kernel): no
            # clock guess, the reservation is released at once.
            assert left.state == PaymentState.RELEASED
        elif settled_on_chain:
            assert left.state == PaymentState.SETTLED  # the chain shows the nonce used
        else:
            assert left.state == PaymentState.SENT  # valid and unused: stays counted
        usdc = next(a for a in agent.budget()["assets"] if a["network"] == world.network)
        counted = 0 if step == "after_reserve" else route.price_atomic
        assert usdc["counted_today"] == str(counted)

        faulty.mode = "forward"
        again = agent.fetch(url, idempotency_key=key)  # the caller retries with its key
        assert again.payment is not None and again.payment.state == PaymentState.SETTLED
        assert again.replayed == settled_on_chain
        live = [r for r in agent.receipts() if r.state != PaymentState.RELEASED]
        assert len(live) == 1 and live[0].state == PaymentState.SETTLED
        usdc = next(a for a in agent.budget()["assets"] if a["network"] == world.network)
        assert usdc["counted_today"] == str(route.price_atomic)
        assert agent.payer.gate.ledger.unresolved() == []
    finally:
        agent.close()
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic), (
        "paid exactly once"
    )


def test_a_live_process_keeps_its_payment_until_it_dies(
    world: WorldInfo, tmp_path: Path, proxy: tuple[FaultyProxy, str]
) -> None:
    """A process starting while another is mid-payment leaves that payment alone (although
    the chain already shows it settled) and refuses an idempotent retry of it as in progress;
    once the paying process is killed, the retry takes the payment over: paid once."""
    faulty, base = proxy
    home = provision_devnet_home(world, tmp_path / "home", devnet_policy(world, also_fetch=[base])).root
    route = world.route("GET", "/v2/report")
    url, key = base + route.path, "live-owner"
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    faulty.mode = "hold_after_settle"
    child = spawn(home, url, key, "none")
    try:
        assert faulty.held.wait(timeout=60), "the paid request never reached the server"
        agent = Agent.open(home)  # its start-up reconciliation runs now
    finally:
        if not faulty.held.is_set():
            child.kill()
    try:
        (row,) = agent.receipts()
        assert row.state == PaymentState.SENT and row.settlement_tx is None  # not touched
        with pytest.raises(PaymentInFlight) as in_flight:
            agent.fetch(url, idempotency_key=key)
        assert in_flight.value.details["payment_id"] == row.id
        assert agent.payer.gate.ledger.get(row.id) == row

        child.kill()
        killed(child)
        faulty.mode = "forward"
        again = agent.fetch(url, idempotency_key=key)
        assert again.payment is not None and again.payment.id == row.id
        assert again.payment.state == PaymentState.SETTLED
    finally:
        agent.close()
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic), (
        "paid exactly once"
    )
