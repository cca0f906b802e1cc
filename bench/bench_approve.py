"""Latency of approving a policy on the device, with auto-approval (nobody reading the screen).

A device simulator (confirm="auto") is started on a free UDP port pair, and a scratch agent home
that records its path is provisioned and enrolled through HWI. Then, for N new
policy versions each:

- ``cli``: ``x402-agent policy propose FILE`` and ``x402-agent policy approve`` as two
  subprocesses, as a person runs them (each pays for a Python start, opening the device at the
  path the home recorded and the signing); ``propose`` and ``approve`` are also reported apart;
- ``inprocess``: ``x402_agent.device.approve.approve`` through one open ``HwiDevice`` (sign the
  approval line, verify it, install the policy);
- ``inprocess_eip712`` (unless --no-eip712): ``device.trezor.approve_typed`` through trezorlib.

Reported: p50/p95/mean/max in ms per series and whether p95 is under the 1 s target.

    .venv/bin/python bench/bench_approve.py [--n 20] [--warmup 2] [--json out.json]

JSON goes to stdout (and --json), the readable summary to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from x402_agent.device.approve import approve, enroll
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.device.simulator import DeviceSimulator
from x402_agent.device.trezor import approve_typed
from x402_agent.home import AgentHome, DeviceLocation, provision_home
from x402_agent.operations import expectations
from x402_agent.policy import Policy
from x402_agent.policy_store import PolicyStore, policy_json

TARGET_MS = 1000.0
CHAIN_ID = 84532
# A throwaway payer key: the bench never pays, the policy only has to name its account.
PAYER_KEY = "0x" + "4b" * 32
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
CLI = [sys.executable, "-m", "x402_agent.cli"]


def policy(home: AgentHome, version: int) -> Policy:
    return Policy.model_validate(
        {
            "version": version,
            "account": home.payer_address(),
            "chain_id": CHAIN_ID,
            "assets": [
                {
                    "network": f"eip155:{CHAIN_ID}",
                    "address": TOKEN,
                    "symbol": "USDC",
                    "decimals": 6,
                    "eip712_name": "USDC",
                    "eip712_version": "2",
                    "per_request_max": 100_000 + version,
                    "daily_max": 2_000_000,
                }
            ],
            "sessions": {"default": {"lifetime_seconds": 3600, "allowance": {"USDC": 500_000}}},
        }
    )


def stats(samples_ms: list[float]) -> dict[str, Any]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "n": len(samples_ms),
        "p50_ms": round(cuts[49], 1),
        "p95_ms": round(cuts[94], 1),
        "mean_ms": round(statistics.fmean(samples_ms), 1),
        "max_ms": round(max(samples_ms), 1),
        "under_target": cuts[94] < TARGET_MS,
    }


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return (time.perf_counter() - began) * 1000


def cli(home: Path, *args: str) -> None:
    done = subprocess.run(
        [*CLI, *args],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"x402-agent {' '.join(args)} failed: {done.stderr.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="measured repetitions per series")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured repetitions first")
    parser.add_argument("--no-eip712", action="store_true", help="skip the trezorlib series")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be at least 2")

    simulator = DeviceSimulator(confirm="auto", port=0).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-approve-") as scratch:
            home = provision_home(
                Path(scratch) / "home",
                private_key=PAYER_KEY,
                rpc_urls={},
                password="bench",
                store_password=True,
                chain_id=CHAIN_ID,
                kdf_iterations=2**14,
                device=DeviceLocation(path=simulator.path),
            )
            store = PolicyStore(home.root, expectations(home))
            device = HwiDevice.at("trezor", simulator.path)
            try:
                enroll(store, device, DEFAULT_APPROVAL_PATH)
                results = run_series(home, store, device, simulator.path, args)
            finally:
                device.close()
    finally:
        simulator.stop()

    report = {
        "target_ms": TARGET_MS,
        "device": "simulator (confirm=auto) via HWI",
        "path": simulator.path,
        "series": results,
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(summary(report), file=sys.stderr)
    return 0


def run_series(
    home: AgentHome, store: PolicyStore, device: HwiDevice, path: str, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    version = 1
    propose_ms: list[float] = []
    approve_ms: list[float] = []
    cli_ms: list[float] = []
    for i in range(args.warmup + args.n):
        version += 1
        file = home.root / f"proposal-v{version}.json"
        file.write_text(json.dumps(policy_json(policy(home, version))))
        proposed = timed(lambda: cli(home.root, "policy", "propose", str(file)))  # noqa: B023
        approved = timed(lambda: cli(home.root, "policy", "approve"))
        if store.load().version != version:
            raise SystemExit(f"v{version} was not installed")
        if i >= args.warmup:
            propose_ms.append(proposed)
            approve_ms.append(approved)
            cli_ms.append(proposed + approved)

    series: dict[str, list[float]] = {
        "cli": cli_ms,
        "cli_propose": propose_ms,
        "cli_approve": approve_ms,
        "inprocess": [],
    }
    for i in range(args.warmup + args.n):
        version += 1
        wanted = policy(home, version)
        elapsed = timed(lambda: approve(store, device, wanted))  # noqa: B023
        if store.load().digest != wanted.digest:
            raise SystemExit(f"v{version} was not installed")
        if i >= args.warmup:
            series["inprocess"].append(elapsed)

    if not args.no_eip712:
        series["inprocess_eip712"] = []
        device.close()  # trezorlib opens its own connection
        for i in range(args.warmup + args.n):
            version += 1
            wanted = policy(home, version)
            elapsed = timed(lambda: approve_typed(store, wanted, path))  # noqa: B023
            if store.load().digest != wanted.digest:
                raise SystemExit(f"v{version} was not installed")
            if i >= args.warmup:
                series["inprocess_eip712"].append(elapsed)
    return {name: stats(samples) for name, samples in series.items()}


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"policy approval round trip, {report['device']} at {report['path']}, "
        f"target p95 < {report['target_ms']:.0f} ms"
    ]
    labels = {
        "cli": "CLI propose + approve",
        "cli_propose": "  of which propose",
        "cli_approve": "  of which approve",
        "inprocess": "in-process approve (HWI)",
        "inprocess_eip712": "in-process EIP-712 (trezorlib)",
    }
    for name, s in report["series"].items():
        verdict = "ok" if s["under_target"] else "OVER TARGET"
        lines.append(
            f"  {labels[name]:32} p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms"
            f"  max {s['max_ms']:7.1f} ms  (n={s['n']})  {verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
