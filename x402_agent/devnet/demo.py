"""`x402-agent demo`: the whole promise, in one command, against the local world.

It starts the world (two anvils, USDC, the alto bundler, the official x402 servers, the device
simulator), gives an agent home a smart account owned by the simulated device, has the device
approve the default policy (with its daily limit and session allowance scaled down so the demo
reaches them in seconds), starts `x402-agent mcp` and drives a scripted agent through real MCP
client sessions: it pays, reads its receipts, exhausts its session allowance, then the daily
limit, and is refused; the device approves a higher daily limit and the agent carries on. It
ends with a table of payments and remaining budgets, and stops everything it started.

Everything runs through the same operations and tools an agent uses; nothing is demo-only.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..paths import PROJECT_ROOT
from ..policy import Policy
from .demo_agent import ToolCall, fetch_until_refused, mcp_session, tool
from .info import WorldInfo

if TYPE_CHECKING:
    from rich.console import Console

    from ..device.simulator import DeviceSimulator
    from ..device.simulator.workflow import Screen
    from ..home import AgentHome

DEMO_DAILY_MAX = 80_000  # 0.08 USDC: reached by the agent's second session
DEMO_DAILY_MAX_RAISED = 200_000  # 0.20 USDC: the change the device approves
DEMO_SESSION_ALLOWANCE = 50_000  # 0.05 USDC per session (one MCP connection)
DEMO_PER_REQUEST_MAX = 20_000  # 0.02 USDC: the 0.25 "premium" route stays out of reach
RESOURCE = ("GET", "/v2/report")  # 0.01 USDC
# Session 1 starts with these: 0.001 (JSON), 0.002 (a PNG), 0.25 (refused: above the cap).
EXTRAS = (("GET", "/v2/weather"), ("GET", "/v2/image"), ("GET", "/v2/premium"))


@dataclass
class DemoSummary:
    """What the demo did, as its final table shows it (amounts in atomic units)."""

    calls: list[ToolCall] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)  # the budget tool's answer
    policy_versions: list[int] = field(default_factory=list)


def demo_policy(
    world: WorldInfo, account: str, *, version: int = 1, daily_max: int = DEMO_DAILY_MAX
) -> Policy:
    """``policies/default.json`` for the local world: its USDC, this account and chain, loopback
    hosts allowed; its limits scaled down so the demo reaches them in seconds (and no payment
    this small asks for a human approval)."""
    document = json.loads((PROJECT_ROOT / "policies" / "default.json").read_text())
    [asset] = document["assets"]
    asset.update(
        network=world.network,
        address=world.usdc.address,
        eip712_name=world.usdc.name,
        eip712_version=world.usdc.version,
        daily_max=daily_max,
        per_request_max=DEMO_PER_REQUEST_MAX,
        approval_above=None,
    )
    document.update(
        version=version,
        account=account,
        chain_id=world.chain_id,
        hosts={"allow": None, "deny": []},
        max_payments_per_minute=60,
        private_network={"allow": world.own_apis()},
    )
    document["sessions"]["default"]["allowance"] = {"USDC": DEMO_SESSION_ALLOWANCE}
    return Policy.model_validate(document)


def run_demo(
    interactive: bool = False,
    console: Console | None = None,
    inspect: Callable[[WorldInfo, AgentHome, DemoSummary], None] | None = None,
    answer: Callable[[Screen], bool] | None = None,
    device: DeviceSimulator | None = None,
) -> int:
    """Run the demo. ``interactive``: each device screen is answered by ``answer`` (default: the
    person at this terminal). Tests pass ``inspect`` (sees the world, home and summary before
    teardown) and may lend a running simulator as ``device``."""
    from rich.console import Console

    from ..device.hwi import DeviceError
    from ..device.simulator import DeviceSimulator
    from .world import LocalWorld

    out = console or Console()
    began = time.perf_counter()
    # A free port pair: the demo runs beside devnets and other demos (the home records the path).
    simulator = device or DeviceSimulator(confirm="auto", port=0)
    lent = (simulator.confirm, simulator.honor_debuglink)
    if interactive:
        simulator.confirm, simulator.honor_debuglink = "wait", False
    if device is None:
        simulator.start()
    try:
        with (
            _device_prompts(simulator, out, answer if interactive else None, interactive),
            tempfile.TemporaryDirectory(prefix="x402-demo-") as scratch,
        ):
            with _step(
                out,
                interactive,
                "starting the local world: anvil x2, USDC, EntryPoint, alto bundler, x402 servers",
            ):
                local = LocalWorld(device=simulator, bundler=True)
                world = local.start()
            try:
                summary = DemoSummary()
                out.print(
                    f"[green]local world up[/] in {local.startup_seconds:.1f}s: chain "
                    f"{world.chain_id}, USDC {world.usdc.address}, bundler {world.bundler_url}"
                )
                home = _provision(world, Path(scratch), out, interactive)
                summary.policy_versions.append(1)
                asyncio.run(_agent(world, home, Path(scratch), out, summary))
                _final_tables(out, summary)
                if inspect is not None:
                    inspect(world, home, summary)
            finally:
                local.stop()
    except DeviceError as exc:
        out.print(f"[red]stopped: {exc.message} [{exc.reason}][/]")
        return 1
    finally:
        if device is None:
            simulator.stop()
        else:
            simulator.confirm, simulator.honor_debuglink = lent
    out.print(f"done in {time.perf_counter() - began:.1f}s; nothing left running")
    return 0


def _provision(world: WorldInfo, scratch: Path, out: Console, interactive: bool) -> AgentHome:
    from ..money import format_units
    from .provision import DEVNET_VAULT_FUNDING, provision_smart_account_home

    with _step(
        out,
        interactive,
        "enrolling the device, creating the smart account, funding its "
        "vault, approving the policy on the device",
    ):
        home = provision_smart_account_home(
            world, scratch / "home", policy=lambda account: demo_policy(world, account)
        )
    signer = home.config.signer
    assert signer.kind == "smart_account"
    setup = signer.setup
    out.print(f"[green]smart account[/] {signer.account} (owner: the device key {setup.owner})")
    out.print(
        f"  on-chain bounds: {format_units(setup.max_value, 6)} USDC per payment, vault "
        f"{signer.vault} holds {format_units(DEVNET_VAULT_FUNDING, 6)} USDC and lets the account "
        f"pull {format_units(setup.allowance, 6)} per day"
    )
    out.print(
        f"[green]policy v1 approved on the device[/]: "
        f"{format_units(DEMO_DAILY_MAX, 6)} USDC a day, "
        f"{format_units(DEMO_SESSION_ALLOWANCE, 6)} per session, "
        f"{format_units(DEMO_PER_REQUEST_MAX, 6)} per request"
    )
    return home


async def _agent(
    world: WorldInfo, home: AgentHome, scratch: Path, out: Console, summary: DemoSummary
) -> None:
    url = world.route(*RESOURCE).url
    log = scratch / "mcp-server.log"

    def report(call: ToolCall) -> None:
        summary.calls.append(call)
        path = call.url.split("/", 3)[-1]
        if call.refused:
            out.print(f"  [yellow]refused[/] /{path} ({call.session}): [bold]{call.refused}[/]")
        else:
            out.print(
                f"  [green]paid[/] {call.price} for /{path} ({call.session}) "
                f"tx {str(call.settlement_tx)[:14]}..."
            )

    out.print(
        "[bold]agent session 1[/] (an MCP client over stdio): weather, an image, the premium "
        f"data, then {RESOURCE[1]} until refused"
    )
    async with mcp_session(home.root, log) as session:
        for extra in EXTRAS:
            await fetch_until_refused(session, "session 1", world.route(*extra).url, 1, report)
        await fetch_until_refused(session, "session 1", url, 10, report)
        receipts = await tool(session, "x402_receipts", limit=3)
        out.print(
            f"  the agent reads its receipts: {len(receipts['receipts'])} latest, all "
            f"{sorted({r['state'] for r in receipts['receipts']})}"
        )
    out.print("[bold]agent session 2[/] (a new connection, a fresh session allowance)")
    async with mcp_session(home.root, log) as session:
        await fetch_until_refused(session, "session 2", url, 10, report)
        if _raise_daily_limit(world, home, out):
            summary.policy_versions.append(2)
            out.print("  the agent carries on under policy v2")
        else:
            out.print("  the agent tries again under policy v1")
        await fetch_until_refused(session, "session 2", url, 10, report)
        summary.receipts = (await tool(session, "x402_receipts", limit=50))["receipts"]
        summary.budget = await tool(session, "x402_budget")


def _raise_daily_limit(world: WorldInfo, home: AgentHome, out: Console) -> bool:
    """Propose policy v2 and have the device approve it; False when it is rejected there."""
    from ..chain.anchor import home_anchor
    from ..cli_policy import store_for
    from ..device.approve import approve
    from ..device.hwi import DeviceError, HwiDevice

    store = store_for(home)
    account = home.payer_address()
    raised = demo_policy(world, account, version=2, daily_max=DEMO_DAILY_MAX_RAISED)
    out.print("  [bold]policy change[/]: daily limit 0.08 -> 0.20 USDC, sent to the device")
    device = HwiDevice.at("trezor", world.device_path)
    try:
        approve(store, device, raised, home_anchor(home))  # and anchored on the account
    except DeviceError as refused:
        if refused.reason != "device_rejected":
            raise
        out.print("  [yellow]policy v2 rejected on the device[/]: the limits stay as they were")
        return False
    finally:
        device.close()
    out.print("  [green]policy v2 approved on the device[/]")
    return True


def _final_tables(out: Console, summary: DemoSummary) -> None:
    from rich.table import Table

    from ..money import format_units
    from .provision import DEVNET_VAULT_FUNDING

    payments = Table(title="payments (from the ledger; each settled on chain)")
    for column in ("#", "resource", "amount", "settlement tx", "policy", "state"):
        payments.add_column(column)
    for index, receipt in enumerate(reversed(summary.receipts), 1):
        payments.add_row(
            str(index),
            receipt["url"].split("/", 3)[-1],
            f"{receipt['price']} {receipt['symbol']}",
            str(receipt["settlement_tx"]),
            f"v{receipt['policy_version']}",
            receipt["state"],
        )
    out.print(payments)
    budgets = Table(title="remaining budgets")
    budgets.add_column("what")
    budgets.add_column("remaining")
    [asset] = summary.budget["assets"]
    budgets.add_row(
        f"daily limit (policy v{summary.budget['policy_version']})",
        f"{asset['daily_remaining_display']} of {format_units(int(asset['daily_max']), 6)} USDC",
    )
    session = summary.budget.get("session") or {}
    for allowance in session.get("allowance") or []:
        budgets.add_row("session 2 allowance", f"{allowance['remaining_display']} USDC")
    wallet = summary.budget["wallet"]
    budgets.add_row("hot balance (on chain)", f"{format_units(int(wallet['hot_balance']), 6)} USDC")
    budgets.add_row(
        "vault, still pullable today (on chain)", f"{format_units(int(wallet['vault_available']), 6)} USDC"
    )
    out.print(budgets)
    refusals = [c.refused for c in summary.calls if c.refused]
    out.print(f"refusals, in order: {', '.join(str(r) for r in refusals)}")
    pulled = DEVNET_VAULT_FUNDING - int(wallet["vault_balance"])
    out.print(
        f"the hot account pulled {format_units(pulled, 6)} USDC from its vault, in user operations "
        "signed by the session key and sent through the alto bundler"
    )


@contextmanager
def _step(out: Console, interactive: bool, text: str) -> Iterator[None]:
    """A spinner while a step runs (plain text when the device may ask the person)."""
    if interactive:
        out.print(f"... {text}")
        yield
        return
    with out.status(text + "..."):
        yield


@contextmanager
def _device_prompts(
    simulator: DeviceSimulator, out: Console, answer: Callable[[Screen], bool] | None, interactive: bool
) -> Iterator[None]:
    """With ``interactive``, each screen of the simulated device is answered as it appears: by
    ``answer``, or by the person at this terminal."""
    if not interactive:
        yield
        return

    def ask_here(screen: Screen) -> bool:
        return out.input("approve on the device? [y/N] ").strip().lower() in ("y", "yes")

    decide = answer or ask_here
    stop = threading.Event()

    def serve() -> None:
        answered: Screen | None = None  # stays displayed until the device acts on the answer
        while not stop.is_set():
            screen = simulator.wait_for_screen(timeout=0.2)
            if screen is None or screen is answered or stop.is_set():
                if screen is answered:
                    stop.wait(0.01)
                continue
            out.print(f"\n[bold magenta]device screen[/] {screen.text()}")
            (simulator.approve if decide(screen) else simulator.reject)()
            answered = screen

    prompter = threading.Thread(target=serve, name="device-prompts", daemon=True)
    prompter.start()
    try:
        yield
    finally:
        stop.set()
        prompter.join(timeout=1)
