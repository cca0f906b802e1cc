"""`x402-agent demo`: start the local world, pay several x402 APIs, show the receipts.

It runs the same operations an agent uses; nothing here is demo-only logic.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import X402AgentError
from ..money import format_units
from ..operations import Agent
from ..policy_store import PolicyStore, expectations
from .provision import provision_devnet_home
from .world import LocalWorld

STEPS = (
    ("GET", "/v2/weather", None, "a v2 resource (official Python SDK server)"),
    ("POST", "/v2/summarize", b'{"text": "x402 lets agents pay per request"}', "a paid POST"),
    ("GET", "/v2/multi", None, "a route offering several networks, assets and prices"),
    ("GET", "/v1/weather", None, "a v1 resource (official x402-express server)"),
    ("GET", "/v2/premium", None, "a resource above the per-request cap"),
)


def run_demo() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="x402-demo-") as scratch:
        with console.status("starting the local world (anvil, USDC, x402 servers)..."):
            local = LocalWorld()
            world = local.start()
        try:
            console.print(f"[green]local world up[/] in {local.startup_seconds:.1f}s: "
                          f"chain {world.chain_id}, USDC {world.usdc.address}")
            home = provision_devnet_home(world, Path(scratch) / "home")
            agent = Agent.open(home)
            policy = agent.payer.gate.policy
            device = PolicyStore(home.root, expectations(home)).enrollment()
            console.print(f"policy v{policy.version} {policy.digest[:19]}... approved on device "
                          f"{device.fingerprint} (simulator, through HWI): per-request cap "
                          f"{format_units(policy.assets[0].per_request_max, 6)} USDC")
            for method, path, body, what in STEPS:
                url = world.route(method, path).url
                try:
                    outcome = agent.fetch(url, method=method, body=body,
                                          headers={"content-type": "application/json"})
                except X402AgentError as refused:
                    console.print(f"[yellow]refused[/] {method} {path} ({what}): "
                                  f"{refused.reason}")
                    continue
                paid = outcome.payment
                price = f"{format_units(paid.amount, paid.decimals)} {paid.symbol}" if paid else "free"
                console.print(f"[green]paid[/] {price} for {method} {path} ({what}): "
                              f"HTTP {outcome.status}, settled on chain: {outcome.confirmed_on_chain}")
            table = Table(title="receipts")
            for column in ("state", "price", "network", "path", "settlement tx", "policy"):
                table.add_column(column)
            for record in reversed(agent.receipts()):
                table.add_row(str(record.state), f"{format_units(record.amount, record.decimals)} "
                              f"{record.symbol}", record.network, urlsplit(record.url).path,
                              (record.settlement_tx or "-")[:18] + "...",
                              f"v{record.policy_version}")
            console.print(table)
            agent.close()
        finally:
            local.stop()
    console.print(f"done in {time.perf_counter() - began:.1f}s; nothing left running")
    return 0
