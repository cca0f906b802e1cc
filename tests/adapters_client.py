"""Load x402-agent's MCP tools into LangChain with langchain-mcp-adapters, call two of them.

Runs in its own environment (.venv-adapters): every langchain-mcp-adapters release requires
mcp<2, while x402-agent's server uses mcp 2.3. The adapters are a client, so they talk to our
server over stdio like any MCP host would.

    .venv-adapters/bin/python adapters_client.py SERVER_PYTHON URL   (env: X402_AGENT_HOME)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from langchain_mcp_adapters.client import MultiServerMCPClient


async def main(server_python: str, url: str) -> None:
    client = MultiServerMCPClient({"x402": {
        "transport": "stdio", "command": server_python, "args": ["-m", "x402_agent.cli", "mcp"],
        "env": {**os.environ},
    }})
    tools = {tool.name: tool for tool in await client.get_tools()}
    budget = await tools["x402_budget"].ainvoke({})
    paid = await tools["x402_fetch"].ainvoke({"url": url})
    print(json.dumps({"tools": sorted(tools), "budget": text_json(budget),
                      "fetch": text_json(paid)}))


def text_json(result: object) -> object:
    """The JSON our tools return, from the adapters' content blocks."""
    blocks = result if isinstance(result, list) else [result]
    text = next(b["text"] if isinstance(b, dict) else str(b) for b in blocks)
    return json.loads(text)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
