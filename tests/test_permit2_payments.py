"""x402-agent pays ``exact`` over Permit2 and ``upto`` (issue 13 items 3-4), through the scheme
seam, against the local world's official SDK server and facilitator (Permit2 and the x402 proxies
at their canonical addresses; see test_permit2_world.py). Plain-key payer.

Each test pays from a fresh key funded from the world's payer and holding no Permit2 allowance:
the agent approves Permit2 itself, for the asset's daily limit, before its first signature. Its
balance changes are the test's alone.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance, transfer_logs
from eth_account import Account
from faulty_proxy import FaultyProxy
from test_crash import STEPS as CRASH_STEPS
from test_crash import killed, spawn
from test_race import PROCESSES, race
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS

from x402_agent.chain.wallet import HotWallet
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.paid_api import METERED_MAXIMUM
from x402_agent.devnet.provision import (
    DEVNET_DAILY_MAX,
    devnet_policy,
    fund,
    provision_devnet_home,
    provision_smart_account_home,
    smart_account_policy,
)
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import PolicyDenied, X402AgentError
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.policy import Policy
from x402_agent.reasons import Reason

PAYER_USDC = 1_000_000
BOTH = ("exact", "upto")


def allowance(world: WorldInfo, owner: str) -> int:
    data = "0xdd62ed3e" + owner.lower()[2:].rjust(64, "0") + PERMIT2_ADDRESS.lower()[2:].rjust(64, "0")
    return int(rpc(world.rpc_url, "eth_call", {"to": world.usdc.address, "data": data}, "latest"), 16)


def nonce_used(world: WorldInfo, owner: str, nonce: int) -> bool:
    """Permit2.nonceBitmap(owner, nonce >> 8), read independently of the agent's code."""
    data = "0x4fe02b44" + owner.lower()[2:].rjust(64, "0") + format(nonce >> 8, "064x")
    bitmap = int(rpc(world.rpc_url, "eth_call", {"to": PERMIT2_ADDRESS, "data": data}, "latest"), 16)
    return (bitmap >> (nonce & 0xFF)) & 1 == 1


def fresh_payer(world: WorldInfo) -> tuple[str, str]:
    account = Account.create()
    fund(world, account.address, usdc=PAYER_USDC, eth=10**17)
    return account.address, "0x" + bytes(account.key).hex()


def home_for(
    world: WorldInfo,
    root: Path,
    *,
    schemes: tuple[str, ...] | None = BOTH,
    policy: Policy | None = None,
    also_fetch: tuple[str, ...] = (),
) -> tuple[Path, str]:
    address, key = fresh_payer(world)
    chosen = policy or devnet_policy(world, account=address, schemes=schemes, also_fetch=also_fetch)
    return provision_devnet_home(world, root, chosen, private_key=key).root, address


@pytest.fixture
def agent_home(world: WorldInfo, tmp_path: Path) -> tuple[Path, str]:
    return home_for(world, tmp_path / "home")


def counted_today(agent: Agent, world: WorldInfo) -> int:
    usdc = next(
        a
        for a in agent.budget()["assets"]
        if a["network"] == world.network and a["asset"] == world.usdc.address
    )
    return int(usdc["counted_today"])


def balances(world: WorldInfo, *holders: str) -> list[int]:
    return [token_balance(world.rpc_url, world.usdc.address, h) for h in holders]


def test_exact_permit2_route_paid_approving_a_bounded_allowance_first(
    world: WorldInfo, agent_home: tuple[Path, str]
) -> None:
    home, payer = agent_home
    route = world.route("GET", "/v2/permit2")
    assert allowance(world, payer) == 0
    before = balances(world, payer, route.pay_to)
    agent = Agent.open(home)
    try:
        outcome = agent.verified(agent.fetch(route.url))
        paid = outcome.payment
        assert outcome.status == 200 and outcome.confirmed_on_chain and paid is not None
        assert (paid.state, paid.scheme, paid.credential) == (PaymentState.SETTLED, "exact", "permit2")
        assert paid.amount == paid.settled_amount == route.price_atomic
        after = balances(world, payer, route.pay_to)
        assert (before[0] - after[0], after[1] - before[1]) == (route.price_atomic, route.price_atomic)
        # The ledger's authorization id is the Permit2 nonce, and the chain shows it used.
        assert paid.nonce is not None and nonce_used(world, payer, int(paid.nonce, 16))
        assert transfer_logs(world.rpc_url, paid.settlement_tx) == [
            (world.usdc.address, payer, route.pay_to, route.price_atomic)
        ]
        receipt = paid.to_receipt()
        assert (receipt["amount"], receipt["settled_amount"]) == (str(route.price_atomic),) * 2
        assert paid.verification == "verified"
        # Approved for the daily limit (never unlimited), less what Permit2 pulled since.
        assert allowance(world, payer) == DEVNET_DAILY_MAX - route.price_atomic
        assert counted_today(agent, world) == route.price_atomic
    finally:
        agent.close()


