"""x402-agent pays ``batch-settlement`` (issue 14 item 1): one channel deposit, then a voucher per
request, against the official SDK's batch-settlement server, facilitator and channel manager on
the local world (our contracts at the canonical addresses: devnet/batch.py). Plain-key payer.

A world of this module's own: the withdrawal test moves the chain's clock past the withdraw delay,
which would expire what the session world's other tests sign. Each test pays from a fresh key.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from batch_fixtures import batch_world, server, settlement, world
from chain_reads import rpc
from eth_account import Account
from faulty_proxy import FaultyProxy
from x402.http import PAYMENT_REQUIRED_HEADER, decode_payment_required_header
from x402.schemas import PaymentRequired

from x402_agent import cli
from x402_agent.devnet import WorldInfo, token_balance
from x402_agent.devnet.batch import BATCH_PATH, BatchServer, BatchSettings, batch_server
from x402_agent.devnet.provision import devnet_policy, fund, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import (
    NoAcceptableRequirement,
    PaidNotDelivered,
    PaymentRejected,
    PolicyDenied,
    SettlementMismatch,
)
from x402_agent.ledger import PaymentState, SQLiteLedger
from x402_agent.ledger.channels import ChannelState
from x402_agent.operations import Agent
from x402_agent.policy import Policy
from x402_agent.reasons import Reason
from x402_agent.selection import rank
from x402_agent.spendgate import PolicyGate

__all__ = ["batch_world", "server", "settlement", "world"]  # the module's own world (batch_fixtures)

PAYER_USDC = 1_000_000
DEPOSIT = 150_000  # the policy's max_channel_deposit: 150 requests of 0.001
REQUESTS = 100


def channel_policy(
    world: WorldInfo, payer: str, also_fetch: tuple[str, ...] = (), **asset_changes: Any
) -> Policy:
    base = devnet_policy(world, account=payer, schemes=("exact", "batch-settlement"), also_fetch=also_fetch)
    usdc = base.assets[0].model_copy(update={"max_channel_deposit": DEPOSIT, **asset_changes})
    return base.model_copy(update={"assets": (usdc, *base.assets[1:])})


def fresh_home(world: WorldInfo, root: Path, policy: Any = channel_policy) -> tuple[Path, str]:
    account = Account.create()
    fund(world, account.address, usdc=PAYER_USDC, eth=10**17)
    key = "0x" + bytes(account.key).hex()
    home = provision_devnet_home(world, root, policy(world, account.address), private_key=key)
    return home.root, account.address


def usdc(world: WorldInfo, holder: str) -> int:
    return token_balance(world.rpc_url, world.usdc.address, holder)


def test_one_hundred_requests_through_one_channel_then_the_unused_deposit_comes_back(
    world: WorldInfo, server: BatchServer, settlement: Any, tmp_path: Path
) -> None:
    home, payer = fresh_home(world, tmp_path / "home")
    route = world.route("GET", BATCH_PATH)
    price, receiver = route.price_atomic, route.pay_to
    assert receiver is not None
    before = usdc(world, payer), usdc(world, receiver)
    agent = Agent.open(home)
    try:
        outcomes = [agent.fetch(route.url) for _ in range(REQUESTS)]
        assert [o.status for o in outcomes] == [200] * REQUESTS
        rows = [o.payment for o in outcomes]
        assert all(r is not None and r.state is PaymentState.SETTLED for r in rows)
        assert all(
            r is not None and (r.scheme, r.amount, r.settled_amount) == ("batch-settlement", price, price)
            for r in rows
        )
        # One deposit transaction: every row's settlement names it (the funds behind its voucher).
        assert len({r.settlement_tx for r in rows if r is not None}) == 1
        (channel,) = agent.payer.gate.ledger.channels.all()
        assert (channel.deposit, channel.signed_total, channel.charged) == (
            DEPOSIT,
            REQUESTS * price,
            REQUESTS * price,
        )
        assert channel.state is ChannelState.OPEN
        deposits = settlement.events.Deposited().get_logs(
            from_block=0, argument_filters={"channelId": bytes.fromhex(channel.channel_id[2:])}
        )
        assert len(deposits) == 1
        assert usdc(world, payer) == before[0] - DEPOSIT
        # The server's claim equals our last voucher.
        total = REQUESTS * price
        channel_id = bytes.fromhex(channel.channel_id[2:])
        assert server.wait_for(lambda: settlement.functions.channels(channel_id).call() == [DEPOSIT, total])
        assert server.wait_for(lambda: usdc(world, receiver) == before[1] + total), server.errors
        # Counted: exactly the requests' prices, not the deposit.
        usage = next(
            a
            for a in agent.budget()["assets"]
            if a["asset"] == world.usdc.address and a["network"] == world.network
        )
        assert int(usage["counted_today"]) == total
        (parked,) = agent.budget()["channels"]
        assert (parked["deposit"], parked["charged"], parked["unused"]) == (
            str(DEPOSIT),
            str(total),
            str(DEPOSIT - total),
        )

        # The unused deposit comes back: the server's refund, proven by the chain's transfer.
        refunded = agent.refund_channel(channel.channel_id)
        assert agent.budget()["channels"] == []  # closed: nothing parked any more
        assert (refunded.refunded, refunded.claimed, refunded.state) == (
            DEPOSIT - total,
            total,
            ChannelState.CLOSED,
        )
        assert settlement.functions.channels(channel_id).call() == [total, total]
        assert usdc(world, payer) == before[0] - total
        assert usdc(world, receiver) == before[1] + total
        assert server.errors == []
    finally:
        agent.close()


def test_a_lower_corrective_402_is_followed(world: WorldInfo, server: BatchServer, tmp_path: Path) -> None:
    """Our ledger ahead of the server by two requests (as if their answers had confirmed more
    than the server kept): the server's corrective 402 states its lower total, with the last
    voucher of ours it holds; the agent follows it, and the retried request pays from there."""
    home, _ = fresh_home(world, tmp_path / "home")
    route = world.route("GET", BATCH_PATH)
    price = route.price_atomic
    agent = Agent.open(home)
    try:
        assert [agent.fetch(route.url).status for _ in range(3)] == [200] * 3
        (channel,) = agent.channels()
        ledger = agent.payer.gate.ledger
        assert isinstance(ledger, SQLiteLedger)
        with sqlite3.connect(ledger.path) as db:
            db.execute("UPDATE channels SET signed_total = ?, charged = ?", (5 * price, 5 * price))

        with pytest.raises(PaymentRejected) as refused:
            agent.fetch(route.url)  # a voucher for 6 x price; the server holds 3
        assert refused.value.reason == Reason.CHANNEL_RESYNCED
        resynced = ledger.channels.get(channel.channel_id)
        assert resynced is not None and (resynced.charged, resynced.signed_total) == (3 * price, 6 * price)

        again = agent.fetch(route.url)  # 4 x price: what the server expects
        assert again.status == 200 and again.payment is not None
        assert again.payment.nonce is not None and again.payment.nonce.split(":")[1] == str(4 * price)
        after = ledger.channels.get(channel.channel_id)
        assert after is not None and after.charged == 4 * price
    finally:
        agent.close()


@pytest.fixture
def overclaiming(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.route("GET", BATCH_PATH).url.removesuffix(BATCH_PATH))
    with ServedApp(faulty, "overclaim-proxy") as served:
        yield faulty, served.url + BATCH_PATH


def test_a_claim_above_our_vouchers_is_refused_and_reported(
    world: WorldInfo, overclaiming: tuple[FaultyProxy, str], settlement: Any, tmp_path: Path
) -> None:
    proxy, url = overclaiming
    home, _ = fresh_home(world, tmp_path / "home", partial(channel_policy, also_fetch=(url,)))
    price = world.route("GET", BATCH_PATH).price_atomic
    agent = Agent.open(home)
    try:
        assert [agent.fetch(url).status for _ in range(2)] == [200] * 2
        proxy.mode, proxy.overclaim_by = "overclaim", 10 * price
        with pytest.raises(SettlementMismatch) as refused:
            agent.fetch(url)
        assert refused.value.reason == Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS
        assert refused.value.details["claimed"] == str(13 * price)
        (channel,) = agent.channels()
        assert channel.state is ChannelState.DISPUTED and channel.signed_total == 3 * price
        # The row stays counted (unknown) and nothing more is signed for this channel.
        unknown = agent.receipts(states=[PaymentState.UNKNOWN])
        assert [r.amount for r in unknown] == [price]
        signed_before = len(proxy.seen)
        with pytest.raises(PolicyDenied) as stopped:
            agent.fetch(url)
        assert stopped.value.reason == Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS
        assert len(proxy.seen) == signed_before
        # The watchdog withdraws it and reports it.
        watchdog = agent.channel_watchdog(silence=0)
        (withdrawing,) = watchdog.round()
        assert withdrawing.state is ChannelState.WITHDRAWING
        assert [a["channel_id"] for a in watchdog.alerts] == [channel.channel_id]
        channel_id = bytes.fromhex(channel.channel_id[2:])
        assert settlement.functions.pendingWithdrawals(channel_id).call()[0] > 0
    finally:
        agent.close()


@pytest.mark.parametrize("limit", ["daily", "session"])
def test_the_daily_limit_and_session_allowance_hold_across_channel_payments(
    world: WorldInfo, tmp_path: Path, limit: str
) -> None:
    """Each request through the channel is a payment like any other: its price is reserved
    against the limits before its voucher is signed. The deposit (which would cover more)
    does not lift them."""
    route = world.route("GET", BATCH_PATH)
    price, allowed = route.price_atomic, 7
    asset_id = f"{world.network}/{world.usdc.address}"

    def policy(world: WorldInfo, payer: str) -> Policy:
        daily = allowed * price if limit == "daily" else None
        base = channel_policy(world, payer, per_request_max=price, daily_max=daily)
        session = base.sessions["default"].model_copy(update={"allowance": {asset_id: allowed * price - 1}})
        return base.model_copy(update={"sessions": {"default": session}})

    home, payer = fresh_home(world, tmp_path / "home", policy)
    before = usdc(world, payer)
    agent = Agent.open(home)
    try:
        # The daily case pays outside any session; the session case with no daily limit.
        session = None if limit == "daily" else agent.open_session("default")
        paid = allowed if limit == "daily" else allowed - 1
        outcomes = [agent.fetch(route.url, session=session) for _ in range(paid)]
        assert [o.status for o in outcomes] == [200] * paid
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(route.url, session=session)
        assert refused.value.reason == (
            Reason.DAILY_LIMIT_EXCEEDED if limit == "daily" else Reason.SESSION_ALLOWANCE_EXCEEDED
        )
        (channel,) = agent.channels()
        # Nothing signed past the limit: the highest voucher is the paid requests' total.
        assert (channel.signed_total, channel.charged) == (paid * price, paid * price)
        assert channel.deposit == DEPOSIT and usdc(world, payer) == before - DEPOSIT
        assert all(r.state is not PaymentState.RESERVED for r in agent.receipts())
    finally:
        agent.close()


CHILD = Path(__file__).with_name("crash_child.py")
CHANNEL_STEPS = (
    "after_reserve",  # the request's price reserved, the channel untouched
    "after_next_voucher",  # the running total recorded, nothing signed
    "after_mark_sent",  # deposit/voucher signed and recorded, never sent
    "settled_no_answer",  # the server took the voucher; its answer never arrived
    "before_confirm",  # the answer in hand, the channel's confirmation not written
    "before_settle",  # the channel confirmed, the request's row not settled
)


@pytest.fixture
def crash_proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.route("GET", BATCH_PATH).url.removesuffix(BATCH_PATH))
    with ServedApp(faulty, "crash-proxy") as served:
        yield faulty, served.url + BATCH_PATH


def fetch_until_paid(agent: Agent, url: str, **options: Any) -> Any:
    """A request, retried once if the server's corrective 402 resynced the channel."""
    try:
        return agent.fetch(url, **options)
    except PaymentRejected as refused:
        assert refused.reason == Reason.CHANNEL_RESYNCED, refused.to_dict()
        return agent.fetch(url, **options)


