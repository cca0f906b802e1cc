"""The overall deadline of a fetch, and an async driver that never blocks its event loop.

Real servers on loopback: a server that trickles its answer one byte a second (before any 402,
or after the payment settled, in front of the local world's SDK server and facilitator), the
CLI, and the MCP streamable-HTTP server on a PostgreSQL ledger whose budget lock another
connection holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from chain_reads import token_balance
from faulty_proxy import PAYMENT_HEADERS, FaultyProxy
from test_mcp import running_http_server, structured

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import DeadlineExceeded, PaidNotDelivered, X402AgentError
from x402_agent.home import CONFIG_FILE
from x402_agent.ledger import COUNTED_STATES, PaymentState
from x402_agent.operations import Agent
from x402_agent.policy import PrivateNetwork

TIMEOUT = 3.0  # seconds: the deadline these tests give a fetch
PAID_TIMEOUT = 5.0  # the paid request settles upstream first (about a second at most here)
TRICKLE_INTERVAL = 1.0  # the trickling servers' pace: one byte a second...
TRICKLE_BYTES = 600  # ...for ten minutes, far beyond any deadline used here
# Far above the deadline, far below the trickle: the fetch was cut, not served or stalled.
CUT_WITHIN = 30.0
DRIVERS = ("sync", "async")


async def read_request(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def trickle(receive: Any, send: Any, status: int, headers: dict[str, str], payload: bytes) -> None:
    """Answer the status and headers at once, then ``payload`` one byte a second until the
    client goes away."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        for i in range(len(payload)):
            await send(
                {"type": "http.response.body", "body": payload[i : i + 1], "more_body": i + 1 < len(payload)}
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), TRICKLE_INTERVAL)  # the server's pace
            if gone.is_set():
                return
    finally:
        watcher.cancel()


class TricklingServer:
    """Answers every request 402, its body one byte a second: the challenge never arrives."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_request(receive)
        self.requests += 1
        await trickle(receive, send, 402, {"content-type": "application/json"}, b" " * TRICKLE_BYTES)


class TrickleAfterPayment(FaultyProxy):
    """Honest in front of the world's paid API until a payment arrives; then it lets the
    payment settle upstream and trickles the paid answer (its real headers, the settlement
    included) one byte a second. ``trickling`` off: honest throughout."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.trickling = True
        self.paid_requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_request(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() != "host"}
        paid = any(name in PAYMENT_HEADERS for name in headers)
        self.paid_requests += paid
        status, out_headers, content = await self.forward(scope["method"], scope["path"], headers, body)
        if paid and self.trickling:
            assert "payment-response" in out_headers, "upstream did not settle"
            await trickle(receive, send, status, out_headers, content + b" " * TRICKLE_BYTES)
            return
        await self.answer(send, status, out_headers, content)


def served(app: Any, name: str) -> Iterator[str]:
    with ServedApp(app, name) as server:
        yield server.url


@pytest.fixture
def trickling() -> Iterator[tuple[TricklingServer, str]]:
    app = TricklingServer()
    for url in served(app, "trickling"):
        yield app, url


@pytest.fixture
def paid_trickle(world: WorldInfo) -> Iterator[tuple[TrickleAfterPayment, str]]:
    app = TrickleAfterPayment(world.api_url)
    for url in served(app, "paid-trickle"):
        yield app, url


def home_allowing(world: WorldInfo, root: Path, *origins: str) -> Path:
    """A devnet home whose policy opts in exactly these loopback test servers (and the
    world's own APIs) past the private-network guard."""
    policy = devnet_policy(world)
    allow = (*policy.private_allow, *(f"127.0.0.1:{urlsplit(o).port}" for o in origins))
    policy = policy.model_copy(update={"private_network": PrivateNetwork(allow=allow)})
    return provision_devnet_home(world, root, policy).root


def fetch(agent: Agent, driver: str, url: str, **options: Any) -> Any:
    if driver == "sync":
        return agent.fetch(url, **options)
    return asyncio.run(agent.afetch(url, **options))


