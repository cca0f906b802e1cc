"""Paid content is never discarded, and a refused payment is called what it is.

Against a server made only of the official x402 SDK (its FastAPI middleware and an in-process
SDK facilitator settling on the local world's chain, see paid_content_server.py): a 50 MB paid
body is kept whole in the agent home and read through Python, the CLI and an MCP resource; a
redirect after payment is followed without paying again; an idempotent replay returns the
stored body; an MCP call cancelled after its payment left still settles and keeps the body; a
signature the facilitator refuses is reported as refused, stays counted until it expires, then
is released, and the circuit breaker counts it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chain_reads import rpc, token_balance, window_past_skew
from mcp import ClientSession
from mcp import types as mcp_types
from paid_content_server import PRICE, WRONG_VERSION, ContentServer
from test_mcp import stdio_session

from x402_agent.content_store import INLINE_BYTES
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import PaymentRejected
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.policy import Policy

BIG = 50 * 1024 * 1024
CLI = [sys.executable, "-m", "x402_agent.cli"]


@pytest.fixture(scope="module")
def content(world: WorldInfo) -> Iterator[ContentServer]:
    server = ContentServer(world, big=os.urandom(BIG)).start()
    yield server
    server.stop()


def content_policy(world: WorldInfo, server: ContentServer, **changes: Any) -> Policy:
    """The devnet policy, with the content server's loopback port opted in."""
    data = devnet_policy(world).model_dump(mode="json", by_alias=True, exclude_none=True)
    data["private_network"]["allow"].append(f"127.0.0.1:{server.port}")
    return Policy.model_validate({**data, **changes})


@pytest.fixture
def home(world: WorldInfo, content: ContentServer, tmp_path: Path) -> Path:
    return provision_devnet_home(world, tmp_path / "home", content_policy(world, content)).root


@pytest.fixture
def agent(home: Path) -> Iterator[Agent]:
    opened = Agent.open(home)
    yield opened
    opened.close()


def payee_balance(world: WorldInfo, server: ContentServer) -> int:
    return token_balance(world.rpc_url, world.usdc.address, server.pay_to)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, "--home", str(home), *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, "X402_AGENT_HOME": str(home)},
    )


# ---- a 50 MB paid body ---------------------------------------------------------------------
def test_a_paid_50_mb_body_is_kept_whole_and_its_hash_is_the_receipts(
    world: WorldInfo, content: ContentServer, agent: Agent
) -> None:
    before = payee_balance(world, content)

    outcome = agent.fetch(content.url + "/big")

    assert outcome.status == 200 and outcome.payment is not None
    assert outcome.payment.state == PaymentState.SETTLED
    assert payee_balance(world, content) - before == PRICE  # paid once
    assert content.paid_requests("/big") == 1
    stored = outcome.stored
    assert stored is not None and stored.complete and stored.size == BIG
    # The first part is in memory, the whole body in the home, named by the receipt's hash.
    assert outcome.content == content.big[:INLINE_BYTES] and not outcome.complete
    assert outcome.payment.response_body_sha256 == stored.sha256
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == stored.sha256
    assert stored.sha256 == hashlib.sha256(content.big).hexdigest()
    assert outcome.read_body() == content.big
    assert stored.path.is_relative_to(agent.payer.content_store.root)  # type: ignore[union-attr]


def test_the_cli_prints_the_whole_paid_body_and_json_names_its_file(
    world: WorldInfo, content: ContentServer, home: Path
) -> None:
    before = payee_balance(world, content)

    printed = cli(home, "fetch", content.url + "/big")
    assert printed.returncode == 0, printed.stderr.decode()
    assert printed.stdout == content.big

    as_json = cli(home, "fetch", "--json", content.url + "/big")
    assert as_json.returncode == 0, as_json.stderr.decode()
    data = json.loads(as_json.stdout)
    assert data["truncated"] is True and data["body_bytes"] == BIG
    assert base64.b64decode(data["base64"]) == content.big[: len(base64.b64decode(data["base64"]))]
    path = Path(data["body_path"])
    assert path.is_relative_to(home)
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    assert whole == data["body_sha256"] == data["receipt"]["response_body_sha256"]
    assert payee_balance(world, content) - before == 2 * PRICE  # two fetches, each paid once


