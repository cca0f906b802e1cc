"""The demo's scripted agent: a real MCP client session against `x402-agent mcp` over stdio.

It behaves like a model that was told "fetch the report until you are refused": it calls the
``fetch`` tool, reads the structured result, and stops at the first refusal, reporting its
reason. Nothing here knows the policy; the server decides.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    session: str  # which MCP connection (the server makes each one a spending session)
    url: str
    paid: bool
    price: str | None = None
    receipt_id: str | None = None
    settlement_tx: str | None = None
    refused: str | None = None  # the refusal's reason code


@asynccontextmanager
async def mcp_session(home: Path, log: Path) -> AsyncIterator[Any]:
    """One stdio connection to ``x402-agent mcp`` serving ``home``; its stderr goes to ``log``."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "x402_agent.cli", "mcp"],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
    )
    with log.open("a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def fetch_until_refused(
    session: Any, name: str, url: str, limit: int, report: Callable[[ToolCall], None]
) -> list[ToolCall]:
    """Call ``x402_fetch`` on ``url`` until a refusal (or ``limit`` calls); each call is reported."""
    calls = []
    for _ in range(limit):
        result = await session.call_tool("x402_fetch", {"url": url})
        data = result.structured_content or {}
        if result.is_error:
            call = ToolCall(name, url, paid=False, refused=str(data.get("reason", "error")))
        else:
            call = ToolCall(
                name,
                url,
                paid=bool(data.get("paid")),
                price=data.get("price"),
                receipt_id=data.get("receipt_id"),
                settlement_tx=data.get("settlement_tx"),
            )
        calls.append(call)
        report(call)
        if call.refused:
            break
    return calls


async def tool(session: Any, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    if result.is_error:
        raise RuntimeError(f"{name} failed: {result.content}")
    data: dict[str, Any] = result.structured_content or {}
    return data
