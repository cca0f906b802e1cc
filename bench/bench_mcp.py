"""MCP costs, against PyPI `x402-mcp` in the same run, with the Python `mcp` client (both protocol
revisions) and the TypeScript MCP SDK clients (1.x and 2.x, pinned in package.json):

- cold start: spawn of the server process to the first `tools/list` answer, `x402-agent mcp`
  (a ready devnet agent home) and `x402-mcp` (a throwaway key) alternately, after one untimed
  start of each per client (the first start of ours after an install or a change of code
  records its answers: x402_agent/mcp_start.py; the bench prints that first start apart);
- per-call overhead: `x402_budget` through MCP stdio minus the same operation in-process.

    .venv/bin/python bench/bench_mcp.py [--runs 10] [--calls 50]

x402-mcp is installed on first run into .venv-bench from bench/requirements-x402-mcp.txt (its
dependencies are not ours). The local world (anvil, USDC, the paid API) is started for the home.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, "-m", "x402_agent.cli", "mcp"]
PEER_ENV = ROOT / ".venv-bench"
PEER_REQUIREMENTS = ROOT / "bench" / "requirements-x402-mcp.txt"
TS_BENCH = ROOT / "bench" / "ts_mcp_bench.mjs"
PEER = "x402-mcp 0.5.0"
OURS = "x402-agent mcp"
# The Python client's default (it probes server/discover, then 2026-07-28 or the handshake) and the
# 2025-11-25 initialize handshake.
PY_MODES = {"auto": "auto", "2025-11-25": "legacy"}


def peer_server() -> list[str]:
    """The x402-mcp command, its environment created (or updated) from the pinned list."""
    stamp = PEER_ENV / ".installed"
    if not stamp.exists() or PEER_REQUIREMENTS.stat().st_mtime > stamp.stat().st_mtime:
        if not (PEER_ENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
        subprocess.run(
            [
                str(PEER_ENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(PEER_REQUIREMENTS),
            ],
            check=True,
        )
        stamp.touch()
    return [str(PEER_ENV / "bin" / "x402-mcp")]


def server_env(home: Path) -> dict[str, str]:
    # The peer reads a private key from its environment: a throwaway one, never funded.
    return {**os.environ, "X402_AGENT_HOME": str(home), "EVM_PRIVATE_KEY": "0x" + secrets.token_hex(32)}


async def py_cold_start(command: list[str], env: dict[str, str], mode: str) -> float:
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    with open(os.devnull, "w") as err:
        started = time.perf_counter()
        async with Client(stdio_client(params, errlog=err), mode=mode) as client:
            listed = await client.list_tools()
            elapsed = time.perf_counter() - started
    assert listed.tools
    return elapsed * 1000


def py_cold_starts(home: Path, peer: list[str], runs: int, mode: str) -> dict[str, list[float]]:
    env = server_env(home)
    times: dict[str, list[float]] = {OURS: [], PEER: []}

    async def main() -> None:
        for command in (SERVER, peer):  # untimed: files in the OS cache, our start recorded
            await py_cold_start(command, env, mode)
        for _ in range(runs):  # alternate, so drift hits both alike
            times[OURS].append(await py_cold_start(SERVER, env, mode))
            times[PEER].append(await py_cold_start(peer, env, mode))

    asyncio.run(main())
    return times


def ts_bench(sdk: str, home: Path, peer: list[str], runs: int, calls: int) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is part of the environment (scripts/setup.sh)"
    env = server_env(home)
    spec = {
        "sdk": sdk,
        "runs": runs,
        "servers": [
            {"name": OURS, "command": SERVER[0], "args": SERVER[1:], "env": env},
            {"name": PEER, "command": peer[0], "args": peer[1:], "env": env},
        ],
        "call": {"server": 0, "tool": "x402_budget", "arguments": {}, "count": calls},
    }
    done = subprocess.run(
        [node, str(TS_BENCH)],
        input=json.dumps(spec),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def in_process_budget(home: Path, calls: int) -> list[float]:
    from x402_agent.agent_tools import AgentTools

    tools = AgentTools.open(home)
    try:
        await tools.abudget()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            await tools.abudget()
            times.append((time.perf_counter() - t) * 1000)
        return times
    finally:
        tools.close()


async def py_per_call(home: Path, calls: int, mode: str) -> tuple[list[float], list[float]]:
    """x402_budget through MCP and in-process, alternating call by call."""
    from x402_agent.agent_tools import AgentTools

    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env=server_env(home))
    through_mcp: list[float] = []
    in_process: list[float] = []
    tools = AgentTools.open(home)
    try:
        with open(os.devnull, "w") as err:
            async with Client(stdio_client(params, errlog=err), mode=mode) as client:
                await client.call_tool("x402_budget", {})  # opens the agent (first call)
                await tools.abudget()
                for _ in range(calls):
                    t = time.perf_counter()
                    result = await client.call_tool("x402_budget", {})
                    through_mcp.append((time.perf_counter() - t) * 1000)
                    assert not result.is_error, result.content
                    t = time.perf_counter()
                    await tools.abudget()
                    in_process.append((time.perf_counter() - t) * 1000)
    finally:
        tools.close()
    return through_mcp, in_process


def p50(values: list[float]) -> float:
    return statistics.median(values)


def report_cold(client: str, times: dict[str, list[float]]) -> None:
    ours, peer = p50(times[OURS]), p50(times[PEER])
    print(
        f"cold start to first tools/list, {client}: {OURS} p50 {ours:.0f} ms "
        f"(min {min(times[OURS]):.0f}, max {max(times[OURS]):.0f}); {PEER} p50 {peer:.0f} ms "
        f"(min {min(times[PEER]):.0f}, max {max(times[PEER]):.0f}); ratio {ours / peer:.2f}x",
        flush=True,
    )


def report_call(client: str, mcp: list[float], local: list[float]) -> None:
    print(
        f"x402_budget per call, {client}: through MCP p50 {p50(mcp):.2f} ms, in-process "
        f"{p50(local):.2f} ms: overhead {p50(mcp) - p50(local):.2f} ms ({len(mcp)} calls)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    from x402_agent.device.simulator import DeviceSimulator
    from x402_agent.devnet import LocalWorld
    from x402_agent.devnet.provision import provision_devnet_home

    peer = peer_server()
    simulator = DeviceSimulator(confirm="auto", port=0).start()
    world = LocalWorld(device=simulator)
    world.start()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # A real home: the server verifies the device-approved policy before it serves.
            home = provision_devnet_home(world.info, Path(scratch) / "home").root
            first = asyncio.run(py_cold_start(SERVER, server_env(home), "auto"))
            print(
                f"first start of {OURS} in the home (no record yet: the server answers and it "
                f"records), Python client: {first:.0f} ms",
                flush=True,
            )
            for revision, mode in PY_MODES.items():
                report_cold(f"Python mcp client ({revision})", py_cold_starts(home, peer, args.runs, mode))
            for sdk in ("v1", "v2"):
                out = ts_bench(sdk, home, peer, args.runs, args.calls)
                report_cold(f"TypeScript SDK {sdk}", out["cold_start_ms"])
                local = asyncio.run(in_process_budget(home, args.calls))
                report_call(f"TypeScript SDK {sdk}", out["call_ms"], local)
            for revision, mode in PY_MODES.items():
                report_call(
                    f"Python mcp client ({revision})", *asyncio.run(py_per_call(home, args.calls, mode))
                )
    finally:
        world.stop()
        simulator.stop()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
