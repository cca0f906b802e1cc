"""A long-lived agent resolves its own payments in flight while it lives.

Start-up reconciliation takes over only rows whose owner process is gone, so a process that
stays up (a Python service, the MCP server) must resolve its own: against the official SDK's
paid server and facilitator (paid_content_server.py), a payment the facilitator refuses (the
signature is for a token domain version the token does not have) is counted, then released by
the same process once the chain's time passes its validBefore, and the budget shows the amount
available again; a row of another live opener of the same ledger is left alone.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chain_reads import rpc, window_past_skew
from paid_content_server import PRICE, WRONG_VERSION, ContentServer
from test_ledger import reserve, send
from test_mcp import stdio_session, structured
from test_paid_content import call, content_policy

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home
from x402_agent.errors import PaymentRejected, PolicyDenied
from x402_agent.ledger import PaymentState, open_ledger
from x402_agent.operations import Agent


@pytest.fixture(scope="module")
def content(world: WorldInfo) -> Iterator[ContentServer]:
    server = ContentServer(world, big=b"small").start()
    yield server
    server.stop()


def refusing_home(world: WorldInfo, content: ContentServer, root: Path, daily_max: int) -> Path:
    """A home whose USDC payments the facilitator refuses (wrong EIP-712 version), with the
    shortest authorization window a policy allows and a daily limit (and session allowance)
    of ``daily_max``."""
    base = content_policy(world, content)
    usdc = base.assets[0].model_copy(
        update={"eip712_version": WRONG_VERSION, "per_request_max": PRICE, "daily_max": daily_max}
    )
    policy = content_policy(
        world,
        content,
        max_authorization_seconds=window_past_skew(world.rpc_url, 10),
        sessions={
            "default": {
                "lifetime_seconds": 3600,
                "allowance": {f"{world.network}/{world.usdc.address}": daily_max},
            }
        },
        assets=[usdc.model_dump(mode="json"), *[a.model_dump(mode="json") for a in base.assets[1:]]],
    )
    return provision_devnet_home(world, root, policy).root


def usdc_of(world: WorldInfo, view: dict[str, Any]) -> dict[str, Any]:
    (found,) = [
        a
        for a in view["assets"]
        if a["network"] == world.network and a["asset"].lower() == world.usdc.address.lower()
    ]
    return found


def chain_time(world: WorldInfo) -> int:
    return int(rpc(world.rpc_url, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)


def test_a_long_lived_agent_releases_its_refused_payment_at_expiry(
    world: WorldInfo, content: ContentServer, tmp_path: Path
) -> None:
    root = refusing_home(world, content, tmp_path / "home", daily_max=2 * PRICE)
    agent = Agent.open(root)
    other = open_ledger("ledger.sqlite3", root)  # another live opener of the same ledger
    try:
        # Its payment: sent, already expired on chain, nonce unused. Were it this agent's, the
        # chain would release it; it is not, and its owner lives: it stays as it is.
        foreign = send(
            other,
            reserve(other, time.time(), PRICE, network=world.network, asset=world.usdc.address),
            nonce="0x" + os.urandom(32).hex(),
            valid_before=chain_time(world) - 1,
        )

        with pytest.raises(PaymentRejected) as refused:
            agent.fetch(content.url + "/refused")
        payment_id = refused.value.details["payment_id"]
        view = usdc_of(world, agent.budget())
        assert view["unknown"] == str(PRICE) and view["daily_remaining"] == "0"
        # Counted: this process is refused for lack of budget...
        with pytest.raises(PolicyDenied) as denied:
            agent.fetch(content.url + "/refused")
        assert denied.value.reason == "daily_limit_exceeded"

        # ...until its own timer, at the authorization's expiry, finds it expired on chain.
        started = time.monotonic()
        assert agent.expiry.wait_clear(timeout=60)
        waited = time.monotonic() - started
        record = agent.payer.gate.ledger.get(payment_id)
        assert record is not None and record.state == PaymentState.RELEASED
        assert record.valid_before is not None and chain_time(world) >= record.valid_before
        view = usdc_of(world, agent.budget())
        assert view["unknown"] == "0" and view["daily_remaining"] == str(PRICE)
        # The same process pays again (refused by the facilitator, not by its own limit).
        with pytest.raises(PaymentRejected):
            agent.fetch(content.url + "/refused")

        kept = other.get(foreign.id)
        assert kept is not None and kept.state == PaymentState.SENT
        assert waited < 30, waited  # the window is 10 s: released at expiry, not at exit
        assert agent.expiry.thread_name in {t.name for t in threading.enumerate()}
    finally:
        agent.close()
        other.close()
    assert agent.expiry.thread_name not in {t.name for t in threading.enumerate()}  # stopped


def test_the_mcp_server_releases_its_refused_payment_without_restart(
    world: WorldInfo, content: ContentServer, tmp_path: Path
) -> None:
    root = refusing_home(world, content, tmp_path / "home", daily_max=PRICE)

    async def main() -> None:
        async with stdio_session(root, tmp_path / "mcp.err") as session:
            refused = await call(session, "fetch", {"url": content.url + "/refused"})
            assert refused.is_error and structured(refused)["reason"] == "payment_rejected"
            budget = structured(await call(session, "budget", {}))
            assert usdc_of(world, budget)["unknown"] == str(PRICE)
            assert usdc_of(world, budget)["daily_remaining"] == "0"
            (allowance,) = budget["session"]["allowance"]
            assert allowance["spent"] == str(PRICE)
            again = await call(session, "fetch", {"url": content.url + "/refused"})
            assert structured(again)["reason"] == "daily_limit_exceeded"

            # The chain's time passes the authorization's validBefore; the server process
            # stays the same.
            (receipt,) = structured(await call(session, "receipts", {}))["receipts"]
            ledger = open_ledger("ledger.sqlite3", root)
            try:
                record = ledger.get(receipt["id"])
            finally:
                ledger.close()
            assert record is not None and record.valid_before is not None
            rpc(world.rpc_url, "evm_increaseTime", max(record.valid_before - chain_time(world), 0) + 1)
            rpc(world.rpc_url, "evm_mine")

            budget = structured(await call(session, "budget", {}))
            assert usdc_of(world, budget)["unknown"] == "0"
            assert usdc_of(world, budget)["daily_remaining"] == str(PRICE)
            (allowance,) = budget["session"]["allowance"]
            assert allowance["spent"] == "0"
            (receipt,) = structured(await call(session, "receipts", {}))["receipts"]
            assert receipt["state"] == "released"
            paying = await call(session, "fetch", {"url": content.url + "/refused"})
            assert structured(paying)["reason"] == "payment_rejected"  # allowed again

    asyncio.run(main())