@pytest.mark.parametrize("prepaid", [0, 2], ids=["deposit", "voucher"])
@pytest.mark.parametrize("step", CHANNEL_STEPS)
def test_killed_at_each_channel_step_then_restarted(
    world: WorldInfo,
    server: BatchServer,
    settlement: Any,
    crash_proxy: tuple[FaultyProxy, str],
    tmp_path: Path,
    step: str,
    prepaid: int,
) -> None:
    faulty, url = crash_proxy
    home, payer = fresh_home(world, tmp_path / "home", partial(channel_policy, also_fetch=(url,)))
    key = f"crash-{step}"
    before = usdc(world, payer)
    if step == "settled_no_answer":
        faulty.mode, faulty.spare = "hold_after_settle", prepaid
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(home), url, key, "none", str(prepaid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert faulty.held.wait(timeout=60), "the paid request never reached the server"
        child.kill()
    else:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(home), url, key, step, str(prepaid)],
            stderr=subprocess.PIPE,
            text=True,
        )
    assert child.wait(timeout=120) == -signal.SIGKILL, child.stderr.read() if child.stderr else None
    faulty.mode = "forward"

    agent = Agent.open(home)  # the restart reconciles what the dead process left
    try:
        # No voucher above the deposit (no channel yet if it died before touching one).
        assert all(c.signed_total <= c.deposit for c in agent.channels())
        # The caller retries with its key, then pays one more request.
        try:
            agent.fetch(url, idempotency_key=key)
        except PaymentRejected as refused:  # its voucher was never taken: released
            assert refused.reason == Reason.CHANNEL_RESYNCED, refused.to_dict()
        except PaidNotDelivered as lost:  # taken before the crash, its answer lost: settled
            assert lost.details["state"] == "settled"
        final = fetch_until_paid(agent, url)
        assert final.status == 200

        (channel,) = agent.channels()
        assert channel.signed_total <= channel.deposit == DEPOSIT
        channel_id = bytes.fromhex(channel.channel_id[2:])
        # One deposit, whatever step died: the retry resent the same one or the first never left.
        deposits = settlement.events.Deposited().get_logs(
            from_block=0, argument_filters={"channelId": channel_id}
        )
        assert len(deposits) == 1
        assert usdc(world, payer) == before - DEPOSIT
        # The server claims exactly the total we confirmed: nothing it charged is missing here.
        assert server.wait_for(
            lambda: settlement.functions.channels(channel_id).call() == [DEPOSIT, channel.charged]
        )
        rows = agent.receipts(limit=100)
        settled = [r for r in rows if r.state is PaymentState.SETTLED]
        totals = [int((r.nonce or "::").split(":")[1]) for r in settled]
        assert len(totals) == len(set(totals)), "one request counted twice"
        # Counted: every request the server charged, plus only rows still unresolved.
        assert sum(r.amount for r in settled) <= channel.charged
        still_open = [r for r in rows if r.state in (PaymentState.SENT, PaymentState.UNKNOWN)]
        assert sum(r.amount for r in settled + still_open) >= channel.charged
    finally:
        agent.close()


