"""Paid but not delivered, against the real SDK server and facilitator behind a faulty proxy.

The proxy forwards to the local world's paid API and misbehaves in the ways a real deployment
can: it lets the payment settle and then answers 500, or it swallows the payment and answers
402 again (keeping the signed authorization, as a hostile middlebox would).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chain_reads import token_balance
from faulty_proxy import FaultyProxy

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import PaidNotDelivered, PaymentRejected
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent


@pytest.fixture
def proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.api_url)
    with ServedApp(faulty, "faulty-proxy") as served:
        yield faulty, served.url


@pytest.fixture
def agent(world: WorldInfo, tmp_path: Path, proxy: tuple[FaultyProxy, str]) -> Iterator[Agent]:
    policy = devnet_policy(world, also_fetch=[proxy[1]])  # the proxy's own loopback port too
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home", policy))
    yield agent
    agent.close()


def test_server_error_after_settlement_is_paid_not_delivered(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, url = proxy
    faulty.mode = "fail_after_settle"
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    with pytest.raises(PaidNotDelivered) as failed:
        agent.fetch(url + route.path)

    record = agent.payer.gate.ledger.get(failed.value.details["payment_id"])
    assert record is not None
    # The chain proves the nonce was used: it is settled (counted), with the evidence kept.
    assert record.state == PaymentState.SETTLED
    assert record.response_status == 500
    evidence = record.to_receipt()["evidence"]
    assert evidence["delivered"] is False and evidence["status"] == 500
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


def test_payment_swallowed_stays_counted_and_a_retry_resends_the_same_authorization(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, url = proxy
    faulty.mode = "swallow"
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    # The server saw no payment and asked again: a refusal, not a payment (nothing moved).
    with pytest.raises(PaymentRejected) as failed:
        agent.fetch(url + route.path, idempotency_key="job-1")
    record = agent.payer.gate.ledger.get(failed.value.details["payment_id"])
    assert record is not None and record.state == PaymentState.UNKNOWN  # still counted
    assert record.to_receipt()["evidence"]["status"] == 402
    assert failed.value.details["expires_at"] == record.valid_before
    assert len(faulty.captured) == 1

    faulty.mode = "forward"
    outcome = agent.fetch(url + route.path, idempotency_key="job-1")

    assert outcome.status == 200 and outcome.payment is not None
    assert outcome.payment.id == record.id and outcome.payment.nonce == record.nonce
    assert outcome.payment.state == PaymentState.SETTLED
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


def test_authorization_settled_behind_our_back_is_recognised_not_repaid(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, url = proxy
    faulty.mode = "swallow"
    route = world.route("GET", "/v2/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    with pytest.raises(PaymentRejected):
        agent.fetch(url + route.path, idempotency_key="job-2")
    # The middlebox cashes the captured authorization itself.
    name, value = faulty.captured[0]
    assert httpx.get(world.api_url + route.path, headers={name: value}).status_code == 200

    with pytest.raises(PaidNotDelivered) as again:
        agent.fetch(url + route.path, idempotency_key="job-2")

    assert again.value.details["state"] == "settled"
    (record,) = agent.receipts()
    assert record.state == PaymentState.SETTLED
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


def test_expired_unused_authorization_is_released_and_the_key_can_pay_once(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, url = proxy
    faulty.mode = "swallow"
    route = world.route("GET", "/v2/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    # Our clock an hour slow: the authorization is already past validBefore on chain, so the
    # chain can prove it will never settle.
    agent.payer.clock = lambda: time.time() - 3600
    with pytest.raises(PaymentRejected) as failed:
        agent.fetch(url + route.path, idempotency_key="job-3")
    assert failed.value.details["state"] == "released"
    assert "nothing was paid" in failed.value.message

    agent.payer.clock = time.time
    faulty.mode = "forward"
    outcome = agent.fetch(url + route.path, idempotency_key="job-3")
    assert outcome.status == 200 and outcome.payment is not None
    states = sorted(str(r.state) for r in agent.receipts())
    assert states == ["released", "settled"]
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)
