"""The LangChain toolkit in an agent loop driven by a scripted chat model (no network model):
tool calls until the model answers; it pays, spends its session allowance and reads the
refusal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from chain_reads import token_balance
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool
from pydantic import Field

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.langchain_tools import X402Toolkit
from x402_agent.policy import Policy
from x402_agent.reasons import NOT_REFUSALS, Reason

SESSION_ALLOWANCE = 25_000  # 0.025 USDC: two 0.01 reports, the third is refused


class ScriptedBuyer(BaseChatModel):
    """Asks for its budget, then buys ``url`` until a tool refuses, then answers with the
    refusal's reason. It decides from the ToolMessages it reads, like a model would."""

    url: str
    bound: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-buyer"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.model_copy(update={"bound": [t.name for t in tools]})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        assert {"x402_fetch", "x402_budget"} <= set(self.bound), "tools were not bound"
        results = [m for m in messages if isinstance(m, ToolMessage)]
        turn = len(results)
        if turn == 0:
            message = AIMessage("", tool_calls=[{"name": "x402_budget", "args": {}, "id": "call-0"}])
        elif results[-1].status == "error":
            refusal = json.loads(str(results[-1].content))
            message = AIMessage(f"Stopped: {refusal['reason']} ({refusal['next_step']})")
        else:
            message = AIMessage(
                "",
                tool_calls=[
                    {
                        "name": "x402_fetch",
                        "args": {"url": self.url, "max_price": "0.02"},
                        "id": f"call-{turn}",
                    }
                ],
            )
        return ChatResult(generations=[ChatGeneration(message=message)])


def run_loop(model: Any, tools: list[BaseTool]) -> list[BaseMessage]:
    by_name = {t.name: t for t in tools}
    messages: list[BaseMessage] = [HumanMessage("Buy reports until you cannot.")]
    for _ in range(10):
        answer = model.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            return messages
        messages.extend(by_name[call["name"]].invoke(call) for call in answer.tool_calls)
    raise AssertionError("the loop did not end")


async def arun_loop(model: Any, tools: list[BaseTool]) -> list[BaseMessage]:
    by_name = {t.name: t for t in tools}
    messages: list[BaseMessage] = [HumanMessage("Buy reports until you cannot.")]
    for _ in range(10):
        answer = await model.ainvoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            return messages
        for call in answer.tool_calls:
            messages.append(await by_name[call["name"]].ainvoke(call))
    raise AssertionError("the loop did not end")


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> Path:
    data = devnet_policy(world).model_dump(by_alias=True)
    data["sessions"]["default"]["allowance"] = {f"{world.network}/{world.usdc.address}": SESSION_ALLOWANCE}
    return provision_devnet_home(world, tmp_path / "home", policy=Policy.model_validate(data)).root


def check_conversation(messages: list[BaseMessage], price: int) -> None:
    results = [m for m in messages if isinstance(m, ToolMessage)]
    budget, *fetches = results
    assert json.loads(str(budget.content))["session"]["allowance"][0]["remaining"] == str(SESSION_ALLOWANCE)
    assert [m.status for m in fetches] == ["success", "success", "error"]
    for paid in fetches[:2]:
        data = json.loads(str(paid.content))
        assert data["paid"] is True and data["amount"] == str(price) and data["receipt_id"]
        assert paid.artifact["receipt_id"] == data["receipt_id"]
    refusal = json.loads(str(fetches[2].content))
    assert refusal["reason"] == "session_allowance_exceeded"
    assert refusal["budget"]["session"]["allowance"][0]["remaining"] == str(SESSION_ALLOWANCE - 2 * price)
    final = messages[-1]
    assert isinstance(final, AIMessage) and "session_allowance_exceeded" in str(final.content)


