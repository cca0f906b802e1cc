"""Local worlds as users run them: real `x402-agent devnet` and `x402-agent demo` processes.

- A devnet left idle still pays from its smart account: the chain's clock keeps up with the
  wall clock (anvil mines a block a second besides the blocks for transactions), so the
  account's authorization-window check never compares against a stale block time.
- Two devnets and the demo run at once: each local world has its own device simulator on a free
  port pair (recorded in its home), so none talks to another's device.

Each devnet is read from its ready JSON line on stdout and stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

CLI = [sys.executable, "-m", "x402_agent.cli"]
START_TIMEOUT = 300.0  # several worlds start at once on a busy machine
IDLE_SECONDS = 180.0  # the scenario: three minutes with nobody transacting
PAID_ROUTE = "/v2/weather"  # 0.001 USDC


class Devnet:
    """One `x402-agent devnet` process; ``ready`` is its ready line once it printed it."""

    def __init__(self, log: Path) -> None:
        self._log = log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*CLI, "devnet"], stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.ready: dict[str, Any] | None = None
        self.startup_seconds: float | None = None
        self._seen = threading.Event()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            if line.startswith("{") and self.ready is None:
                self.ready = json.loads(line)
                self.startup_seconds = time.monotonic() - self.started
                self._seen.set()
        self._seen.set()  # EOF: the process ended (before or after its ready line)

    def wait_ready(self) -> dict[str, Any]:
        assert self._seen.wait(START_TIMEOUT), "devnet did not get ready in time"
        assert self.ready is not None and self.ready.get("ready"), self._log_text()
        return self.ready

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._log.close()

    def _log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text()[-3000:]


@pytest.fixture
def devnets(tmp_path: Path) -> Iterator[list[Devnet]]:
    """Start devnets with ``devnets.append(Devnet(...))``; all are stopped (SIGTERM) after."""
    started: list[Devnet] = []
    yield started
    codes = [devnet.stop() for devnet in started]
    assert codes == [0] * len(started)


def pay(ready: dict[str, Any]) -> dict[str, Any]:
    """`x402-agent fetch --json` of a paid route with the devnet's home; the result, asserted
    paid and settled."""
    env = {**os.environ, "X402_AGENT_HOME": ready["agent_home"]}
    done = subprocess.run(
        [*CLI, "fetch", ready["api_url"] + PAID_ROUTE, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["status"] == 200, result
    receipt = result["receipt"]
    assert receipt["state"] == "settled" and receipt["settlement_tx"], receipt
    assert receipt["payer"].lower() == ready["payer"].lower()
    return result


def chain_lag(rpc_url: str) -> float:
    """How far the chain's latest block time is behind the wall clock, in seconds."""
    answer = httpx.post(
        rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["latest", False]},
        timeout=10,
    ).json()
    return time.time() - int(answer["result"]["timestamp"], 16)


def test_an_idle_devnet_still_pays_from_its_smart_account(tmp_path: Path, devnets: list[Devnet]) -> None:
    """The suite's one long test: three idle minutes are the scenario itself. Before the fix
    the chain kept its last block's time, the account's window check failed after a minute,
    and every smart-account payment was refused."""
    devnet = Devnet(tmp_path / "devnet.log")
    devnets.append(devnet)
    ready = devnet.wait_ready()
    assert ready["wallet"]["kind"] == "smart_account"
    print(f"devnet ready in {devnet.startup_seconds:.1f}s")

    threading.Event().wait(IDLE_SECONDS)  # nobody transacts on this chain meanwhile

    assert devnet.proc.poll() is None
    assert chain_lag(ready["rpc_url"]) < 5  # the chain's time kept moving while idle
    began = time.monotonic()
    pay(ready)
    print(f"paid after {IDLE_SECONDS:.0f}s idle in {time.monotonic() - began:.1f}s")


def test_two_devnets_and_the_demo_run_side_by_side(tmp_path: Path, devnets: list[Devnet]) -> None:
    # One after the other, each ready before the next starts (three worlds booting at the same
    # instant only measure how busy two cores are); then all of them run at once.
    readies = []
    for name in ("first", "second"):
        devnets.append(Devnet(tmp_path / f"{name}.log"))
        readies.append(devnets[-1].wait_ready())
    demo = subprocess.Popen(
        [*CLI, "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        homes = {ready["agent_home"] for ready in readies}
        assert len(homes) == 2 and len({ready["rpc_url"] for ready in readies}) == 2
        devices = {json.loads(Path(home, "config.json").read_text())["device"]["path"] for home in homes}
        assert len(devices) == 2  # a simulator each, on ports of their own
        for ready in readies:  # while the demo runs
            pay(ready)
        out, err = demo.communicate(timeout=START_TIMEOUT + 300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err[-3000:] + out[-3000:]
    assert out.count("│ settled │") == 11 and "nothing left running" in out
    for ready in readies:  # and after it
        pay(ready)
    print("devnets ready in " + ", ".join(f"{d.startup_seconds:.1f}s" for d in devnets))
