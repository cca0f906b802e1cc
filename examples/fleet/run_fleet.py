"""A fleet of agent processes sharing one PostgreSQL budget, paying the local world at once.

    .venv/bin/x402-agent --home /tmp/x402-home devnet > /tmp/world.json &
    .venv/bin/python examples/fleet/run_fleet.py --world /tmp/world.json

Each worker gets its own agent home (a copy of the devnet's: same keys, plain or smart-account
payer, same device-approved policy, tightened to a small daily cap so the run reaches it), whose
``config.json`` says ``"ledger": "postgresql://..."``, the same URL for every worker. The
workers start together and each fires ``--attempts`` concurrent payments. At the end the
script prints what each worker paid, the ledger's total against the daily limit, and how much
the payer's USDC fell on chain: the total never passes the cap, however the attempts interleave.

Without ``--ledger`` a throw-away PostgreSQL cluster is started from the server binaries in
/usr/lib/postgresql/*/bin and removed afterwards. ``--separate-ledgers`` gives every worker its
own SQLite ledger instead, to show what a fleet without a shared ledger spends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from web3 import Web3

from x402_agent.errors import X402AgentError
from x402_agent.money import format_units
from x402_agent.operations import Agent

# ---- one worker --------------------------------------------------------------------------------


async def _attempt(agent: Agent, url: str) -> str:
    try:
        outcome = await agent.afetch(url)
    except X402AgentError as refused:
        return refused.reason
    return "paid" if outcome.payment is not None and outcome.status == 200 else "other"


def worker(home: Path, url: str, attempts: int) -> int:
    """Open the agent (policy check, ledger), say ready, wait for "go", pay, print a JSON tally."""
    agent = Agent.open(home)
    try:
        print("ready", flush=True)
        sys.stdin.readline()

        async def burst() -> list[str]:
            return await asyncio.gather(*(_attempt(agent, url) for _ in range(attempts)))

        tally = Counter(asyncio.run(burst()))
    finally:
        agent.close()
    print(json.dumps(tally), flush=True)
    return 0


# ---- a throw-away PostgreSQL cluster -----------------------------------------------------------


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """initdb + pg_ctl on a free loopback port; yields the URL; stops and deletes it after."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name.split(".")[0]),
    )
    if not found:
        raise SystemExit(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install "
            "the Debian package postgresql, or pass --ledger postgresql://..."
        )
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="x402-fleet-pg-"))
    # The server refuses to run as root: then it runs as the postgres system user.
    as_root = os.geteuid() == 0
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)

    def run(tool: str, *args: str) -> None:
        command = [str(bindir / tool), *args]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd="/", timeout=120)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    try:
        run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} "
            f"-c unix_socket_directories={root} -c max_connections=100"
        )
        run("pg_ctl", "start", "-w", "-D", str(data), "-l", str(root / "server.log"), "-o", options)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            run("pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w")
        shutil.rmtree(root, ignore_errors=True)


# ---- the fleet ---------------------------------------------------------------------------------


def tightened(policy: dict[str, Any], cap: int) -> dict[str, Any]:
    """The same policy with its caps lowered to at most ``cap``: only a tightening, so no device
    is needed (``x402-agent policy tighten``). The devnet policy has no approval threshold."""
    for asset in policy["assets"]:
        for field in ("per_request_max", "daily_max"):
            asset[field] = cap if asset[field] is None else min(asset[field], cap)
    for rule in policy["sessions"].values():
        rule["allowance"] = {key: min(amount, cap) for key, amount in rule["allowance"].items()}
    return policy