@pytest.mark.parametrize("used", [2_500, METERED_MAXIMUM, 0])
def test_upto_route_reserves_the_maximum_and_counts_what_settled(
    world: WorldInfo, agent_home: tuple[Path, str], used: int
) -> None:
    home, payer = agent_home
    route = world.route("GET", "/v2/metered")
    assert route.price_atomic == METERED_MAXIMUM
    before = balances(world, payer, route.pay_to)
    agent = Agent.open(home)
    try:
        outcome = agent.verified(agent.fetch(f"{route.url}?used={used}"))
        paid = outcome.payment
        assert outcome.status == 200 and paid is not None, outcome.content
        assert (paid.state, paid.scheme, paid.credential) == (PaymentState.SETTLED, "upto", "permit2")
        assert (paid.amount, paid.settled_amount) == (METERED_MAXIMUM, used)  # reserved max, settled
        after = balances(world, payer, route.pay_to)
        assert (before[0] - after[0], after[1] - before[1]) == (used, used)
        receipt = paid.to_receipt()
        assert (receipt["amount"], receipt["settled_amount"]) == (str(METERED_MAXIMUM), str(used))
        assert paid.nonce is not None
        if used:
            assert outcome.confirmed_on_chain and paid.verification == "verified"
            assert transfer_logs(world.rpc_url, paid.settlement_tx) == [
                (world.usdc.address, payer, route.pay_to, used)
            ]
            assert nonce_used(world, payer, int(paid.nonce, 16))
        else:
            # Zero: the SDK settles nothing and sends no transaction; the permit stays unused.
            assert paid.settlement_tx is None
            assert not nonce_used(world, payer, int(paid.nonce, 16))
        # The budget counts only what settled: the rest of the maximum is released.
        assert counted_today(agent, world) == used
        assert agent.payer.gate.ledger.unresolved() == []
    finally:
        agent.close()


def test_upto_maximum_above_the_per_request_cap_is_refused_before_signing(
    world: WorldInfo, tmp_path: Path
) -> None:
    address, key = fresh_payer(world)
    base = devnet_policy(world, account=address, schemes=BOTH).model_dump(by_alias=True)
    for asset in base["assets"]:
        asset["per_request_max"] = METERED_MAXIMUM - 1  # the server would settle 1 unit...
    home = provision_devnet_home(world, tmp_path / "home", Policy.model_validate(base), private_key=key).root
    route = world.route("GET", "/v2/metered")
    agent = Agent.open(home)
    try:
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(f"{route.url}?used=1")  # ...but the signature would allow the maximum
        assert refused.value.reason == Reason.PER_REQUEST_CAP_EXCEEDED
        assert agent.receipts() == []  # nothing reserved, nothing signed
    finally:
        agent.close()
    assert allowance(world, address) == 0  # nor approved


def test_a_policy_naming_no_schemes_refuses_upto_naming_the_field(world: WorldInfo, tmp_path: Path) -> None:
    home, _ = home_for(world, tmp_path / "home", schemes=None)
    route = world.route("GET", "/v2/metered")
    agent = Agent.open(home)
    try:
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(route.url)
        assert refused.value.reason == Reason.SCHEME_NOT_ALLOWED
        assert "schemes" in refused.value.message
        assert agent.receipts() == []
        # exact over Permit2 is exact: allowed by the default.
        assert agent.fetch(world.route("GET", "/v2/permit2").url).status == 200
    finally:
        agent.close()


# ---------------------------------------------------------------- 4 processes race for upto's maximum

