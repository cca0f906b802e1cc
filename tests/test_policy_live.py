"""The policy as a running agent sees it: changes apply at the next payment, approvals ask a
human, sessions and daily limits hold, against the local world."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import PolicyDenied
from x402_agent.flow import ApprovalRequest
from x402_agent.home import AgentHome
from x402_agent.operations import Agent
from x402_agent.policy import Policy
from x402_agent.policy_store import PolicyStore, expectations


def edited(policy: Policy, **changes: object) -> Policy:
    data = policy.model_dump(by_alias=True)
    for asset in data["assets"]:
        asset.update({k: v for k, v in changes.items() if k in asset or k == "approval_above"})
    data.update({k: v for k, v in changes.items() if k in data})
    return Policy.model_validate(data)


def tighten(home: AgentHome, policy: Policy) -> None:
    PolicyStore(home.root, expectations(home)).install_tightening(policy)


def test_tightening_takes_effect_at_the_next_payment(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_devnet_home(world, tmp_path / "home")
    agent = Agent.open(home)
    url = world.route("GET", "/v2/report").url  # 0.01
    try:
        first = agent.fetch(url).payment
        assert first is not None and first.policy_version == 1
        tighten(home, edited(agent.payer.gate.policy, version=2, per_request_max=5_000))
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(url)
        assert refused.value.reason == "per_request_cap_exceeded"
        cheaper = agent.fetch(world.route("GET", "/v2/weather").url).payment
        assert cheaper is not None and cheaper.policy_version == 2
        assert cheaper.policy_digest == agent.payer.gate.policy.digest != first.policy_digest
    finally:
        agent.close()


@pytest.mark.parametrize(
    "answer, reason", [(True, None), (False, "approval_denied"), (None, "approval_required")]
)
def test_payments_above_the_threshold_ask_a_human(
    world: WorldInfo, tmp_path: Path, answer: bool | None, reason: str | None
) -> None:
    asked: list[ApprovalRequest] = []

    def approver(request: ApprovalRequest) -> bool | None:
        asked.append(request)
        return answer

    policy = edited(devnet_policy(world), approval_above=5_000)
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home", policy), approver=approver)
    route = world.route("GET", "/v2/report")
    try:
        assert agent.fetch(world.route("GET", "/v2/weather").url).payment  # below: no question
        assert asked == []
        if reason is None:
            paid = agent.fetch(route.url).payment
            assert paid is not None and paid.amount == route.price_atomic
        else:
            with pytest.raises(PolicyDenied) as refused:
                agent.fetch(route.url)
            assert refused.value.reason == reason
            assert len(agent.receipts()) == 1  # the refused one was never reserved
        (question,) = asked
        assert question.amount == route.price_atomic and question.price == "0.01 USDC"
        assert "0.01 USDC" in question.prompt() and route.url in question.prompt()
    finally:
        agent.close()


def test_async_approver(world: WorldInfo, tmp_path: Path) -> None:
    async def approver(request: ApprovalRequest) -> bool:
        return request.amount <= 10_000

    policy = edited(devnet_policy(world), approval_above=5_000)
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home", policy), approver=approver)
    try:
        outcome = asyncio.run(agent.afetch(world.route("GET", "/v2/report").url))
        assert outcome.payment is not None
        # Under the sync fetch the async approver is run to completion, not refused.
        again = agent.fetch(world.route("GET", "/v2/report").url)
        assert again.payment is not None and again.payment.id != outcome.payment.id
    finally:
        agent.close()


def test_session_allowance_then_daily_limit(world: WorldInfo, tmp_path: Path) -> None:
    base = devnet_policy(world).model_dump(by_alias=True)
    for asset in base["assets"]:
        asset["per_request_max"], asset["daily_max"] = 10_000, 35_000
    base["sessions"]["default"]["allowance"] = {f"{world.network}/{world.usdc.address}": 20_000}
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home", Policy.model_validate(base)))
    url = world.route("GET", "/v2/report").url  # 0.01 each
    try:
        first = agent.open_session()
        for _ in range(2):
            assert agent.fetch(url, session=first).payment
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(url, session=first)
        assert refused.value.reason == "session_allowance_exceeded"
        assert refused.value.details["remaining"]["session"] == "0 USDC"
        second = agent.open_session()
        assert agent.fetch(url, session=second).payment  # 0.03 of 0.035 today
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(url, session=second)
        assert refused.value.reason == "daily_limit_exceeded"
        assert refused.value.details["remaining"]["daily"] == "0.005 USDC"
        view = agent.budget(second)
        assert view["session"]["allowance"][0]["spent"] == "10000"
    finally:
        agent.close()