def test_mcp_returns_the_first_part_and_the_whole_body_as_a_resource(
    world: WorldInfo, content: ContentServer, home: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            templates = await session.list_resource_templates()
            assert any(t.uri_template.startswith("x402://content/") for t in templates.resource_templates)
            result = await call(session, "fetch", {"url": content.url + "/big"})
            assert not result.is_error, result.content
            fetched = result.structured_content
            assert fetched is not None and fetched["paid"] is True
            assert fetched["truncated"] is True and fetched["body_bytes"] == BIG
            assert len(base64.b64decode(fetched["body"])) == 64 * 1024
            uri = fetched["content_uri"]
            assert uri == f"x402://content/{fetched['content_sha256']}"
            # Too large for one read: the refusal says to read parts.
            with pytest.raises(Exception, match="parts"):
                await session.read_resource(uri)
            whole = hashlib.sha256()
            offset = 0
            while offset < BIG:
                part = await read_bytes(session, f"{uri}/{offset}")
                assert part, offset
                whole.update(part)
                offset += len(part)
            assert offset == BIG
            receipts = (await call(session, "receipts", {"limit": 1})).structured_content
            assert receipts is not None
            (receipt,) = receipts["receipts"]
            assert receipt["id"] == fetched["receipt_id"] and receipt["state"] == "settled"
            record = await asyncio.to_thread(receipt_record, home, fetched["receipt_id"])
            assert whole.hexdigest() == record.response_body_sha256 == fetched["content_sha256"]

    asyncio.run(main())


# ---- a redirect after payment ----------------------------------------------------------------
def test_a_paid_same_origin_redirect_is_followed_without_paying_again(
    world: WorldInfo, content: ContentServer, agent: Agent
) -> None:
    before = payee_balance(world, content)
    logged = len(content.log)

    outcome = agent.fetch(content.url + "/moved")

    assert outcome.status == 200, outcome
    assert json.loads(outcome.read_body())["landed"] is True
    assert outcome.payment is not None and outcome.payment.state == PaymentState.SETTLED
    assert payee_balance(world, content) - before == PRICE  # the chain moved it once
    # 402, the paid request answered 302, the target fetched without any payment header.
    assert content.log[logged:] == [("/moved", False), ("/moved", True), ("/landing", False)]
    assert outcome.payment.response_body_sha256 == hashlib.sha256(outcome.read_body()).hexdigest()


def test_a_paid_redirect_to_another_origin_is_reported_not_followed(
    world: WorldInfo, content: ContentServer, agent: Agent
) -> None:
    before = payee_balance(world, content)

    outcome = agent.fetch(content.url + "/away")

    assert outcome.status == 302 and outcome.location == "http://elsewhere.example/content"
    assert outcome.payment is not None and outcome.payment.state == PaymentState.SETTLED
    assert payee_balance(world, content) - before == PRICE


# ---- idempotent replay -----------------------------------------------------------------------
def test_an_idempotent_replay_returns_the_stored_body(
    world: WorldInfo, content: ContentServer, agent: Agent
) -> None:
    before = payee_balance(world, content)
    first = agent.fetch(content.url + "/doc", idempotency_key="doc-1")
    again = agent.fetch(content.url + "/doc", idempotency_key="doc-1")

    assert first.content and json.loads(first.content) == {"doc": "a small paid document"}
    assert again.replayed and again.status == 200
    assert again.content == first.content and again.read_body() == first.read_body()
    assert again.payment is not None and first.payment is not None
    assert again.payment.id == first.payment.id
    assert payee_balance(world, content) - before == PRICE
    assert content.paid_requests("/doc") == 1


# ---- cancelled after paying ------------------------------------------------------------------
def test_a_cancelled_mcp_call_after_payment_settles_and_keeps_the_body(
    world: WorldInfo, content: ContentServer, home: Path, tmp_path: Path
) -> None:
    before = payee_balance(world, content)
    content.slow_entered.clear()
    content.slow_release.clear()

    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            pending = asyncio.create_task(call(session, "fetch", {"url": content.url + "/slow"}))
            # The paid request reached the handler: the payment has left the agent.
            assert await asyncio.to_thread(content.slow_entered.wait, 60)
            pending.cancel()  # the client abandons the call: notifications/cancelled
            with pytest.raises(asyncio.CancelledError):
                await pending
            content.slow_release.set()
            record = await wait_for_receipt(session, home, "settled")
            assert record.response_body_sha256 is not None
            body = await read_bytes(session, f"x402://content/{record.response_body_sha256}")
            assert json.loads(body)["slow"] is True
            assert hashlib.sha256(body).hexdigest() == record.response_body_sha256

    asyncio.run(main())
    assert payee_balance(world, content) - before == PRICE


def test_ctrl_c_after_payment_records_it_and_the_next_process_settles_it(
    world: WorldInfo, content: ContentServer, home: Path
) -> None:
    before = payee_balance(world, content)
    content.slow_entered.clear()
    content.slow_release.clear()
    content.slow_settled.clear()
    main = threading.get_ident()

    def interrupt_once_paid() -> None:
        assert content.slow_entered.wait(60)  # the paid request reached the handler
        signal.pthread_kill(main, signal.SIGINT)

    agent = Agent.open(home)
    interrupter = threading.Thread(target=interrupt_once_paid)
    # Ctrl-C as a terminal delivers it: a suite started as a background job (`cmd &` in a
    # script) inherits SIGINT ignored, and the interrupt would never reach the fetch.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.fetch(content.url + "/slow")
        interrupter.join()
        (record,) = agent.receipts()
        # Recorded at once, counted, with what happened; never left "sent".
        assert record.state == PaymentState.UNKNOWN
        assert json.loads(record.evidence_json or "{}")["cause"] == "KeyboardInterrupt"
    finally:
        signal.signal(signal.SIGINT, previous)
        content.slow_release.set()  # the server settles and answers a closed connection
        agent.close()
    assert content.slow_settled.wait(60)
    # The next process finds the chain used the authorization: settled, paid once.
    agent = Agent.open(home)
    try:
        (record,) = agent.receipts()
        assert record.state == PaymentState.SETTLED
    finally:
        agent.close()
    assert payee_balance(world, content) - before == PRICE


# ---- a payment the facilitator refuses -------------------------------------------------------
def test_a_refused_signature_is_reported_counted_until_expiry_then_released(
    world: WorldInfo, content: ContentServer, tmp_path: Path
) -> None:
    # The policy names a token domain version the token does not have (as the route does): the
    # signature cannot verify and the SDK facilitator refuses it. A short window keeps the
    # chain-time jump below small.
    base = content_policy(world, content)
    usdc = base.assets[0].model_copy(update={"eip712_version": WRONG_VERSION})
    policy = content_policy(
        world,
        content,
        max_authorization_seconds=window_past_skew(world.rpc_url, 10),
        assets=[usdc.model_dump(mode="json"), *[a.model_dump(mode="json") for a in base.assets[1:]]],
    )
    root = provision_devnet_home(world, tmp_path / "home", policy).root
    before = payee_balance(world, content)

    printed = cli(root, "fetch", content.url + "/refused")
    message = printed.stderr.decode()
    assert printed.returncode == 1
    assert "the server refused the payment: " in message and "[payment_rejected]" in message
    assert "paid, but" not in message and "nothing has settled" in message

    agent = Agent.open(root)
    try:
        with pytest.raises(PaymentRejected) as refused:
            agent.fetch(content.url + "/refused")
        error = refused.value
        assert error.reason == "payment_rejected" and error.details["server_reason"]
        assert error.details["server_reason"] in error.message
        record = agent.payer.gate.ledger.get(error.details["payment_id"])
        assert record is not None and record.state == PaymentState.UNKNOWN
        assert error.details["expires_at"] == record.valid_before
        view = agent.budget()
        (usdc_view,) = [
            a
            for a in view["assets"]
            if a["network"] == world.network and a["asset"].lower() == world.usdc.address.lower()
        ]
        assert usdc_view["unknown"] == str(2 * PRICE)  # both refusals stay counted
        assert view["circuit_breaker"]["consecutive_failures"] == 2
        latest = max(r.valid_before or 0 for r in agent.receipts())
    finally:
        agent.close()
    assert payee_balance(world, content) == before

    # Time passes on chain beyond both authorizations' validBefore.
    now = int(rpc(world.rpc_url, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    rpc(world.rpc_url, "evm_increaseTime", max(latest - now + 1, 0))
    rpc(world.rpc_url, "evm_mine")

    agent = Agent.open(root)  # the next process reconciles what the previous ones left
    try:
        states = {str(r.state) for r in agent.receipts()}
        assert states == {"released"}
        view = agent.budget()
        (usdc_view,) = [
            a
            for a in view["assets"]
            if a["network"] == world.network and a["asset"].lower() == world.usdc.address.lower()
        ]
        assert usdc_view["unknown"] == "0" and usdc_view["counted_today"] == "0"
        assert view["circuit_breaker"]["consecutive_failures"] == 2  # still failures
    finally:
        agent.close()
    assert payee_balance(world, content) == before


# ---- helpers ---------------------------------------------------------------------------------
async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
    """Call our tool by its role (fetch, receipts), whatever prefix the server names it with."""
    names = [t.name for t in (await session.list_tools()).tools]
    (name,) = [n for n in names if n == tool or n.endswith("_" + tool)]
    return await session.call_tool(name, arguments)


async def read_bytes(session: ClientSession, uri: str) -> bytes:
    (item,) = (await session.read_resource(uri)).contents
    if isinstance(item, mcp_types.BlobResourceContents):
        return base64.b64decode(item.blob)
    assert isinstance(item, mcp_types.TextResourceContents)
    return item.text.encode()


def receipt_record(home: Path, payment_id: str) -> Any:
    from x402_agent.ledger import open_ledger

    ledger = open_ledger("ledger.sqlite3", home)
    try:
        return ledger.get(payment_id)
    finally:
        ledger.close()


async def wait_for_receipt(session: ClientSession, home: Path, state: str) -> Any:
    """The newest receipt once it reaches ``state`` (the server finishes the paid exchange
    after the cancelled call returned), read through the receipts tool."""
    async with asyncio.timeout(60):
        while True:
            listed = (await call(session, "receipts", {"limit": 1})).structured_content
            assert listed is not None
            rows = listed["receipts"]
            if rows and rows[0]["state"] == state:
                return await asyncio.to_thread(receipt_record, home, rows[0]["id"])
            assert not rows or rows[0]["state"] in ("reserved", "sent"), rows
            await asyncio.sleep(0.05)  # polls the condition, bounded by the timeout above