FITS = 5


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v2/metered", "daily"), ("/v2/metered", "session"), ("/v2/permit2", "daily")],
    ids=["upto-daily", "upto-session", "exact-permit2-daily"],
)
def test_limits_hold_at_the_maximum_under_four_processes(
    world: WorldInfo, tmp_path: Path, path: str, limit: str
) -> None:
    route = world.route("GET", path)
    most = route.price_atomic  # upto: the maximum, which is reserved
    address, key = fresh_payer(world)
    base = devnet_policy(world, account=address, schemes=BOTH).model_dump(by_alias=True)
    for asset in base["assets"]:
        asset["per_request_max"] = most
        asset["daily_max"] = FITS * most if limit == "daily" else 100 * most
    if limit == "daily":
        base["sessions"] = {}
    else:  # every payment counts in the default session
        allowance = base["sessions"]["default"]["allowance"]
        allowance.update({name: FITS * most for name in allowance})
    home = provision_devnet_home(world, tmp_path / "home", Policy.model_validate(base), private_key=key).root
    before = balances(world, address, route.pay_to)

    # No ?used=: upto settles its maximum, so exactly FITS maxima fit.
    results = race(home, route.url, attempts=10, session="default" if limit == "session" else None)

    refusal = "daily_limit_exceeded" if limit == "daily" else "session_allowance_exceeded"
    assert results == Counter({"paid": FITS, refusal: PROCESSES * 10 - FITS}), results
    after = balances(world, address, route.pay_to)
    moved = FITS * most
    assert (before[0] - after[0], after[1] - before[1]) == (moved, moved)
    agent = Agent.open(home)
    try:
        settled = agent.receipts(limit=100, states=[PaymentState.SETTLED])
        assert len(settled) == FITS and all(r.settled_amount == most for r in settled)
        assert counted_today(agent, world) == moved
    finally:
        agent.close()


# ---------------------------------------------------------------- SIGKILL between signing and settlement

USED = 2_500


@pytest.fixture
def crash_proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.api_url)
    with ServedApp(faulty, "crash-proxy") as served:
        yield faulty, served.url


@pytest.mark.parametrize("step", list(CRASH_STEPS))
@pytest.mark.parametrize("path", ["/v2/metered", "/v2/permit2"], ids=["upto", "exact-permit2"])
def test_killed_at_each_step_then_restarted_reconciles_from_the_chain(
    world: WorldInfo, tmp_path: Path, crash_proxy: tuple[FaultyProxy, str], step: str, path: str
) -> None:
    faulty, base = crash_proxy
    home, payer = home_for(world, tmp_path / "home", also_fetch=(base,))
    route = world.route("GET", path)
    maximum = route.price_atomic
    upto = path == "/v2/metered"
    used = USED if upto else maximum  # what settles
    url, key = f"{base}{route.path}" + (f"?used={USED}" if upto else ""), f"crash-{path}-{step}"
    before = balances(world, payer, route.pay_to)

    if step == "settled_no_answer":
        faulty.mode = "hold_after_settle"
        child = spawn(home, url, key, "none")
        assert faulty.held.wait(timeout=60), "the paid request never reached the server"
        child.kill()
    else:
        child = spawn(home, url, key, step)
    killed(child)

    agent = Agent.open(home)  # a restart reconciles what the dead process left
    try:
        (left,) = agent.receipts()
        settled_on_chain = step in ("settled_no_answer", "before_settle")
        if step == "after_reserve":
            assert left.state == PaymentState.RELEASED
            assert counted_today(agent, world) == 0
        elif settled_on_chain:
            # The nonce is used on chain; the amount is read from the transaction that used it.
            assert (left.state, left.settled_amount) == (PaymentState.SETTLED, used)
            assert counted_today(agent, world) == used
        else:
            assert left.state == PaymentState.SENT  # signed, unused, valid: the maximum counts
            assert counted_today(agent, world) == maximum

        faulty.mode = "forward"
        again = agent.fetch(url, idempotency_key=key)  # the caller retries with its key
        assert again.payment is not None and again.payment.state == PaymentState.SETTLED
        assert again.replayed == settled_on_chain
        live = [r for r in agent.receipts() if r.state != PaymentState.RELEASED]
        assert [(r.amount, r.settled_amount) for r in live] == [(maximum, used)]
        assert counted_today(agent, world) == used
        assert agent.payer.gate.ledger.unresolved() == []
    finally:
        agent.close()
    after = balances(world, payer, route.pay_to)
    assert (before[0] - after[0], after[1] - before[1]) == (used, used), "paid exactly once"


# ---------------------------------------------------------------- from the smart account