def test_cli_lists_refunds_and_watches_channels(
    world: WorldInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, payer = fresh_home(world, tmp_path / "home")
    route = world.route("GET", BATCH_PATH)
    price = route.price_atomic
    assert cli.main(["--home", str(home), "fetch", route.url]) == 0
    assert cli.main(["--home", str(home), "fetch", route.url]) == 0
    capsys.readouterr()
    assert cli.main(["--home", str(home), "channels", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["state"], listed["deposit"], listed["charged"]) == ("open", str(DEPOSIT), str(2 * price))
    assert listed["config"]["payer"] == payer
    # The watchdog leaves a channel whose server answers alone.
    assert cli.main(["--home", str(home), "channels", "watch", "--once", "--silence", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "open"
    assert cli.main(["--home", str(home), "channels", "refund", listed["channel_id"], "--json"]) == 0
    (refunded,) = json.loads(capsys.readouterr().out)
    assert (refunded["state"], refunded["refunded"]) == ("closed", str(DEPOSIT - 2 * price))
    assert usdc(world, payer) == PAYER_USDC - 2 * price
    # Paying again tops the same channel up: its vouchers continue from the claimed total.
    assert cli.main(["--home", str(home), "fetch", route.url]) == 0
    capsys.readouterr()
    assert cli.main(["--home", str(home), "channels", "list", "--json"]) == 0
    (again,) = json.loads(capsys.readouterr().out)
    assert (again["state"], again["charged"], again["unused"]) == (
        "open",
        str(3 * price),
        str(DEPOSIT - price),
    )
    assert usdc(world, payer) == PAYER_USDC - 2 * price - DEPOSIT


@pytest.mark.parametrize(
    ("extra", "deposit", "reason"),
    [
        ({}, None, Reason.CHANNEL_DEPOSIT_NOT_ALLOWED),  # the policy names no channel deposit
        ({"minDeposit": str(DEPOSIT + 1)}, DEPOSIT, Reason.CHANNEL_DEPOSIT_NOT_ALLOWED),
        ({"receiverAuthorizer": "0x" + "00" * 20}, DEPOSIT, Reason.UNSUPPORTED_SCHEME),
        ({"withdrawDelay": 60}, DEPOSIT, Reason.UNSUPPORTED_SCHEME),  # below the contract's 15 min
        ({"withdrawDelay": True}, DEPOSIT, Reason.UNSUPPORTED_SCHEME),
        ({"name": "Fake Coin"}, DEPOSIT, Reason.ASSET_DOMAIN_MISMATCH),
    ],
    ids=["no-deposit-allowed", "min-deposit-above", "no-authorizer", "short-delay", "bool-delay", "domain"],
)
def test_a_channel_offer_the_policy_or_the_contract_cannot_honour_is_refused_before_anything(
    world: WorldInfo, tmp_path: Path, extra: dict[str, Any], deposit: int | None, reason: Reason
) -> None:
    from test_schemes_seam import context, rewritten

    route = world.route("GET", BATCH_PATH)
    answer = httpx.get(route.url)
    offered = decode_payment_required_header(answer.headers[PAYMENT_REQUIRED_HEADER])
    assert isinstance(offered, PaymentRequired)
    challenge = rewritten(answer, route.url, extra={**(offered.accepts[0].extra or {}), **extra})
    ledger = SQLiteLedger(tmp_path / "ledger.sqlite3")
    try:
        policy = channel_policy(world, world.payer_address, max_channel_deposit=deposit)
        with pytest.raises((PolicyDenied, NoAcceptableRequirement)) as refused:
            rank(challenge, PolicyGate(policy, ledger), context(route.url), None)
        # Unpayable offers are NoAcceptableRequirement, each with its reason; a policy refusal says why.
        reasons = {refused.value.reason} | {r["reason"] for r in refused.value.details.get("rejected", [])}
        assert reason in reasons, refused.value.to_dict()
        assert ledger.recent() == [] and ledger.channels.all() == []  # nothing reserved or opened
    finally:
        ledger.close()


# Last in the module: it moves the chain clock past the withdraw delay, which would expire what
# the other tests sign (their authorizations are bounded by our clock).
@pytest.fixture
def own_server(world: WorldInfo) -> Iterator[BatchServer]:
    """A batch server of this test's own, to stop (the module's keeps serving the others)."""

    def fund_eth(address: str, wei: int) -> None:
        rpc(world.rpc_url, "anvil_setBalance", address, hex(wei))

    served = batch_server(world.rpc_url, world.network, world.usdc, fund_eth, BatchSettings())
    try:
        yield served.start()
    finally:
        served.stop()


def test_the_server_disappears_and_the_watchdog_withdraws_after_the_delay(
    world: WorldInfo, own_server: BatchServer, settlement: Any, tmp_path: Path
) -> None:
    route = own_server.route
    home, payer = fresh_home(world, tmp_path / "home", partial(channel_policy, also_fetch=(route.url,)))
    price, paid = route.price_atomic, 3
    before = usdc(world, payer), usdc(world, own_server.receiver)
    agent = Agent.open(home)
    try:
        assert [agent.fetch(route.url).status for _ in range(paid)] == [200] * paid
        (channel,) = agent.channels()
        channel_id = bytes.fromhex(channel.channel_id[2:])
        assert own_server.wait_for(
            lambda: settlement.functions.channels(channel_id).call() == [DEPOSIT, paid * price]
        )
        assert own_server.wait_for(lambda: usdc(world, own_server.receiver) == before[1] + paid * price)
        own_server.stop()  # the server goes away with the rest of the deposit

        watchdog = agent.channel_watchdog(silence=0)
        (started,) = watchdog.round()
        assert started.state is ChannelState.WITHDRAWING
        assert settlement.functions.pendingWithdrawals(channel_id).call()[0] == DEPOSIT - paid * price
        (waiting,) = watchdog.round()  # the delay has not passed on chain: nothing yet
        assert waiting.state is ChannelState.WITHDRAWING

        rpc(world.rpc_url, "evm_increaseTime", channel.config["withdrawDelay"])
        rpc(world.rpc_url, "evm_mine")
        (closed,) = watchdog.round()
        assert (closed.state, closed.withdrawn, closed.claimed) == (
            ChannelState.CLOSED,
            DEPOSIT - paid * price,
            paid * price,
        )
        # Nothing lost: the payer paid exactly the vouchers the server claimed.
        assert usdc(world, payer) == before[0] - paid * price
        assert usdc(world, own_server.receiver) == before[1] + paid * price
        assert settlement.functions.channels(channel_id).call() == [paid * price, paid * price]
    finally:
        agent.close()