def test_agent_loop_pays_until_the_session_allowance_refuses(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    toolkit = X402Toolkit.open(home)
    try:
        tools = toolkit.get_tools()
        assert {t.name for t in tools} == {
            "x402_fetch",
            "x402_quote",
            "x402_discover",
            "x402_budget",
            "x402_receipts",
        }
        assert all(t.coroutine is not None and t.func is not None for t in tools)  # type: ignore[attr-defined]
        model = ScriptedBuyer(url=route.url).bind_tools(tools)
        check_conversation(run_loop(model, tools), route.price_atomic)
        assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (
            2 * route.price_atomic
        )

        # A second toolkit on the same agent home is a new session with its own allowance,
        # driven through the async coroutines this time.
        second = X402Toolkit.open(home)
        try:
            assert second.session != toolkit.session
            messages = asyncio.run(
                arun_loop(ScriptedBuyer(url=route.url).bind_tools(second.get_tools()), second.get_tools())
            )
            check_conversation(messages, route.price_atomic)
        finally:
            second.close()
        receipts = {t.name: t for t in tools}["x402_receipts"].invoke({"limit": 10})
        assert len(json.loads(receipts)["receipts"]) == 4
    finally:
        toolkit.close()


def test_hostile_arguments_come_back_as_readable_refusals(world: WorldInfo, home: Path) -> None:
    toolkit = X402Toolkit.open(home)
    try:
        fetch = {t.name: t for t in toolkit.get_tools()}["x402_fetch"]
        for args, reason in (
            ({"url": "file:///etc/passwd"}, "unsupported_url"),
            ({"url": world.api_url, "max_price": "-5"}, "invalid_max_price"),
            ({"url": world.api_url, "headers": {"a": "b\r\nc: d"}}, "header_injection"),
        ):
            message = fetch.invoke({"name": "x402_fetch", "args": args, "id": "c1", "type": "tool_call"})
            assert message.status == "error"
            assert json.loads(message.content)["reason"] == reason
    finally:
        toolkit.close()


def test_adapters_never_import_each_other() -> None:
    import subprocess
    import sys

    code = (
        "import sys, x402_agent.{0}; bad = [m for m in sys.modules if m.split('.')[0] "
        "in {1!r}]; assert not bad, bad"
    )
    for module, forbidden in (
        ("agent_tools", ("mcp", "langchain_core")),
        ("langchain_tools", ("mcp",)),
        ("mcp_server", ("langchain_core",)),
    ):
        done = subprocess.run(
            [sys.executable, "-c", code.format(module, forbidden)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr


def test_langchain_mcp_adapters_load_our_mcp_tools(world: WorldInfo, home: Path) -> None:
    """langchain-mcp-adapters (in its own environment: it needs mcp<2) loads the tools of
    `x402-agent mcp` over stdio and pays with them."""
    root = Path(__file__).resolve().parents[1]
    adapters_python = root / ".venv-adapters" / "bin" / "python"
    assert adapters_python.exists(), "run scripts/setup.sh: it creates .venv-adapters"
    route = world.route("GET", "/v2/weather")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    done = subprocess.run(
        [str(adapters_python), str(root / "tests" / "adapters_client.py"), sys.executable, route.url],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tools"] == ["x402_budget", "x402_discover", "x402_fetch", "x402_quote", "x402_receipts"]
    assert result["fetch"]["paid"] is True and result["fetch"]["payment_state"] == "settled"
    assert result["fetch"]["amount"] == str(route.price_atomic)
    assert result["budget"]["session"]["allowance"][0]["spent"] == "0"
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)


@pytest.fixture
def approval_home(world: WorldInfo, tmp_path: Path) -> Path:
    """Payments above 0.005 USDC need a human approval (the approver's answer)."""
    data = devnet_policy(world).model_dump(by_alias=True)
    for asset in data["assets"]:
        asset["approval_above"] = 5_000
    return provision_devnet_home(world, tmp_path / "approval-home", policy=Policy.model_validate(data)).root


def test_sync_and_async_invoke_approve_with_sync_and_async_approvers(
    world: WorldInfo, approval_home: Path
) -> None:
    """An async approver under the sync invoke runs to its answer (no TypeError); a sync one
    under the async invoke too. Each approves a payment above the approval threshold."""
    route = world.route("GET", "/v2/report")  # 0.01 USDC: above approval_above
    asked: list[str] = []

    def sync_approver(request: Any) -> bool:
        asked.append("sync")
        return True

    async def async_approver(request: Any) -> bool:
        await asyncio.sleep(0)  # a real suspension point, as a UI round trip would have
        asked.append("async")
        return True

    for approver, run_async in ((async_approver, False), (sync_approver, True)):
        toolkit = X402Toolkit.open(approval_home, approver=approver)
        try:
            fetch = {t.name: t for t in toolkit.get_tools()}["x402_fetch"]
            call = {"name": "x402_fetch", "args": {"url": route.url}, "id": "c1", "type": "tool_call"}
            message = asyncio.run(fetch.ainvoke(call)) if run_async else fetch.invoke(call)
            assert message.status == "success", message.content
            assert json.loads(message.content)["paid"] is True
        finally:
            toolkit.close()
    assert asked == ["async", "sync"]

    # Inside a running event loop (a notebook calling the sync tool): still answered.
    async def sync_call_inside_a_loop() -> Any:
        toolkit = X402Toolkit.open(approval_home, approver=async_approver)
        try:
            fetch = {t.name: t for t in toolkit.get_tools()}["x402_fetch"]
            return fetch.invoke({"url": route.url})
        finally:
            toolkit.close()

    assert json.loads(asyncio.run(sync_call_inside_a_loop()))["paid"] is True
    assert asked[-1] == "async"


def test_validation_refusals_metadata_and_a_json_post(world: WorldInfo, home: Path) -> None:
    toolkit = X402Toolkit.open(home)
    try:
        tools = {t.name: t for t in toolkit.get_tools()}
        fetch = tools["x402_fetch"]

        # Bad arguments: the refusal names each field and what is wrong, with a reason.
        message = fetch.invoke(
            {"name": "x402_fetch", "args": {"headers": ["x"]}, "id": "c1", "type": "tool_call"}
        )
        refusal = json.loads(message.content)
        assert message.status == "error" and refusal["reason"] == "invalid_arguments"
        assert refusal["details"]["fields"] == ["headers", "url"]
        assert "url: Field required" in refusal["message"]
        assert "headers: " in refusal["message"]
        assert list(refusal)[:3] == ["reason", "message", "next_step"]

        # A spending refusal: reason, message and next step first, the budget short.
        premium = world.route("GET", "/v2/premium")  # above the per-request cap
        message = fetch.invoke(
            {"name": "x402_fetch", "args": {"url": premium.url}, "id": "c2", "type": "tool_call"}
        )
        refusal = json.loads(message.content)
        assert list(refusal)[:3] == ["reason", "message", "next_step"]
        assert refusal["reason"] == "per_request_cap_exceeded" and refusal["next_step"]
        assert len(message.content) < 1200 and set(refusal["budget"]) <= {"assets", "session"}

        # Tool metadata carries the annotations hosts read (MCP's spelling).
        assert fetch.metadata == {
            "title": "Fetch a URL, paying with x402 if allowed",
            "readOnlyHint": False,
            "destructiveHint": True,
            "idempotentHint": False,
            "openWorldHint": True,
        }
        for name in ("x402_quote", "x402_discover", "x402_budget", "x402_receipts"):
            assert tools[name].metadata is not None
            assert tools[name].metadata["readOnlyHint"] is True, name
            assert tools[name].metadata["destructiveHint"] is False, name
        assert all(r.value in fetch.description for r in Reason if r not in NOT_REFUSALS)

        # A JSON POST: paid, and the server saw exactly the JSON sent (its sha256 echoed).
        route = world.route("POST", "/v2/summarize")
        doc = {"text": "hello paid world", "items": [1, 2, 3], "nested": {"ok": True}}
        for args, sent in (
            ({"json_body": doc}, json.dumps(doc, separators=(",", ":"))),
            ({"body": '{"a": 1}'}, '{"a": 1}'),
        ):
            result = json.loads(asyncio.run(fetch.ainvoke({"url": route.url, "method": "POST", **args})))
            assert result["paid"] is True, result
            assert json.loads(result["body"])["sha256"] == hashlib.sha256(sent.encode()).hexdigest()
        both = fetch.invoke(
            {
                "name": "x402_fetch",
                "args": {"url": route.url, "method": "POST", "body": "x", "json_body": doc},
                "id": "c3",
                "type": "tool_call",
            }
        )
        assert json.loads(both.content)["reason"] == "invalid_arguments"
    finally:
        toolkit.close()


def test_langchain_mcp_adapters_keep_one_session_and_its_allowance(world: WorldInfo, home: Path) -> None:
    """With the adapters' persistent session (``client.session`` + ``load_mcp_tools``) every
    call is one agent session: the allowance (0.025 USDC) pays two 0.01 reports and refuses
    the third; a second persistent session starts with a fresh allowance."""
    root = Path(__file__).resolve().parents[1]
    route = world.route("GET", "/v2/report")
    done = subprocess.run(
        [
            str(root / ".venv-adapters" / "bin" / "python"),
            str(root / "tests" / "adapters_client.py"),
            sys.executable,
            route.url,
            "persistent",
        ],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    for run in runs:
        paid, paid_again, refused = run["calls"]
        assert paid["paid"] is True and paid_again["paid"] is True
        assert refused["reason"] == "session_allowance_exceeded", refused
        assert list(refused)[:3] == ["reason", "message", "next_step"]
        (allowance,) = run["budget"]["session"]["allowance"]
        assert allowance["spent"] == str(2 * route.price_atomic)
    assert runs[0]["budget"]["session"]["id"] != runs[1]["budget"]["session"]["id"]
