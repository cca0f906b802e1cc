"""Pay-and-fetch against the local world: the official x402 servers, facilitators and anvil."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from chain_reads import token_balance, transfer_logs

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import PolicyDenied
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent


@pytest.fixture
def agent(world: WorldInfo, tmp_path: Path) -> Agent:
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home"))
    yield agent
    agent.close()


def test_v2_get_pays_exactly_the_price_and_keeps_a_receipt(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v2/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    outcome = agent.verified(agent.fetch(route.url))  # on-chain check done

    assert outcome.status == 200
    assert json.loads(outcome.content or b"{}")
    assert outcome.confirmed_on_chain
    paid = outcome.payment
    assert paid is not None and paid.state == PaymentState.SETTLED
    assert paid.amount == route.price_atomic and paid.pay_to == route.pay_to
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == paid.amount
    # The receipt binds request, authorization, settlement, response and policy.
    receipt = paid.to_receipt()
    assert receipt["method"] == "GET" and receipt["url"] == route.url
    assert receipt["request_body_sha256"] == hashlib.sha256(b"").hexdigest()
    assert receipt["response_body_sha256"] == hashlib.sha256(outcome.content or b"").hexdigest()
    assert receipt["nonce"].startswith("0x") and len(receipt["nonce"]) == 66
    assert receipt["valid_after"] < receipt["valid_before"]
    assert receipt["requirement"]["payTo"] == route.pay_to
    assert receipt["policy_version"] == agent.payer.gate.policy.version
    assert receipt["policy_digest"] == agent.payer.gate.policy.digest
    assert "payment_header" not in receipt
    logs = transfer_logs(world.rpc_url, paid.settlement_tx)
    assert logs == [(world.usdc.address, world.payer_address, route.pay_to, route.price_atomic)]


def test_v2_post_binds_the_request_body(world: WorldInfo, agent: Agent) -> None:
    route = world.route("POST", "/v2/summarize")
    body = b'{"text": "pay me to summarise this"}'
    outcome = agent.fetch(route.url, method="POST", body=body, headers={"content-type": "application/json"})
    assert outcome.status == 200, outcome.content
    assert outcome.payment is not None
    digest = hashlib.sha256(body).hexdigest()
    assert outcome.payment.request_body_sha256 == digest
    assert digest in (outcome.content or b"").decode()


def test_v1_route_pays_through_the_official_v1_server(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v1/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    outcome = agent.verified(agent.fetch(route.url))  # on-chain check done
    assert outcome.status == 200, outcome.content
    assert outcome.payment is not None and outcome.payment.x402_version == 1
    assert outcome.payment.state == PaymentState.SETTLED and outcome.confirmed_on_chain
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


def test_v1_post_pays(world: WorldInfo, agent: Agent) -> None:
    route = world.route("POST", "/v1/echo")
    outcome = agent.fetch(
        route.url, method="POST", body=b'{"hello": "v1"}', headers={"content-type": "application/json"}
    )
    assert outcome.status == 200, outcome.content
    assert outcome.payment is not None and outcome.payment.amount == route.price_atomic


def test_multi_option_route_pays_the_cheapest_option_the_policy_allows(
    world: WorldInfo, tmp_path: Path
) -> None:
    route = world.route("GET", "/v2/multi")
    allowed = [
        p for p in route.accepts if p.network == world.network and p.token.address == world.usdc.address
    ]
    usdc_only = Agent.open(provision_devnet_home(world, tmp_path / "a"))
    with_eurc = Agent.open(
        provision_devnet_home(world, tmp_path / "b", devnet_policy(world, include_eurc=True))
    )
    try:
        quote = usdc_only.quote(route.url)
        assert quote.allowed and len(quote.options) == len(route.accepts) >= 3
        paid = usdc_only.fetch(route.url).payment
        assert paid is not None
        cheapest_usdc = min(p.amount for p in route.accepts if p.token.symbol == "USDC")
        assert paid.amount == cheapest_usdc
        assert paid.asset in {p.asset for p in route.accepts if p.token.symbol == "USDC"}
        assert allowed  # the route offers main-chain USDC too

        eurc_paid = with_eurc.fetch(route.url).payment
        cheapest = min(route.accepts, key=lambda p: p.amount)
        assert eurc_paid is not None and eurc_paid.amount == cheapest.amount
        assert eurc_paid.asset == cheapest.asset
    finally:
        usdc_only.close()
        with_eurc.close()


def test_binary_resource(world: WorldInfo, agent: Agent) -> None:
    outcome = agent.fetch(world.route("GET", "/v2/image").url)
    assert outcome.status == 200
    assert outcome.content_type == "image/png"
    assert (outcome.content or b"").startswith(b"\x89PNG")


def test_free_route_pays_nothing(world: WorldInfo, agent: Agent) -> None:
    outcome = agent.fetch(world.route("GET", "/free").url)
    assert outcome.status == 200 and outcome.payment is None
    assert agent.receipts() == []


def test_price_above_the_cap_is_refused_before_signing(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v2/premium")
    before = token_balance(world.rpc_url, world.usdc.address, world.payer_address)
    with pytest.raises(PolicyDenied) as refused:
        agent.fetch(route.url)
    assert refused.value.reason == "per_request_cap_exceeded"
    assert agent.receipts() == []
    assert token_balance(world.rpc_url, world.usdc.address, world.payer_address) == before


def test_async_client_pays_concurrently(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v2/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)

    async def many() -> list[int]:
        outcomes = await asyncio.gather(*(agent.afetch(route.url) for _ in range(8)))
        return [o.status for o in outcomes]

    assert asyncio.run(many()) == [200] * 8
    settled = agent.receipts(states=[PaymentState.SETTLED])
    assert len(settled) == 8 and len({r.nonce for r in settled}) == 8
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (8 * route.price_atomic)


def test_idempotency_key_never_pays_twice(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    first = agent.fetch(route.url, idempotency_key="order-42")
    again = agent.fetch(route.url, idempotency_key="order-42")
    assert first.payment is not None and again.payment is not None
    assert again.replayed and again.payment.id == first.payment.id
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


def test_quote_pays_nothing(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, world.payer_address)
    quote = agent.quote(route.url)
    assert quote.payment_required and quote.allowed
    assert quote.chosen is not None and quote.chosen["amount"] == str(route.price_atomic)
    refused = agent.quote(world.route("GET", "/v2/premium").url)
    assert not refused.allowed and refused.reason == "per_request_cap_exceeded"
    assert token_balance(world.rpc_url, world.usdc.address, world.payer_address) == before
    assert agent.receipts() == []


def test_unconfigured_rpc_still_pays_but_cannot_confirm(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_devnet_home(world, tmp_path / "home")
    agent = Agent.open(home)
    agent.payer.rpc_urls = {}
    try:
        outcome = agent.fetch(world.route("GET", "/v2/weather").url)
    finally:
        agent.close()
    assert outcome.status == 200 and not outcome.confirmed_on_chain
    assert outcome.payment is not None and outcome.payment.state == PaymentState.SETTLED
