"""The ledger's channel table (migration 3) on both backends: the running total is recorded
before a voucher is signed and can never exceed the deposit; concurrent payers through one
channel never get the same total."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from test_ledger import PAYER, LedgerFactory, allow, ledger_factory, new_payment, query

from x402_agent.errors import PolicyDenied
from x402_agent.ledger.channels import ChannelRecord, ChannelState, ChannelTable
from x402_agent.reasons import Reason

__all__ = ["ledger_factory"]  # the fixture, used here: one ledger store per backend

CHANNEL = "0x" + "ab" * 32
PRICE, DEPOSIT = 1_000, 10_000


def template(deposit_payment: str = "row-1") -> ChannelRecord:
    return ChannelRecord(
        channel_id=CHANNEL.upper().replace("0X", "0x"),  # stored lower-case whatever it is given
        network="eip155:84532",
        asset="0x" + "11" * 20,
        payer=PAYER,
        pay_to="0x" + "22" * 20,
        url="http://127.0.0.1:1/v2/batch",
        config_json=f'{{"payer": "{PAYER}"}}',
        deposit_payment=deposit_payment,
    )


def test_totals_run_up_to_the_deposit_and_no_further(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory()
    channels = ledger.channels
    first = channels.next_voucher(template(), PRICE, DEPOSIT)
    assert (first.total, first.deposit, first.channel.state) == (PRICE, DEPOSIT, ChannelState.OPENING)
    channels.confirm(CHANNEL, PRICE, "0x" + "cd" * 32)
    for n in range(2, DEPOSIT // PRICE + 1):
        step = channels.next_voucher(template(), PRICE, DEPOSIT)
        assert (step.total, step.deposit) == (n * PRICE, 0)
        channels.confirm(CHANNEL, step.total)
    with pytest.raises(PolicyDenied) as refused:
        channels.next_voucher(template(), PRICE, DEPOSIT)
    assert refused.value.reason == Reason.CHANNEL_EXHAUSTED
    channel = channels.get(CHANNEL)
    assert channel is not None and (channel.signed_total, channel.charged) == (DEPOSIT, DEPOSIT)
    assert channel.deposit_tx == "0x" + "cd" * 32 and channel.state is ChannelState.OPEN
    # A confirmation above what was signed is not written.
    assert channels.confirm(CHANNEL, DEPOSIT + PRICE).charged == DEPOSIT


def test_a_reopened_channel_starts_over_and_a_disputed_one_signs_nothing(
    ledger_factory: LedgerFactory,
) -> None:
    channels = ledger_factory().channels
    channels.next_voucher(template("row-1"), PRICE, DEPOSIT)
    again = channels.next_voucher(template("row-2"), PRICE, DEPOSIT, reopen=True)
    assert (again.total, again.deposit, again.channel.deposit_payment) == (PRICE, DEPOSIT, "row-2")
    channels.mark(CHANNEL, state=ChannelState.DISPUTED)
    with pytest.raises(PolicyDenied) as refused:
        channels.next_voucher(template(), PRICE, DEPOSIT)
    assert refused.value.reason == Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS


def test_the_next_total_follows_a_settled_row(ledger_factory: LedgerFactory) -> None:
    """A request settled from the chain after a crash (its answer lost, the channel not
    confirmed): the next voucher continues above it."""
    ledger = ledger_factory()
    channels = ledger.channels
    channels.next_voucher(template(), PRICE, DEPOSIT)
    channels.confirm(CHANNEL, PRICE)
    step = channels.next_voucher(template(), PRICE, DEPOSIT)
    row = ledger.reserve(replace(new_payment(PRICE), scheme="batch-settlement"), query(1e9), allow)
    ledger.mark_sent(
        row.id,
        payer=PAYER,
        nonce=f"{CHANNEL}:{step.total}:{row.id}",
        valid_after=0,
        valid_before=2_000_000_000,
        payment_header="h",
    )
    ledger.settle(row.id, settlement_tx=None)
    assert channels.voucher_totals(CHANNEL, settled_only=True) == {2 * PRICE}
    assert channels.next_voucher(template(), PRICE, DEPOSIT).total == 3 * PRICE


def test_concurrent_payers_never_sign_above_the_deposit(ledger_factory: LedgerFactory) -> None:
    """Four openers paying through one channel until it is used up. Two requests in flight at
    once may be given the same total (it starts from the confirmed one); the server takes one
    and its corrective 402 releases the other. None is ever above the deposit."""
    tables = [ledger_factory().channels for _ in range(4)]
    tables[0].next_voucher(template(), PRICE, DEPOSIT)
    tables[0].confirm(CHANNEL, PRICE)
    totals: list[int] = []
    lock = threading.Lock()

    def pay(table: ChannelTable) -> None:
        while True:
            try:
                step = table.next_voucher(template(), PRICE, DEPOSIT)
            except PolicyDenied as refused:
                assert refused.reason == Reason.CHANNEL_EXHAUSTED
                return
            table.confirm(CHANNEL, step.total)
            with lock:
                totals.append(step.total)

    threads = [threading.Thread(target=pay, args=(t,)) for t in tables]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(totals) == DEPOSIT and all(PRICE < t <= DEPOSIT for t in totals)
    channel = tables[0].get(CHANNEL)
    assert channel is not None and channel.signed_total == channel.charged == DEPOSIT


def test_a_closed_channel_paid_again_is_topped_up_and_continues(ledger_factory: LedgerFactory) -> None:
    channels = ledger_factory().channels
    channels.next_voucher(template(), PRICE, DEPOSIT)
    channels.confirm(CHANNEL, PRICE)
    channels.mark(CHANNEL, refunded=DEPOSIT - PRICE, claimed=PRICE, state=ChannelState.CLOSED)
    step = channels.next_voucher(template("row-2"), PRICE, DEPOSIT)
    assert (step.total, step.deposit) == (2 * PRICE, DEPOSIT)
    assert (step.channel.deposit, step.channel.charged, step.channel.state) == (
        2 * DEPOSIT,
        PRICE,
        ChannelState.OPENING,
    )
    assert step.channel.unused == DEPOSIT - PRICE