@pytest.mark.parametrize("driver", DRIVERS)
def test_trickle_before_the_402_is_cut_at_the_deadline_and_nothing_is_paid(
    world: WorldInfo, tmp_path: Path, trickling: tuple[TricklingServer, str], driver: str
) -> None:
    app, url = trickling
    with Agent.open(home_allowing(world, tmp_path / "home", url)) as agent:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as cut:
            fetch(agent, driver, url + "/slow", timeout_seconds=TIMEOUT)
        elapsed = time.monotonic() - started

        assert TIMEOUT <= elapsed < CUT_WITHIN, elapsed
        assert cut.value.reason == "deadline_exceeded"
        details = cut.value.details
        assert details["deadline_seconds"] == TIMEOUT and details["status"] == 402
        assert 1 <= details["received_bytes"] < TRICKLE_BYTES  # cut mid-trickle
        assert app.requests == 1
        assert agent.receipts() == []  # nothing reserved, signed or paid


def test_cli_fetch_of_a_trickle_ends_at_its_timeout(
    world: WorldInfo, tmp_path: Path, trickling: tuple[TricklingServer, str]
) -> None:
    _, url = trickling
    home = home_allowing(world, tmp_path / "home", url)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "x402_agent.cli", "fetch", url + "/slow", "--timeout", str(TIMEOUT), "--json"],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started

    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)
    assert error["reason"] == "deadline_exceeded", error
    assert error["details"]["deadline_seconds"] == TIMEOUT
    assert elapsed < CUT_WITHIN, elapsed
    with Agent.open(home) as agent:
        assert agent.receipts() == []


def test_tool_adapters_take_the_timeout(
    world: WorldInfo, tmp_path: Path, trickling: tuple[TricklingServer, str]
) -> None:
    """LangChain (its async path, as agent frameworks call it) and MCP pass timeout_seconds
    through; the refusal says what happened and what to do next."""
    from langchain_core.messages import ToolMessage
    from test_mcp import stdio_session

    from x402_agent.langchain_tools import X402Toolkit

    app, url = trickling
    home = home_allowing(world, tmp_path / "home", url)
    toolkit = X402Toolkit.open(home)
    try:
        tools = {t.name: t for t in toolkit.get_tools()}
        for name in ("x402_fetch", "x402_quote"):
            call = {
                "name": name,
                "args": {"url": url, "timeout_seconds": TIMEOUT},
                "id": "c1",
                "type": "tool_call",
            }
            message = asyncio.run(tools[name].ainvoke(call))
            assert isinstance(message, ToolMessage) and message.status == "error"
            refused = json.loads(str(message.content))
            assert refused["reason"] == "deadline_exceeded" and "next_step" in refused
    finally:
        toolkit.close()

    async def over_mcp() -> dict[str, Any]:
        async with stdio_session(home, tmp_path / "mcp.log") as session:
            result = await session.call_tool("fetch", {"url": url, "timeout_seconds": TIMEOUT})
            assert result.is_error
            return structured(result)

    assert asyncio.run(over_mcp())["reason"] == "deadline_exceeded"
    assert app.requests == 3