def make_home(source: Path, target: Path, ledger: str | None, cap: int) -> Path:
    target.mkdir(mode=0o700, parents=True)
    for path in source.iterdir():  # keys, config, device, approved policy; never the ledger
        if path.is_file() and not path.name.startswith("ledger.sqlite3"):
            shutil.copy2(path, target / path.name)
    if ledger is not None:
        config = json.loads((target / "config.json").read_text())
        config["ledger"] = ledger  # the one line that makes a fleet
        (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    lower = target / "fleet-policy.json"
    lower.write_text(json.dumps(tightened(json.loads((source / "policy.json").read_text()), cap)))
    subprocess.run(
        [
            str(Path(sys.executable).with_name("x402-agent")),
            "--home",
            str(target),
            "policy",
            "tighten",
            str(lower),
        ],
        check=True,
        capture_output=True,
    )
    return target


def holdings(world: dict[str, Any]) -> int:
    """What the payer holds in USDC: a plain key's balance, or a smart account's hot balance plus
    its vault's (a top-up moves funds between the two; only payments leave)."""
    abi = [
        {
            "name": "balanceOf",
            "type": "function",
            "stateMutability": "view",
            "inputs": [{"name": "holder", "type": "address"}],
            "outputs": [{"name": "", "type": "uint256"}],
        }
    ]
    token = Web3(Web3.HTTPProvider(world["rpc_url"])).eth.contract(
        address=Web3.to_checksum_address(world["token"]), abi=abi
    )
    holders = [world["payer"], *filter(None, [world.get("wallet", {}).get("vault")])]
    return sum(int(token.functions.balanceOf(Web3.to_checksum_address(h)).call()) for h in holders)


def run_fleet(world: dict[str, Any], ledger: str | None, args: argparse.Namespace) -> int:
    url = world["api_url"] + args.path
    cap = int(Decimal(args.daily_max) * 10**6)  # USDC has 6 decimals
    with tempfile.TemporaryDirectory(prefix="x402-fleet-") as scratch:
        homes = [
            make_home(Path(world["agent_home"]), Path(scratch) / f"agent-{i}", ledger, cap)
            for i in range(args.workers)
        ]
        before = holdings(world)
        began = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(home), url, str(args.attempts)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for home in homes
        ]
        for proc in procs:  # every worker has opened its agent (and its ledger connection)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a worker failed to start")
        # anvil mines only on transactions; after a minute idle its latest block is older than
        # the agent's validAfter (now - 60 s) and the devnet facilitator refuses the first
        # authorizations as not yet valid. One fresh block avoids that.
        Web3(Web3.HTTPProvider(world["rpc_url"])).provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        total: Counter[str] = Counter()
        for i, proc in enumerate(procs):
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0 or not out.strip():
                raise SystemExit(f"worker {i} failed (exit status {proc.returncode})")
            tally = Counter(json.loads(out.strip().splitlines()[-1]))
            total.update(tally)
            print(f"worker {i} (pid {proc.pid}): {dict(sorted(tally.items()))}")
        elapsed = time.perf_counter() - began
        spent_on_chain = before - holdings(world)
        agent = Agent.open(homes[0])
        try:
            usage = next(a for a in agent.budget()["assets"] if a["network"] == world["network"])
        finally:
            agent.close()

    counted = int(usage["counted_today"])
    print(f"ledger: {ledger or 'a separate SQLite file per worker'}")
    print(
        f"{args.workers} workers x {args.attempts} attempts = "
        f"{args.workers * args.attempts} in {elapsed:.1f} s: {dict(sorted(total.items()))}"
    )
    if ledger is not None:
        print(
            f"counted today in the shared ledger: {format_units(counted, 6)} USDC "
            f"of a daily limit of {format_units(cap, 6)} USDC"
        )
    held_in = "smart account, hot + vault" if world.get("wallet", {}).get("vault") else "plain key"
    print(f"payer's USDC on chain ({held_in}) fell by {format_units(spent_on_chain, 6)} USDC")
    if total["paid_not_delivered"]:
        print(
            f"{total['paid_not_delivered']} payments were signed but not delivered: they stay "
            "counted until the chain proves them settled or expired (see `x402-agent receipts`)"
        )
    held = spent_on_chain <= cap
    print(
        "the daily cap held across processes"
        if held
        else f"OVERSPENT: {format_units(spent_on_chain, 6)} > {format_units(cap, 6)} USDC"
    )
    return 0 if held or ledger is None else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(Path(argv[1]), argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--world", type=Path, required=True, help="the ready line of `x402-agent devnet`, saved to a file"
    )
    parser.add_argument("--ledger", help="postgresql://... (default: a throw-away cluster)")
    parser.add_argument(
        "--separate-ledgers",
        action="store_true",
        help="no shared ledger: each worker its own SQLite (overspends)",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--attempts", type=int, default=40, help="concurrent payments each")
    parser.add_argument("--daily-max", default="0.05", help="USDC; the cap the fleet shares")
    parser.add_argument("--path", default="/v2/weather", help="devnet route to pay (0.001 USDC)")
    args = parser.parse_args(argv)
    world = json.loads(args.world.read_text().strip().splitlines()[0])
    if args.separate_ledgers:
        return run_fleet(world, None, args)
    if args.ledger:
        return run_fleet(world, args.ledger, args)
    with throwaway_postgres() as url:
        return run_fleet(world, url, args)


if __name__ == "__main__":
    sys.exit(main())
