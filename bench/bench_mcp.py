"""MCP costs: cold start of `x402-agent mcp` (spawn to the first tools/list answer), and the
per-call overhead of a paid fetch through MCP (stdio) against the same fetch in-process.

    .venv/bin/python bench/bench_mcp.py [--runs 10] [--calls 30]

The second part starts the local world (anvil, USDC, the paid API) and a devnet agent home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, stdio_client

SERVER = [sys.executable, "-m", "x402_agent.cli", "mcp"]


# The peer: PyPI's x402-mcp, in its own environment (its dependencies are not ours).
PEER_ENV = Path(__file__).resolve().parent / ".peer-x402-mcp"
PEER_PIN = "x402-mcp==0.5.0"


def peer_server() -> str:
    """Path of the x402-mcp console script, installed on first use."""
    script = PEER_ENV / "bin" / "x402-mcp"
    if not script.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
        subprocess.run([str(PEER_ENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", PEER_PIN], check=True)
    return str(script)


async def cold_start(home: str, command: list[str] | None = None) -> float:
    command = command or SERVER
    env = {**os.environ, "X402_AGENT_HOME": home,
           "EVM_PRIVATE_KEY": "0x" + secrets.token_hex(32)}  # a throwaway key for the peer
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    started = time.perf_counter()
    with open(os.devnull, "w") as err:
        async with stdio_client(params, errlog=err) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            await session.list_tools()
            return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def per_call(home: Path, url: str, calls: int) -> tuple[list[float], list[float]]:
    from x402_agent.agent_tools import AgentTools

    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:],
                                   env={**os.environ, "X402_AGENT_HOME": str(home)})
    through_mcp: list[float] = []
    in_process: list[float] = []
    tools = AgentTools.open(home)
    try:
        with open(os.devnull, "w") as err:
            async with stdio_client(params, errlog=err) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                await session.call_tool("x402_budget", {})  # opens the agent (first call)
                await tools.afetch(url)
                for _ in range(calls):  # alternate, so drift hits both equally
                    t = time.perf_counter()
                    result = await session.call_tool("x402_fetch", {"url": url})
                    through_mcp.append(time.perf_counter() - t)
                    assert not result.is_error, result.content
                    t = time.perf_counter()
                    await tools.afetch(url)
                    in_process.append(time.perf_counter() - t)
    finally:
        tools.close()
    return through_mcp, in_process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    from x402_agent.device.simulator import DeviceSimulator
    from x402_agent.devnet import LocalWorld
    from x402_agent.devnet.provision import provision_devnet_home

    simulator = DeviceSimulator(confirm="auto", port=0).start()
    world = LocalWorld(device=simulator)
    world.start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            home = provision_devnet_home(world.info, Path(scratch) / "home").root
            # The server verifies the device-approved policy before it serves: a real home.
            peer = [peer_server()]
            starts: list[float] = []
            peer_starts: list[float] = []
            for _ in range(args.runs):  # alternate, so drift hits both alike
                starts.append(asyncio.run(cold_start(str(home))))
                peer_starts.append(asyncio.run(cold_start(str(home), peer)))
            for name, values in (("x402-agent mcp", starts), (PEER_PIN, peer_starts)):
                print(f"{name} cold start to first tools/list: p50 "
                      f"{statistics.median(values) * 1000:.0f} ms, min {min(values) * 1000:.0f} "
                      f"ms, max {max(values) * 1000:.0f} ms ({args.runs} runs)")
            url = world.info.route("GET", "/v2/weather").url
            mcp_times, local_times = asyncio.run(per_call(home, url, args.calls))
    finally:
        world.stop()
        simulator.stop()
    m, local = statistics.median(mcp_times), statistics.median(local_times)
    print(f"paid fetch (0.001 USDC), p50: in-process {local * 1000:.1f} ms, through MCP stdio "
          f"{m * 1000:.1f} ms (+{(m - local) * 1000:.1f} ms, {m / local:.2f}x); "
          f"p90 {pct(local_times, 0.9) * 1000:.1f} / {pct(mcp_times, 0.9) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
