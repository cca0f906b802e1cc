"""Load x402-agent's MCP tools into LangChain with langchain-mcp-adapters, call two of them.

Runs in its own environment (.venv-adapters): every langchain-mcp-adapters release requires
mcp<2, while x402-agent's server uses mcp 2.3. The adapters are a client, so they talk to our
server over stdio like any MCP host would.

    .venv-adapters/bin/python adapters_client.py SERVER_PYTHON URL [persistent]
    (env: X402_AGENT_HOME)

``persistent``: the adapters' documented way to keep one MCP session (one agent session, one
session allowance) across calls: ``async with client.session(name) as s: load_mcp_tools(s)``.
``get_tools()`` alone opens a new MCP session for every tool call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools


async def persistent(client: MultiServerMCPClient, url: str) -> None:
    """Buy ``url`` on one session until refused, then once more on a second session."""
    runs = []
    for _ in range(2):
        async with client.session("x402") as session:
            tools = {tool.name: tool for tool in await load_mcp_tools(session)}
            calls = []
            for _ in range(4):
                calls.append(text_json(await tools["x402_fetch"].ainvoke({"url": url})))
                if "reason" in calls[-1]:
                    break
            budget = text_json(await tools["x402_budget"].ainvoke({}))
            runs.append({"calls": calls, "budget": budget})
    print(json.dumps({"runs": runs}))


async def main(server_python: str, url: str, mode: str = "") -> None:
    client = MultiServerMCPClient(
        {
            "x402": {
                "transport": "stdio",
                "command": server_python,
                "args": ["-m", "x402_agent.cli", "mcp"],
                "env": {**os.environ},
            }
        }
    )
    if mode == "persistent":
        return await persistent(client, url)
    tools = {tool.name: tool for tool in await client.get_tools()}
    budget = await tools["x402_budget"].ainvoke({})
    paid = await tools["x402_fetch"].ainvoke({"url": url})
    print(json.dumps({"tools": sorted(tools), "budget": text_json(budget), "fetch": text_json(paid)}))


def text_json(result: object) -> object:
    """The JSON our tools return, from the adapters' content blocks."""
    blocks = result if isinstance(result, list) else [result]
    text = next(b["text"] if isinstance(b, dict) else str(b) for b in blocks)
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a refusal the adapters passed on as the error's text
        return json.loads(text[text.index("{") :])


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
