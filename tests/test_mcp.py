"""`x402-agent mcp` driven by a real MCP client (the `mcp` package), over stdio and streamable
HTTP, against the local world: tools, paying, receipts, refusals, hostile arguments."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from chain_reads import token_balance
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp import types as mcp_types

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.policy import Policy

SERVER = [sys.executable, "-m", "x402_agent.cli", "mcp"]
TOOLS = {"x402_fetch", "x402_quote", "x402_discover", "x402_budget", "x402_receipts"}


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> Path:
    return provision_devnet_home(world, tmp_path / "home").root


@asynccontextmanager
async def stdio_session(home: Path, errlog: Path, **client: Any) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=SERVER[0], args=SERVER[1:], env={**os.environ, "X402_AGENT_HOME": str(home)}
    )
    with errlog.open("w") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, **client) as session,
        ):
            await session.initialize()
            yield session


def structured(result: mcp_types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return result.structured_content


async def call(session: ClientSession, tool: str, **arguments: Any) -> mcp_types.CallToolResult:
    return await session.call_tool(tool, arguments)


async def pay_refuse_and_read(session: ClientSession, world: WorldInfo) -> None:
    """The scenario both transports run: list, pay, read receipts, get refused."""
    listed = await session.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    fetch_tool = next(t for t in listed.tools if t.name == "x402_fetch")
    assert {"url", "max_price", "idempotency_key"} <= set(fetch_tool.input_schema["properties"])
    assert "per_request_cap_exceeded" in (fetch_tool.description or "")
    assert fetch_tool.output_schema is not None

    route = world.route("GET", "/v2/report")  # 0.01 USDC
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    paid = await call(session, "fetch", url=route.url)
    assert not paid.is_error, paid.content
    result = structured(paid)
    assert result["status"] == 200 and result["paid"] is True
    assert result["amount"] == str(route.price_atomic) and result["price"] == "0.01 USDC"
    assert json.loads(result["body"]) and result["truncated"] is False
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)

    receipts = structured(await call(session, "receipts", limit=5))["receipts"]
    assert receipts[0]["id"] == result["receipt_id"] and receipts[0]["state"] == "settled"
    resource = await session.read_resource("x402://receipts/recent")
    rows = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert rows[0]["id"] == result["receipt_id"]
    assert rows[0]["settlement_tx"] == result["settlement_tx"]
    policy = json.loads((await session.read_resource("x402://policy")).contents[0].text)  # type: ignore[union-attr]
    assert policy["version"] == 1 and policy["digest"].startswith("sha256:")

    budget = structured(await call(session, "budget"))
    (allowance,) = budget["session"]["allowance"]
    assert allowance["spent"] == str(route.price_atomic)

    premium = world.route("GET", "/v2/premium")  # 0.25, above the 0.10 cap
    refused = await call(session, "fetch", url=premium.url)
    assert refused.is_error
    error = structured(refused)
    assert error["reason"] == "per_request_cap_exceeded" and error["error"] == "PolicyDenied"
    assert "next_step" in error
    assert error["budget"]["session"]["allowance"][0]["remaining"] == str(500_000 - route.price_atomic)
    assert "per_request_cap_exceeded" in refused.content[0].text  # type: ignore[union-attr]

    quoted = structured(await call(session, "quote", url=premium.url))
    assert quoted["allowed"] is False and quoted["reason"] == "per_request_cap_exceeded"


def test_stdio_lists_pays_reads_receipts_and_refuses(world: WorldInfo, home: Path, tmp_path: Path) -> None:
    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            await pay_refuse_and_read(session, world)

    asyncio.run(main())


HOSTILE = [
    ({"url": "file:///etc/passwd"}, "unsupported_url"),
    ({"url": "gopher://127.0.0.1/x"}, "unsupported_url"),
    ({"url": "javascript:alert(1)"}, "unsupported_url"),
    ({"url": "http:///nohost"}, "unsupported_url"),
    ({"max_price": "-1"}, "invalid_max_price"),
    ({"max_price": "0"}, "invalid_max_price"),
    ({"max_price": "1e30"}, "invalid_max_price"),
    ({"max_price": "99999999999999999999"}, "invalid_max_price"),
    ({"headers": {"X-A": "a\r\nPAYMENT-SIGNATURE: forged"}}, "header_injection"),
    ({"headers": {"X-A\nB": "c"}}, "header_injection"),
    ({"headers": {"PAYMENT-SIGNATURE": "forged"}}, "reserved_header"),
    ({"method": "CONNECT"}, "invalid_method"),
]


def test_hostile_arguments_are_clear_tool_errors(world: WorldInfo, home: Path, tmp_path: Path) -> None:
    url = world.route("GET", "/v2/weather").url
    payer_before = token_balance(world.rpc_url, world.usdc.address, world.payer_address)

    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            for arguments, reason in HOSTILE:
                result = await call(session, "fetch", **{"url": url, **arguments})
                assert result.is_error, arguments
                assert structured(result)["reason"] == reason, (arguments, result)
            # Schema violations are refused before the tool runs.
            for bad in ({"url": url, "headers": ["x"]}, {}, {"url": 5}):
                result = await session.call_tool("fetch", bad)
                assert result.is_error, bad
            bad_limit = await call(session, "receipts", limit=10_000)
            assert bad_limit.is_error
            bad_state = await call(session, "receipts", state="stolen")
            assert bad_state.is_error

    asyncio.run(main())
    assert token_balance(world.rpc_url, world.usdc.address, world.payer_address) == payer_before


def test_each_connection_is_its_own_session(world: WorldInfo, tmp_path: Path) -> None:
    data = devnet_policy(world).model_dump(by_alias=True)
    data["sessions"]["default"]["allowance"] = {
        f"{world.network}/{world.usdc.address}": 15_000
    }  # one 0.01 payment per connection
    home = provision_devnet_home(world, tmp_path / "home", policy=Policy.model_validate(data)).root
    url = world.route("GET", "/v2/report").url

    async def connection() -> tuple[bool, str]:
        async with stdio_session(home, tmp_path / "err.log") as session:
            first = await call(session, "fetch", url=url)
            second = await call(session, "fetch", url=url)
            return first.is_error or False, structured(second).get("reason", "")

    async def main() -> None:
        for _ in range(2):
            first_failed, second_reason = await connection()
            assert not first_failed
            assert second_reason == "session_allowance_exceeded"

    asyncio.run(main())


def test_approval_through_elicitation_or_refused(world: WorldInfo, tmp_path: Path) -> None:
    data = devnet_policy(world).model_dump(by_alias=True)
    for asset in data["assets"]:
        asset["approval_above"] = 5_000  # 0.005: the 0.01 report needs a human
    home = provision_devnet_home(world, tmp_path / "home", policy=Policy.model_validate(data)).root
    url = world.route("GET", "/v2/report").url
    asked: list[str] = []

    async def approve(context: Any, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
        asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={"approve": True})

    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            refused = await call(session, "fetch", url=url)
            assert refused.is_error and structured(refused)["reason"] == "approval_required"
        async with stdio_session(home, tmp_path / "err2.log", elicitation_callback=approve) as session:
            paid = await call(session, "fetch", url=url)
            assert not paid.is_error, paid.content
            assert structured(paid)["paid"] is True

    asyncio.run(main())
    assert len(asked) == 1 and "0.01 USDC" in asked[0]


# ---- streamable HTTP -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(home: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with running_http_server(home, tmp_path / "http.log") as served:
        yield served


@contextmanager
def running_http_server(home: Path, log: Path) -> Iterator[tuple[str, str]]:
    """`x402-agent mcp --transport http` on a free port: (its URL, its bearer token)."""
    port, token = free_port(), "test-token-" + os.urandom(8).hex()
    err = log.open("w")
    proc = subprocess.Popen(
        [*SERVER, "--transport", "http", "--port", str(port)],
        env={**os.environ, "X402_AGENT_HOME": str(home), "X402_AGENT_MCP_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "MCP HTTP server did not start"
                time.sleep(0.05)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.close()


def test_http_requires_the_bearer_token(http_server: tuple[str, str]) -> None:
    url, token = http_server
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer wrong", f"Basic {token}", token):
        extra = {"authorization": auth} if auth else {}
        answer = httpx.post(url, json=hello, headers={**headers, **extra}, timeout=10)
        assert answer.status_code == 401, auth
        assert answer.json()["reason"] == "bearer_token_required"


def test_http_lists_pays_reads_receipts_and_refuses(world: WorldInfo, http_server: tuple[str, str]) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    url, token = http_server

    async def main() -> None:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            await pay_refuse_and_read(session, world)

    asyncio.run(main())


def test_server_refuses_to_start_without_an_approved_policy(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_devnet_home(world, tmp_path / "home").root
    (home / "policy.approval.json").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "x402_agent.cli", "mcp"],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "policy_unsigned" in done.stderr


def test_loopback_refused_when_the_policy_denies_it(world: WorldInfo, tmp_path: Path) -> None:
    """A policy that denies loopback keeps the tool from reaching it at all (the local world's
    API listens on 127.0.0.1; here it is reached as `localhost`, which the policy denies)."""
    data = devnet_policy(world).model_dump(by_alias=True)
    data["hosts"] = {"deny": ["localhost", "*.localhost"]}
    home = provision_devnet_home(world, tmp_path / "home", policy=Policy.model_validate(data)).root
    url = world.route("GET", "/free").url.replace("127.0.0.1", "localhost")

    async def main() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            for tool in ("fetch", "quote"):
                result = await call(session, tool, url=url)
                assert result.is_error and structured(result)["reason"] == "host_denied", result

    asyncio.run(main())
