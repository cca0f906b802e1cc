"""`x402-agent demo` end to end (non-interactive): its final table checked against the chain and
the ledger while the world still runs, then nothing left running."""

from __future__ import annotations

import io
from decimal import Decimal

import httpx
import pytest
from chain_reads import token_balance, transfer_logs
from rich.console import Console

from x402_agent.device.simulator import DeviceSimulator
from x402_agent.device.simulator.workflow import Screen
from x402_agent.devnet.demo import (
    DEMO_DAILY_MAX_RAISED,
    DEMO_SESSION_ALLOWANCE,
    DemoSummary,
    run_demo,
)
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import DEVNET_DAILY_MAX, DEVNET_SESSION_ALLOWANCE
from x402_agent.home import AgentHome
from x402_agent.ledger import PaymentState, open_ledger

PRICES = {"v2/weather": 1_000, "v2/image": 2_000, "v2/report": 10_000}
PAID = 11
SPENT = 1_000 + 2_000 + 9 * 10_000  # weather, image, nine reports


def test_demo_table_matches_chain_and_ledger() -> None:
    seen: dict[str, object] = {}

    def inspect(world: WorldInfo, home: AgentHome, summary: DemoSummary) -> None:
        seen["world"] = world
        account = home.payer_address()
        # the script: weather and an image paid, premium refused, the report paid four times
        # (0.043 spent), then the session allowance; 3 reports then the daily limit (0.073 +
        # 0.01 > 0.08); v2; 2 reports (session 2 at 0.05), then session 2's allowance
        refusals = [c.refused for c in summary.calls if c.refused]
        assert refusals == [
            "per_request_cap_exceeded",
            "session_allowance_exceeded",
            "daily_limit_exceeded",
            "session_allowance_exceeded",
        ]
        assert [c.paid for c in summary.calls].count(True) == PAID
        assert summary.policy_versions == [1, 2]
        ledger = open_ledger(home.config.ledger, home.root)
        try:
            settled = {r.id: r for r in ledger.recent(100) if r.state == PaymentState.SETTLED}
            assert len(ledger.recent(100)) == PAID  # refusals never reserved anything
        finally:
            ledger.close()
        assert len(summary.receipts) == PAID and {r["id"] for r in summary.receipts} == set(settled)
        versions = [r["policy_version"] for r in reversed(summary.receipts)]
        assert versions == [1] * 9 + [2] * 2
        for receipt in summary.receipts:
            record = settled[receipt["id"]]
            price = PRICES[receipt["url"].split("/", 3)[-1]]
            assert int(receipt["amount"]) == record.amount == price
            assert receipt["settlement_tx"] == record.settlement_tx
            assert transfer_logs(world.rpc_url, record.settlement_tx) == [
                (world.usdc.address, _checksum(account), record.pay_to, price)
            ]
        [asset] = summary.budget["assets"]
        assert int(asset["daily_remaining"]) == DEMO_DAILY_MAX_RAISED - SPENT
        [allowance] = summary.budget["session"]["allowance"]
        assert int(allowance["spent"]) == DEMO_SESSION_ALLOWANCE
        # on chain: one top-up of top_up_to, then ten payments out of the hot balance
        hot = token_balance(world.rpc_url, world.usdc.address, account)
        wallet = summary.budget["wallet"]  # the budget tool reads the account's state on chain
        assert int(wallet["hot_balance"]) == hot == DEVNET_SESSION_ALLOWANCE - SPENT
        assert int(wallet["vault_available"]) == DEVNET_DAILY_MAX - DEVNET_SESSION_ALLOWANCE
        assert wallet["account"] == _checksum(account) and wallet["deployed"] is True

    console = Console(file=io.StringIO(), width=220)
    assert run_demo(console=console, inspect=inspect) == 0
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "policy v2 approved on the device" in text
    assert text.count("│ settled │") == PAID
    assert f"{Decimal(DEMO_DAILY_MAX_RAISED - SPENT) / 10**6} of 0.2 USDC" in text
    world = seen["world"]
    assert isinstance(world, WorldInfo)
    for url in (world.rpc_url, world.api_url, world.v1_api_url, str(world.bundler_url)):
        with pytest.raises(httpx.ConnectError):  # nothing left listening
            httpx.get(url, timeout=5)


def _checksum(address: str) -> str:
    from eth_utils.address import to_checksum_address

    return to_checksum_address(address)


def test_interactive_demo_when_the_device_rejects_the_raise(device_simulator: DeviceSimulator) -> None:
    """--interactive: every device screen is put to the person (here a script); a "no" to policy
    v2 keeps v1, and the agent stays refused by the daily limit."""
    shown: list[str] = []

    def answer(screen: Screen) -> bool:
        shown.append(screen.text())
        return "policy v2" not in screen.text()

    def inspect(world: WorldInfo, home: AgentHome, summary: DemoSummary) -> None:
        assert [c.refused for c in summary.calls if c.refused] == [
            "per_request_cap_exceeded",
            "session_allowance_exceeded",
            "daily_limit_exceeded",
            "daily_limit_exceeded",
        ]
        assert summary.policy_versions == [1] and summary.budget["policy_version"] == 1
        assert len(summary.receipts) == PAID - 2

    console = Console(file=io.StringIO(), width=220)
    assert (
        run_demo(interactive=True, console=console, inspect=inspect, answer=answer, device=device_simulator)
        == 0
    )
    assert sum(text.startswith("Receive address") for text in shown) == 1  # enrolled once
    assert sum("policy v1" in text for text in shown) == 1
    assert sum("policy v2" in text for text in shown) == 1
    assert "policy v2 rejected on the device" in console.file.getvalue()  # type: ignore[attr-defined]
    assert device_simulator.confirm == "auto" and device_simulator.honor_debuglink
