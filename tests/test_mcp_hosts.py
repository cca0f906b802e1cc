"""`x402-agent mcp` under hosts we did not write: the TypeScript MCP SDK (1.x and 2.x, from npm,
pinned in package.json) over stdio and streamable HTTP, the MCP Inspector CLI, and the Python
`mcp` client on both protocol revisions (2025-11-25 handshake, 2026-07-28 per-request)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp import types as mcp_types
from test_mcp import SERVER, running_http_server

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
TS_CLIENT = ROOT / "tests" / "ts_mcp_client.mjs"
INSPECTOR = ROOT / "node_modules" / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"
TOOLS = {"x402_fetch", "x402_quote", "x402_discover", "x402_budget", "x402_receipts"}
JSON_DOC = {"text": "hello paid world", "items": [1, 2, 3], "nested": {"ok": True}}


def home_with(
    world: WorldInfo, root: Path, *, approval_above: int | None = None, session_allowance: int | None = None
) -> Path:
    data = devnet_policy(world).model_dump(by_alias=True)
    if approval_above is not None:
        for asset in data["assets"]:
            asset["approval_above"] = approval_above
    if session_allowance is not None:
        data["sessions"]["default"]["allowance"] = {
            f"{world.network}/{world.usdc.address}": session_allowance
        }
    return provision_devnet_home(world, root, policy=Policy.model_validate(data)).root


def node() -> str:
    found = shutil.which("node")
    assert found, "node is part of the test environment (scripts/setup.sh)"
    return found


def run_ts_host(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [node(), str(TS_CLIENT)],
        input=json.dumps(spec),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---- the TypeScript SDK ----------------------------------------------------------------------
# /v2/weather (0.001) pays without asking; /v2/report (0.01) is above the approval threshold;
# /v2/premium (0.25) is above the per-request cap; /v2/summarize echoes the posted body.
def ts_calls(world: WorldInfo) -> list[dict[str, Any]]:
    return [
        {"tool": "x402_fetch", "arguments": {"url": world.route("GET", "/v2/weather").url}, "progress": True},
        {"tool": "x402_fetch", "arguments": {"url": world.route("GET", "/v2/premium").url}},
        {"tool": "x402_fetch", "arguments": {"url": world.route("GET", "/v2/report").url}},
        {
            "tool": "x402_fetch",
            "arguments": {
                "url": world.route("POST", "/v2/summarize").url,
                "method": "POST",
                "json": JSON_DOC,
            },
        },
        {"tool": "x402_fetch", "arguments": {"method": "GET"}},  # no url: the SDK rejects it
        {
            "tool": "x402_quote",
            "arguments": {"url": world.route("GET", "/v2/report").url, "method": "DELETE"},
        },
    ]


def check_ts_host(out: dict[str, Any], world: WorldInfo) -> None:
    assert {t["name"] for t in out["tools"]} == TOOLS
    tools = {t["name"]: t for t in out["tools"]}
    assert tools["x402_fetch"]["annotations"]["destructiveHint"] is True
    assert tools["x402_fetch"]["annotations"]["openWorldHint"] is True
    assert tools["x402_quote"]["annotations"]["readOnlyHint"] is True
    assert all(t["title"] and t["hasOutputSchema"] for t in out["tools"])
    weather, premium, report, posted, no_url, delete = out["results"]
    for result in out["results"]:
        assert "thrown" not in result, result  # every answer, refusals too, reaches the host

    assert weather["isError"] is False and weather["structuredContent"]["paid"] is True
    assert weather["structuredContent"]["amount"] == str(world.route("GET", "/v2/weather").price_atomic)
    assert any("<fetched-content" in block.get("text", "") for block in weather["content"])
    assert len(out["progress"]) >= 2, out["progress"]  # the price request, then the payment

    assert premium["isError"] is True
    refused = premium["structuredContent"]
    assert refused["reason"] == "per_request_cap_exceeded" and refused["next_step"]
    assert list(json.loads(premium["content"][0]["text"]))[:3] == ["reason", "message", "next_step"]

    assert len(out["elicitations"]) == 1 and "0.01 USDC" in out["elicitations"][0]
    assert report["isError"] is False and report["structuredContent"]["paid"] is True

    echoed = json.loads(posted["structuredContent"]["body"])
    sent = json.dumps(JSON_DOC, separators=(",", ":")).encode()
    assert posted["structuredContent"]["paid"] is True
    assert echoed["sha256"] == hashlib.sha256(sent).hexdigest()

    assert no_url["isError"] is True
    assert no_url["structuredContent"]["reason"] == "invalid_arguments"
    assert "url" in no_url["structuredContent"]["details"]["fields"]
    assert delete["isError"] is True and delete["structuredContent"]["reason"] == "read_only_method"


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_typescript_sdk_over_stdio(world: WorldInfo, tmp_path: Path, sdk: str) -> None:
    home = home_with(world, tmp_path / "home", approval_above=5_000)
    out = run_ts_host(
        {
            "sdk": sdk,
            "transport": "stdio",
            "command": SERVER[0],
            "args": SERVER[1:],
            "env": {**os.environ, "X402_AGENT_HOME": str(home)},
            "elicit": "accept",
            "calls": ts_calls(world),
        }
    )
    check_ts_host(out, world)
    assert out["server"]["version"] and out["server"]["version"] != "0+unknown"


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_typescript_sdk_over_streamable_http(world: WorldInfo, tmp_path: Path, sdk: str) -> None:
    home = home_with(world, tmp_path / "home", approval_above=5_000)
    with running_http_server(home, tmp_path / "http.log") as (url, token):
        out = run_ts_host(
            {
                "sdk": sdk,
                "transport": "http",
                "url": url,
                "token": token,
                "elicit": "accept",
                "calls": ts_calls(world),
            }
        )
    check_ts_host(out, world)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_typescript_sdk_on_2026_07_28_approves_through_its_handler(
    world: WorldInfo, tmp_path: Path, transport: str
) -> None:
    """The 2.x client pinned to 2026-07-28: no back-channel, the approval is the
    input-required round, answered by the same elicitation handler; a decline is refused."""
    home = home_with(world, tmp_path / "home", approval_above=5_000)
    report = world.route("GET", "/v2/report").url
    base = {
        "sdk": "v2",
        "transport": transport,
        "pin": "2026-07-28",
        "command": SERVER[0],
        "args": SERVER[1:],
        "env": {**os.environ, "X402_AGENT_HOME": str(home)},
        "calls": [{"tool": "x402_fetch", "arguments": {"url": report}}],
    }
    with contextlib.ExitStack() as stack:
        if transport == "http":
            url, token = stack.enter_context(running_http_server(home, tmp_path / "http.log"))
            base.update(url=url, token=token)
        accepted = run_ts_host({**base, "elicit": "accept"})
        declined = run_ts_host({**base, "elicit": "decline"})
    assert len(accepted["elicitations"]) == 1
    assert accepted["results"][0]["structuredContent"]["paid"] is True
    assert declined["results"][0]["structuredContent"]["reason"] == "approval_denied"


def test_mcp_inspector_cli_lists_tools_and_quotes(world: WorldInfo, tmp_path: Path) -> None:
    home = home_with(world, tmp_path / "home")
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    base = [node(), str(INSPECTOR), "--cli", *SERVER]

    def inspector(*args: str) -> dict[str, Any]:
        done = subprocess.run([*base, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        start = done.stdout.index("{")
        parsed: dict[str, Any] = json.loads(done.stdout[start:])
        return parsed

    listed = inspector("--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == TOOLS
    route = world.route("GET", "/v2/report")
    quoted = inspector(
        "--method", "tools/call", "--tool-name", "x402_quote", "--tool-arg", f"url={route.url}"
    )
    assert quoted["structuredContent"]["price"] == "0.01 USDC"
    assert quoted["structuredContent"]["allowed"] is True


# ---- the Python client on both protocol revisions ---------------------------------------------
REVISIONS = {"2025-11-25": "legacy", "2026-07-28": "2026-07-28"}


def python_client(home: Path, revision: str, **callbacks: Any) -> Client:
    params = StdioServerParameters(
        command=SERVER[0], args=SERVER[1:], env={**os.environ, "X402_AGENT_HOME": str(home)}
    )
    return Client(params, mode=REVISIONS[revision], **callbacks)


def data(result: mcp_types.CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return result.structured_content


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_session_allowance_holds_per_connection(world: WorldInfo, tmp_path: Path, revision: str) -> None:
    route = world.route("GET", "/v2/weather")  # 0.001: twenty fit the allowance, not 21
    home = home_with(world, tmp_path / "home", session_allowance=20 * route.price_atomic)

    async def main() -> None:
        async with python_client(home, revision) as client:
            for n in range(20):
                paid = await client.call_tool("x402_fetch", {"url": route.url})
                assert not paid.is_error and data(paid)["paid"] is True, (n, paid.content)
            refused = await client.call_tool("x402_fetch", {"url": route.url})
            assert refused.is_error and data(refused)["reason"] == "session_allowance_exceeded"
            budget = data(await client.call_tool("x402_budget", {}))
            assert budget["session"]["allowance"][0]["remaining"] == "0"
        async with python_client(home, revision) as client:
            again = await client.call_tool("x402_fetch", {"url": route.url})
            assert not again.is_error and data(again)["paid"] is True

    asyncio.run(main())


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_approvals_on_both_revisions(world: WorldInfo, tmp_path: Path, revision: str) -> None:
    home = home_with(world, tmp_path / "home", approval_above=5_000)
    url = world.route("GET", "/v2/report").url
    asked: list[str] = []

    def answering(approve: bool) -> Any:
        async def callback(context: Any, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
            asked.append(params.message)
            if approve:
                return mcp_types.ElicitResult(action="accept", content={"approve": True})
            return mcp_types.ElicitResult(action="decline")

        return callback

    async def main() -> None:
        async with python_client(home, revision) as client:
            refused = await client.call_tool("x402_fetch", {"url": url})
            assert data(refused)["reason"] == "approval_required", refused
        async with python_client(home, revision, elicitation_callback=answering(False)) as c:
            denied = await c.call_tool("x402_fetch", {"url": url})
            assert data(denied)["reason"] == "approval_denied", denied
        async with python_client(home, revision, elicitation_callback=answering(True)) as c:
            paid = await c.call_tool("x402_fetch", {"url": url})
            assert not paid.is_error and data(paid)["paid"] is True, paid

    asyncio.run(main())
    assert len(asked) == 2 and all("0.01 USDC" in message for message in asked)


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_json_bodies_survive_and_images_are_content(world: WorldInfo, tmp_path: Path, revision: str) -> None:
    home = home_with(world, tmp_path / "home")
    summarize = world.route("POST", "/v2/summarize").url
    json_text = '{"a": 1, "b": [true, null]}'  # a JSON-looking string the SDK must not coerce

    async def main() -> None:
        async with python_client(home, revision) as client:
            for arguments, sent in (
                ({"json": JSON_DOC}, json.dumps(JSON_DOC, separators=(",", ":"))),
                ({"body": json_text}, json_text),
            ):
                posted = await client.call_tool(
                    "x402_fetch", {"url": summarize, "method": "POST", **arguments}
                )
                assert not posted.is_error, posted.content
                echoed = json.loads(data(posted)["body"])
                assert data(posted)["paid"] is True
                assert echoed["sha256"] == hashlib.sha256(sent.encode()).hexdigest()
            image = await client.call_tool("x402_fetch", {"url": world.route("GET", "/v2/image").url})
            assert data(image)["body_encoding"] == "content" and data(image)["body"] == ""
            (block,) = [b for b in image.content if isinstance(b, mcp_types.ImageContent)]
            assert block.mime_type == "image/png" and block.data
            old_name = await client.call_tool("fetch", {"url": world.route("GET", "/free").url})
            assert not old_name.is_error and data(old_name)["paid"] is False

    asyncio.run(main())


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_progress_and_logging_reach_python_hosts(world: WorldInfo, tmp_path: Path, revision: str) -> None:
    home = home_with(world, tmp_path / "home")
    route = world.route("GET", "/v2/weather")
    logged: list[str] = []
    steps: list[str | None] = []

    async def on_log(params: mcp_types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(message)

    async def main() -> None:
        # On 2026-07-28 a host opts in to log messages per request (log_level).
        async with python_client(home, revision, logging_callback=on_log, log_level="info") as client:
            paid = await client.call_tool("x402_fetch", {"url": route.url}, progress_callback=on_progress)
            assert data(paid)["paid"] is True
            refused = await client.call_tool("x402_fetch", {"url": world.route("GET", "/v2/premium").url})
            assert data(refused)["reason"] == "per_request_cap_exceeded"

    asyncio.run(main())
    assert any(step and step.startswith("requesting GET") for step in steps), steps
    assert any(step and step.startswith("payment sent") for step in steps), steps
    assert any(line.startswith("paid 0.001 USDC") for line in logged), logged
    assert any("per_request_cap_exceeded" in line for line in logged), logged


def test_an_expired_session_is_renewed_not_stuck(world: WorldInfo, tmp_path: Path) -> None:
    """A host that outlives the session lifetime is told (session_expired, with a next step)
    and its next call runs in a new session with a fresh allowance."""
    lifetime = 2
    policy_data = devnet_policy(world).model_dump(by_alias=True)
    policy_data["sessions"]["default"]["lifetime_seconds"] = lifetime
    home = provision_devnet_home(world, tmp_path / "home", policy=Policy.model_validate(policy_data)).root
    url = world.route("GET", "/v2/weather").url

    async def main() -> None:
        async with python_client(home, "2025-11-25") as client:
            first = await client.call_tool("x402_fetch", {"url": url})
            first_session = data(await client.call_tool("x402_budget", {}))["session"]["id"]
            assert data(first)["paid"] is True
            # The condition under test is the passing of wall-clock time itself.
            await asyncio.sleep(lifetime + 0.2)
            expired = await client.call_tool("x402_fetch", {"url": url})
            assert data(expired)["reason"] == "session_expired", expired
            assert "new session" in data(expired)["next_step"]
            renewed = await client.call_tool("x402_fetch", {"url": url})
            assert data(renewed)["paid"] is True, renewed
            session = data(await client.call_tool("x402_budget", {}))["session"]
            assert session["id"] != first_session

    asyncio.run(main())


@pytest.mark.parametrize("revision", sorted(REVISIONS))
def test_http_sessions_follow_the_host(world: WorldInfo, tmp_path: Path, revision: str) -> None:
    """Streamable HTTP: a 2025-11-25 connection is its HTTP session; 2026-07-28 has none, so
    calls with one bearer token share a session; a session the host names in `_meta` is its
    own, shared by every connection that names it."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    route = world.route("GET", "/v2/weather")
    home = home_with(world, tmp_path / "home", session_allowance=route.price_atomic)
    named = {"x402-agent/session": "host-chat-42"}

    async def fetch_on_new_connection(url: str, token: str, meta: Any = None) -> str:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http), mode=REVISIONS[revision]) as client,
        ):
            result = await client.call_tool("x402_fetch", {"url": route.url}, meta=meta)
            return "paid" if data(result).get("paid") else str(data(result)["reason"])

    async def main(url: str, token: str) -> None:
        assert await fetch_on_new_connection(url, token) == "paid"
        second = await fetch_on_new_connection(url, token)
        expected = "paid" if revision == "2025-11-25" else "session_allowance_exceeded"
        assert second == expected
        assert await fetch_on_new_connection(url, token, named) == "paid"
        assert await fetch_on_new_connection(url, token, named) == "session_allowance_exceeded"

    with running_http_server(home, tmp_path / "http.log") as (url, token):
        asyncio.run(main(url, token))
