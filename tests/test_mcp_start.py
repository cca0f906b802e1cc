"""`x402-agent mcp` over stdio answers the first requests from the record of its last answers
(x402_agent/mcp_start.py): the same answers as the server's, under real `mcp` clients on both
protocol revisions, the server still serving the calls that follow; an out-of-date record is
corrected; a record whose source files changed is not used. (How fast is bench/bench_mcp.py.)"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters, stdio_client
from test_mcp import SERVER

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home
from x402_agent.mcp_start import RECORD_FILE

MODES = ("legacy", "2026-07-28", "auto")


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> Path:
    return provision_devnet_home(world, tmp_path / "home").root


def list_and_call(home: Path, mode: str, errlog: Path) -> tuple[list[dict[str, Any]], bool]:
    """tools/list, then a tool call (the server itself answers it) on a new connection."""
    params = StdioServerParameters(
        command=SERVER[0], args=SERVER[1:], env={**os.environ, "X402_AGENT_HOME": str(home)}
    )

    async def main() -> tuple[list[dict[str, Any]], bool]:
        with errlog.open("a") as err:
            async with Client(stdio_client(params, errlog=err), mode=mode) as client:
                listed = await client.list_tools()
                budget = await client.call_tool("x402_budget", {})
        tools = [t.model_dump(mode="json", by_alias=True) for t in listed.tools]
        return tools, not budget.is_error

    return asyncio.run(main())


def record(home: Path) -> dict[str, Any]:
    saved: dict[str, Any] = json.loads((home / RECORD_FILE).read_text())
    return saved


def tools_list_answers(saved: dict[str, Any]) -> list[str]:
    return [key for key in saved["answers"] if json.loads(key)[1] == "tools/list"]


@pytest.mark.parametrize("mode", MODES)
def test_recorded_answers_are_the_servers(home: Path, tmp_path: Path, mode: str) -> None:
    first, served = list_and_call(home, mode, tmp_path / "err.log")  # answered by the server
    assert served and {t["name"] for t in first} >= {"x402_fetch", "x402_budget"}
    assert tools_list_answers(record(home)), record(home)["answers"].keys()
    again, served = list_and_call(home, mode, tmp_path / "err.log")  # answered from the record
    assert served and again == first
    assert "out of date" not in (tmp_path / "err.log").read_text()


def test_an_out_of_date_record_is_corrected(home: Path, tmp_path: Path) -> None:
    true_tools, _ = list_and_call(home, "legacy", tmp_path / "err.log")
    saved = record(home)
    (key,) = tools_list_answers(saved)
    saved["answers"][key]["tools"][0]["description"] = "an answer from an older version"
    (home / RECORD_FILE).write_text(json.dumps(saved))

    stale, served = list_and_call(home, "legacy", tmp_path / "err.log")
    # The front answered from the record (the host has one answer per request)...
    assert stale[0]["description"] == "an answer from an older version" and served
    assert "out of date" in (tmp_path / "err.log").read_text()
    # ...and the server's own answer replaced it for the next start.
    assert record(home)["answers"][key]["tools"][0]["description"] == true_tools[0]["description"]
    fresh, _ = list_and_call(home, "legacy", tmp_path / "err.log")
    assert fresh == true_tools


def test_a_record_of_changed_sources_is_not_used(home: Path, tmp_path: Path) -> None:
    true_tools, _ = list_and_call(home, "legacy", tmp_path / "err.log")
    saved = record(home)
    (key,) = tools_list_answers(saved)
    saved["answers"][key]["tools"][0]["description"] = "an answer from an older version"
    source = next(path for path in saved["sources"] if path.endswith("mcp_server.py"))
    saved["sources"][source][0] -= 1  # as if the file had been edited since
    (home / RECORD_FILE).write_text(json.dumps(saved))

    listed, served = list_and_call(home, "legacy", tmp_path / "err.log")
    assert listed == true_tools and served