@pytest.mark.parametrize("bad", [0, 0.5, 601, -1, float("nan"), "10", True])
def test_a_timeout_out_of_bounds_is_refused_before_any_request(
    world: WorldInfo, tmp_path: Path, trickling: tuple[TricklingServer, str], bad: Any
) -> None:
    app, url = trickling
    with (
        Agent.open(home_allowing(world, tmp_path / "home", url)) as agent,
        pytest.raises(X402AgentError) as refused,
    ):
        agent.fetch(url, timeout_seconds=bad)
    assert refused.value.reason == "invalid_timeout"
    assert app.requests == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_trickle_after_payment_is_recorded_with_evidence_and_a_retry_pays_nothing_more(
    world: WorldInfo, tmp_path: Path, paid_trickle: tuple[TrickleAfterPayment, str], driver: str
) -> None:
    proxy, url = paid_trickle
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    with Agent.open(home_allowing(world, tmp_path / "home", url)) as agent:
        started = time.monotonic()
        with pytest.raises(PaidNotDelivered) as cut:
            fetch(agent, driver, url + route.path, idempotency_key="job-1", timeout_seconds=PAID_TIMEOUT)
        assert time.monotonic() - started < CUT_WITHIN

        failure = cut.value
        assert failure.reason == "paid_deadline_exceeded"
        assert "job-1" in failure.message and failure.details["payment_id"] in failure.message
        [row] = agent.receipts()
        assert row.id == failure.details["payment_id"]
        assert row.state == PaymentState.UNKNOWN and row.state in COUNTED_STATES
        evidence = json.loads(row.evidence_json or "{}")
        assert evidence["transport_error"] == "deadline_exceeded", evidence
        assert evidence["deadline_seconds"] == PAID_TIMEOUT
        assert evidence["status"] == 200 and evidence["received_bytes"] >= 1
        assert row.response_status == 200 and not row.delivered
        # The upstream settled it: the money moved once.
        assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)

        proxy.trickling = False
        with contextlib.suppress(X402AgentError):  # the server cannot serve a used payment
            fetch(agent, driver, url + route.path, idempotency_key="job-1", timeout_seconds=PAID_TIMEOUT)

        [again] = agent.receipts()
        assert (again.id, again.nonce) == (row.id, row.nonce)  # no second payment signed
        assert proxy.paid_requests == 2  # the same authorization, resent
        assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


# ---- the async driver never blocks the event loop ---------------------------------------------
def test_a_held_postgres_ledger_lock_does_not_stall_another_mcp_sessions_quote(
    world: WorldInfo, tmp_path: Path, postgres_url: str
) -> None:
    """Session A's paid fetch waits for the budget lock another connection holds; session B's
    quote completes meanwhile. Proven by order: B's answer arrives while A still waits on the
    lock in PostgreSQL, and A pays once the lock is let go."""
    import httpx2
    import psycopg
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from x402_agent.ledger.postgres import LOCK_KEY

    home = provision_devnet_home(world, tmp_path / "home").root
    config = json.loads((home / CONFIG_FILE).read_text())
    config["ledger"] = postgres_url
    (home / CONFIG_FILE).write_text(json.dumps(config))
    route = world.route("GET", "/v2/weather")
    waiting_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"

    async def lock_waiters(observer: psycopg.AsyncConnection[Any]) -> int:
        row = await (await observer.execute(waiting_sql)).fetchone()
        return int(row[0]) if row else 0

    async def main(url: str, token: str) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=auth, timeout=120) as http_a,
            httpx2.AsyncClient(headers=auth, timeout=120) as http_b,
            streamable_http_client(url, http_client=http_a) as (read_a, write_a),
            streamable_http_client(url, http_client=http_b) as (read_b, write_b),
            ClientSession(read_a, write_a) as a,
            ClientSession(read_b, write_b) as b,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as holder,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as observer,
        ):
            await a.initialize()
            await b.initialize()
            for session in (a, b):  # each connection opens its agent session (a ledger write)
                assert not (await session.call_tool("budget", {})).is_error

            await holder.execute("BEGIN")
            await holder.execute(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
            events: list[str] = []
            paying = asyncio.ensure_future(a.call_tool("fetch", {"url": route.url}))
            paying.add_done_callback(lambda _: events.append("A paid"))
            try:
                while await lock_waiters(observer) == 0:  # A reaches the reservation
                    assert not paying.done(), paying.result()
                    await asyncio.sleep(0.05)
                events.append("A waits for the lock")

                quote = await asyncio.wait_for(b.call_tool("quote", {"url": route.url}), 60)
                events.append("B quoted")
                assert structured(quote)["allowed"] is True, structured(quote)
                assert await lock_waiters(observer) >= 1 and not paying.done()
            finally:
                await holder.execute("COMMIT")
                events.append("lock released")
            paid = structured(await asyncio.wait_for(paying, 120))
            assert paid["status"] == 200 and paid["paid"] is True, paid
            assert events == ["A waits for the lock", "B quoted", "lock released", "A paid"]

    with running_http_server(home, tmp_path / "http.log") as (url, token):
        asyncio.run(main(url, token))