def test_smart_account_pays_exact_permit2_and_upto_within_its_bounds(
    world: WorldInfo, tmp_path: Path
) -> None:
    """The account's session key signs the ERC-1271 Permit2 envelope; Permit2's allowance comes
    from the account's own refill (one vault period, never unlimited), asked through the wallet."""

    def policy(account: str) -> Policy:
        base = smart_account_policy(world, account)
        return base.model_copy(
            update={"assets": tuple(r.model_copy(update={"schemes": BOTH}) for r in base.assets)}
        )

    home = provision_smart_account_home(world, tmp_path / "home", policy=policy)
    exact, upto = world.route("GET", "/v2/permit2"), world.route("GET", "/v2/metered")
    with Agent.open(home) as agent:
        wallet = agent.payer.signer
        assert isinstance(wallet, HotWallet)
        account = wallet.account
        before = balances(world, account, exact.pay_to, upto.pay_to)
        first = agent.verified(agent.fetch(exact.url)).payment
        second = agent.verified(agent.fetch(f"{upto.url}?used={USED}")).payment
        assert first is not None and second is not None
        assert [(p.scheme, p.credential, p.state, p.payer) for p in (first, second)] == [
            ("exact", "permit2", PaymentState.SETTLED, account),
            ("upto", "permit2", PaymentState.SETTLED, account),
        ]
        assert (second.amount, second.settled_amount) == (METERED_MAXIMUM, USED)
        assert first.verification == second.verification == "verified"
        assert transfer_logs(world.rpc_url, second.settlement_tx) == [
            (world.usdc.address, account, upto.pay_to, USED)
        ]
        after = balances(world, account, exact.pay_to, upto.pay_to)
        # The account's balance also rose by its top-up from the vault; the payees got exactly.
        assert (after[1] - before[1], after[2] - before[2]) == (exact.price_atomic, USED)
        assert counted_today(agent, world) == exact.price_atomic + USED
        # Permit2 was approved for one vault period (the vault's allowance), less what it pulled.
        assert allowance(world, account) == DEVNET_DAILY_MAX - exact.price_atomic - USED


def test_cli_pays_upto_and_receipts_show_maximum_and_settled(
    world: WorldInfo, agent_home: tuple[Path, str]
) -> None:
    home, _ = agent_home
    route = world.route("GET", "/v2/metered")
    env = {**os.environ, "X402_AGENT_HOME": str(home)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "x402_agent.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("fetch", f"{route.url}?used={USED}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["used"] == USED
    (row,) = json.loads(cli("receipts", "--format", "json").stdout)
    assert (row["scheme"], row["credential"], row["amount"], row["settled_amount"]) == (
        "upto",
        "permit2",
        str(METERED_MAXIMUM),
        str(USED),
    )
    assert (row["price"], row["settled"]) == ("0.01", "0.0025")
    assert "0.0025 of 0.01 USDC" in cli("receipts").stdout
    (csv_row,) = list(csv.DictReader(io.StringIO(cli("receipts", "--format", "csv").stdout)))
    assert (csv_row["amount"], csv_row["settled_amount"]) == (str(METERED_MAXIMUM), str(USED))


def test_upto_settled_zero_then_killed_stays_counted_until_the_retry_settles_zero(
    world: WorldInfo, tmp_path: Path, crash_proxy: tuple[FaultyProxy, str]
) -> None:
    """A settlement of 0 leaves no trace on chain (no transaction, the nonce unused): a restart
    cannot tell it from a payment not yet settled, so the maximum stays counted until the
    retry (same key, same permit) is answered 0 again, or the permit expires."""
    faulty, base = crash_proxy
    home, payer = home_for(world, tmp_path / "home", also_fetch=(base,))
    route = world.route("GET", "/v2/metered")
    url, key = f"{base}{route.path}?used=0", "crash-upto-zero"
    before = balances(world, payer, route.pay_to)
    faulty.mode = "hold_after_settle"
    child = spawn(home, url, key, "none")
    assert faulty.held.wait(timeout=60), "the paid request never reached the server"
    child.kill()
    killed(child)

    agent = Agent.open(home)
    try:
        (left,) = agent.receipts()
        assert left.state == PaymentState.SENT and counted_today(agent, world) == METERED_MAXIMUM
        faulty.mode = "forward"
        again = agent.fetch(url, idempotency_key=key)
        assert again.payment is not None and not again.replayed
        assert (again.payment.state, again.payment.settled_amount) == (PaymentState.SETTLED, 0)
        assert counted_today(agent, world) == 0
    finally:
        agent.close()
    assert balances(world, payer, route.pay_to) == before


def test_a_plain_key_that_cannot_approve_permit2_is_refused_with_the_typed_reason(
    world: WorldInfo, tmp_path: Path
) -> None:
    account = Account.create()
    fund(world, account.address, usdc=PAYER_USDC)  # no ETH: the approval cannot pay its gas
    policy = devnet_policy(world, account=account.address, schemes=BOTH)
    home = provision_devnet_home(
        world, tmp_path / "home", policy, private_key="0x" + bytes(account.key).hex()
    )
    route = world.route("GET", "/v2/permit2")
    agent = Agent.open(home.root)
    try:
        with pytest.raises(X402AgentError) as refused:
            agent.fetch(route.url)
        assert refused.value.reason == Reason.PERMIT2_ALLOWANCE_REQUIRED
        (row,) = agent.receipts()
        assert row.state == PaymentState.RELEASED and row.payment_header is None  # never signed
        assert counted_today(agent, world) == 0
    finally:
        agent.close()
    assert allowance(world, account.address) == 0
    assert token_balance(world.rpc_url, world.usdc.address, account.address) == PAYER_USDC
