"""The ledger contract, one suite run against every backend (SQLite and PostgreSQL).

``ledger_factory`` opens a new ledger instance on one store each time it is called: several
instances are several processes' views of the same budget. The concurrency tests race the real
``PolicyGate`` from threads and from spawned processes; the property-based tests interleave
reservations and state changes at random and check after every step that what is counted never
exceeds the limits and that the ledger's own usage equals a recount of its rows.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from x402.schemas import PaymentRequirements

from x402_agent.challenge import Offer
from x402_agent.decision import PaymentContext, Usage
from x402_agent.errors import LedgerError, PaymentInFlight, PolicyDenied
from x402_agent.ledger import (
    COUNTED_STATES,
    Ledger,
    NewPayment,
    PaymentRecord,
    PaymentState,
    SQLiteLedger,
    UsageQuery,
    Verification,
)
from x402_agent.money import LEDGER_AMOUNT_MAX
from x402_agent.policy import Policy, parse_policy
from x402_agent.spendgate import PolicyGate

NETWORK = "eip155:84532"
OTHER_NETWORK = "eip155:8453"
ASSET = to_checksum_address("0x" + "a1" * 20)
OTHER_ASSET = to_checksum_address("0x" + "b2" * 20)
PAYEE = to_checksum_address("0x" + "c3" * 20)
PAYER = to_checksum_address("0x" + "d4" * 20)
DAY = 86_400.0
T0 = 1_800_000_000.123456  # a float that must round-trip exactly
SESSIONS = ("s-a", "s-b")
BACKENDS = ["sqlite", "postgres"]
S = PaymentState


# ---- stores, clocks and builders -------------------------------------------------------------
@dataclass(frozen=True)
class Store:
    """Where one ledger lives; picklable, so spawned processes can open it too."""

    kind: str  # "sqlite" | "postgres"
    where: str  # file path or URL

    def open(self, clock: Callable[[], float] = time.time) -> Ledger:
        if self.kind == "sqlite":
            return SQLiteLedger(Path(self.where), clock=clock)
        from x402_agent.ledger.postgres import PostgresLedger

        return PostgresLedger(self.where, clock=clock)


def execute(store: Store, statement: str) -> None:
    """Run raw SQL on a store, behind the ledger's back (to simulate an older ledger)."""
    if store.kind == "sqlite":
        with closing(sqlite3.connect(store.where)) as db, db:
            db.execute(statement)
        return
    import psycopg

    with psycopg.connect(store.where, autocommit=True) as conn:
        conn.execute(statement.encode())


class LedgerFactory:
    """Opens new ledger instances on one store; closes them all at the end of the test."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.opened: list[Ledger] = []

    def __call__(self, clock: Callable[[], float] = time.time) -> Ledger:
        ledger = self.store.open(clock)
        self.opened.append(ledger)
        return ledger

    def close_all(self) -> None:
        for ledger in self.opened:
            ledger.close()
        self.opened.clear()


class Stores:
    """Makes fresh, empty stores of one backend (for tests that need one per example)."""

    def __init__(self, kind: str, tmp_path: Path, postgres_base: str | None) -> None:
        self.kind, self.tmp_path, self.postgres_base = kind, tmp_path, postgres_base

    def new(self) -> Store:
        if self.kind == "sqlite":
            return Store("sqlite", str(self.tmp_path / f"ledger-{uuid.uuid4().hex}.sqlite3"))
        from pg_server import create_database

        assert self.postgres_base is not None
        return Store("postgres", create_database(self.postgres_base))


@pytest.fixture(params=BACKENDS)
def ledger_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerFactory]:
    if request.param == "sqlite":
        store = Store("sqlite", str(tmp_path / "ledger.sqlite3"))
    else:
        store = Store("postgres", request.getfixturevalue("postgres_url"))
    factory = LedgerFactory(store)
    yield factory
    factory.close_all()


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    base = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    return Stores(request.param, tmp_path, base)


class Clock:
    """An injected clock; ``tick`` > 0 makes every reading later than the one before."""

    def __init__(self, now: float = T0, tick: float = 0.0) -> None:
        self.now, self.tick = now, tick
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.tick
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def new_payment(
    amount: int = 10,
    *,
    key: str | None = None,
    session: str | None = None,
    asset: str = ASSET,
    network: str = NETWORK,
) -> NewPayment:
    return NewPayment(
        idempotency_key=key,
        request_fingerprint=f"fp-{key}",
        method="GET",
        url="https://api.example/paid",
        request_body_sha256="0" * 64,
        x402_version=2,
        network=network,
        asset=asset,
        symbol="USDC",
        decimals=6,
        amount=amount,
        pay_to=PAYEE,
        requirement_json=json.dumps({"amount": str(amount), "payTo": PAYEE}),
        policy_version=3,
        policy_digest="sha256:policy",
        session=session,
    )


def query(
    now: float, *, session: str | None = None, asset: str = ASSET, network: str = NETWORK
) -> UsageQuery:
    return UsageQuery(network=network, asset=asset, day_start=now - DAY, now=now, session=session)


def allow(usage: Usage) -> None:
    return None


def reserve(ledger: Ledger, now: float, amount: int = 10, **kw: Any) -> PaymentRecord:
    return ledger.reserve(new_payment(amount, **kw), query(now, session=kw.get("session")), allow)


def send(
    ledger: Ledger, record: PaymentRecord, nonce: str | None = None, valid_before: int = 2_000_000_000
) -> PaymentRecord:
    return ledger.mark_sent(
        record.id,
        payer=PAYER,
        nonce=nonce or f"0x{record.id}",
        valid_after=0,
        valid_before=valid_before,
        payment_header=f"header-{record.id}",
    )


def make_policy(
    *, price: int, daily_max: int, session_allowance: int | None = None, day: str = "rolling_24h"
) -> Policy:
    doc: dict[str, Any] = {
        "version": 1,
        "day": {"kind": day},
        "assets": [
            {
                "network": NETWORK,
                "address": ASSET,
                "symbol": "USDC",
                "decimals": 6,
                "eip712_name": "USDC",
                "eip712_version": "2",
                "per_request_max": price,
                "daily_max": daily_max,
            }
        ],
    }
    if session_allowance is not None:
        doc["sessions"] = {
            "default": {"lifetime_seconds": 30 * 86_400, "allowance": {"USDC": session_allowance}}
        }
    return parse_policy(json.dumps(doc))


def make_offer(amount: int) -> Offer:
    requirement = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=ASSET,
        amount=str(amount),
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={"name": "USDC", "version": "2"},
    )
    return Offer(
        index=0,
        x402_version=2,
        scheme="exact",
        network=NETWORK,
        chain_id=84532,
        asset=ASSET,
        amount=amount,
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={"name": "USDC", "version": "2"},
        requirement=requirement,
    )


def make_context(session: str | None = None, key: str | None = None) -> PaymentContext:
    return PaymentContext(
        method="GET",
        url="https://api.example/paid",
        host="api.example",
        request_body_sha256="0" * 64,
        request_fingerprint=f"fp-{key}",
        idempotency_key=key,
        session=session,
    )


def all_rows(ledger: Ledger) -> list[PaymentRecord]:
    return ledger.recent(limit=10**9)


# ---- states and transitions ------------------------------------------------------------------
def test_reserved_sent_settled_round_trips_every_field(ledger_factory: LedgerFactory) -> None:
    clock = Clock(tick=0.5)
    ledger = ledger_factory(clock)
    payment = new_payment(LEDGER_AMOUNT_MAX, key="k-1", session="s-a")
    record = ledger.reserve(payment, query(T0, session="s-a"), allow)
    assert record.state is S.RESERVED and record.created_at == T0 + 0.5
    stored = ledger.get(record.id)
    assert stored == record
    assert stored is not None and stored.amount == LEDGER_AMOUNT_MAX
    assert type(stored.amount) is int and type(stored.x402_version) is int
    assert type(stored.created_at) is float

    sent = ledger.mark_sent(
        record.id,
        payer=PAYER,
        nonce="0x" + "ab" * 32,
        valid_after=7,
        valid_before=2**40,
        payment_header="base64-header",
    )
    assert sent.state is S.SENT and sent.sent_at == T0 + 1.0 and sent.updated_at == T0 + 1.5
    assert (sent.payer, sent.nonce, sent.valid_after, sent.valid_before, sent.payment_header) == (
        PAYER,
        "0x" + "ab" * 32,
        7,
        2**40,
        "base64-header",
    )

    settled = ledger.settle(
        record.id,
        settlement_tx="0xtx",
        response_status=200,
        response_content_type="application/json",
        response_body_sha256="f" * 64,
        delivered=True,
        evidence={"settle": {"success": True}},
    )
    assert settled.state is S.SETTLED and settled.finished_at == settled.updated_at == T0 + 2.0
    assert settled.delivered is True and settled.response_status == 200
    assert json.loads(settled.evidence_json or "") == {"settle": {"success": True}}
    assert ledger.get(record.id) == settled
    # Another instance (another process) reads the same row.
    assert ledger_factory().get(record.id) == settled


def test_sent_unknown_then_settled(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory(Clock(tick=1))
    record = send(ledger, reserve(ledger, T0))
    unknown = ledger.mark_unknown(
        record.id, evidence={"why": "timeout"}, response_status=504, delivered=False
    )
    assert unknown.state is S.UNKNOWN and unknown.finished_at is None
    assert unknown.delivered is False and unknown.response_status == 504
    again = ledger.mark_unknown(record.id, evidence={"why": "still pending"})
    assert again.state is S.UNKNOWN and json.loads(again.evidence_json or "") == {"why": "still pending"}
    settled = ledger.settle(record.id, settlement_tx="0xlate", delivered=False)
    assert settled.state is S.SETTLED and settled.settlement_tx == "0xlate"
    assert settled.delivered is False and settled.finished_at is not None


def test_verifications_end_in_one_batch(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory(Clock(tick=1))
    rows = [
        ledger.settle(
            send(ledger, reserve(ledger, T0)).id,
            settlement_tx=f"0x{i}",
            delivered=True,
            evidence={"status": 200},
            verification=Verification.PENDING,
        )
        for i in range(4)
    ]
    ok, bad, done, other = (row.id for row in rows)
    assert ledger.mark_verified({done: None}) == {done}
    mismatch = {"reason": "settlement_not_ours", "tx": "0x1"}
    # A verified one, a mismatch, one checked already (by another process): only the first two
    # change; the mismatch keeps the row's evidence and adds its own.
    assert ledger.mark_verified({ok: None, bad: mismatch, done: {"reason": "late"}}) == {ok, bad}
    states = {row.id: row for row in (ledger.get(i) for i in (ok, bad, done, other)) if row}
    assert states[ok].verification is Verification.VERIFIED
    assert states[bad].verification is Verification.MISMATCH
    assert json.loads(states[bad].evidence_json or "") == {"status": 200, "mismatch": mismatch}
    assert states[done].verification is Verification.VERIFIED
    assert states[other].verification is Verification.PENDING
    assert [row.id for row in ledger.unverified()] == [other]
    assert ledger.usage(query(T0 + 100)).settlement_mismatch == bad


@pytest.mark.parametrize(
    "path", [(), ("sent",), ("sent", "unknown")], ids=["from-reserved", "from-sent", "from-unknown"]
)
def test_release(ledger_factory: LedgerFactory, path: tuple[str, ...]) -> None:
    ledger = ledger_factory(Clock(tick=1))
    record = reserve(ledger, T0)
    if "sent" in path:
        send(ledger, record)
    if "unknown" in path:
        ledger.mark_unknown(record.id, evidence={})
    released = ledger.release(record.id, reason="expired")
    assert released.state is S.RELEASED and released.finished_at is not None
    assert json.loads(released.evidence_json or "") == {"released": "expired"}
    assert ledger.usage(query(T0 + 10)).daily_spent == 0


def _bring_to(ledger: Ledger, state: str) -> PaymentRecord:
    record = reserve(ledger, T0)
    if state in ("sent", "unknown", "settled"):
        record = send(ledger, record)
    if state == "unknown":
        record = ledger.mark_unknown(record.id, evidence={})
    if state == "settled":
        record = ledger.settle(record.id, settlement_tx="0xtx")
    if state == "released":
        record = ledger.release(record.id, reason="test")
    return record


MOVES: dict[str, Callable[[Ledger, str], PaymentRecord]] = {
    "mark_sent": lambda ledger, pid: ledger.mark_sent(
        pid, payer=PAYER, nonce=f"n-{pid}", valid_after=0, valid_before=1, payment_header="h"
    ),
    "settle": lambda ledger, pid: ledger.settle(pid, settlement_tx="0xtx"),
    "mark_unknown": lambda ledger, pid: ledger.mark_unknown(pid, evidence={}),
    "release": lambda ledger, pid: ledger.release(pid, reason="again"),
}
ILLEGAL = [
    ("reserved", "settle"),
    ("reserved", "mark_unknown"),
    *[(state, "mark_sent") for state in ("sent", "unknown", "settled", "released")],
]
# A finished row never moves: a change asked of it lost a race and is answered with the row.
LOST_RACES = [(end, move) for end in ("settled", "released") for move in MOVES if move != "mark_sent"]


@pytest.mark.parametrize(("state", "move"), ILLEGAL, ids=[f"{s}-{m}" for s, m in ILLEGAL])
def test_illegal_transitions_raise_and_change_nothing(
    ledger_factory: LedgerFactory, state: str, move: str
) -> None:
    ledger = ledger_factory(Clock(tick=1))
    record = _bring_to(ledger, state)
    with pytest.raises(LedgerError) as raised:
        MOVES[move](ledger, record.id)
    assert raised.value.reason == "invalid_transition"
    assert ledger.get(record.id) == record


@pytest.mark.parametrize(("state", "move"), LOST_RACES, ids=[f"{s}-{m}" for s, m in LOST_RACES])
def test_a_finished_row_answers_with_its_true_state(
    ledger_factory: LedgerFactory, state: str, move: str
) -> None:
    ledger = ledger_factory(Clock(tick=1))
    record = _bring_to(ledger, state)
    answer = MOVES[move](ledger, record.id)
    assert answer.state == record.state
    unchanged = ledger.get(record.id)
    if state == "settled" and move == "mark_unknown":  # its evidence was missing: filled in
        assert unchanged == answer and answer.evidence_json == "{}"
        unchanged = replace(answer, evidence_json=None)
    assert unchanged == record


def test_a_late_settle_fills_in_only_missing_evidence(ledger_factory: LedgerFactory) -> None:
    """A reconciler settles from the chain's nonce alone; the paying process's settle, which
    lost the race, completes the receipt with its transaction and response, keeping the rest."""
    ledger = ledger_factory(Clock(tick=1))
    record = send(ledger, reserve(ledger, T0))
    by_reconciler = ledger.settle(record.id, settlement_tx=None, evidence={"by": "reconcile"})
    by_payer = ledger.settle(
        record.id,
        settlement_tx="0xtx",
        response_status=200,
        response_content_type="application/json",
        response_body_sha256="ab" * 32,
        delivered=True,
        evidence={"by": "payer"},
    )
    assert by_payer == ledger.get(record.id)
    assert (
        by_payer.state,
        by_payer.settlement_tx,
        by_payer.response_status,
        by_payer.response_body_sha256,
        by_payer.delivered,
    ) == (S.SETTLED, "0xtx", 200, "ab" * 32, True)
    assert json.loads(by_payer.evidence_json or "") == {"by": "reconcile"}  # kept
    assert (by_payer.finished_at, by_payer.updated_at) == (
        by_reconciler.finished_at,
        by_reconciler.updated_at,
    )
    again = ledger.settle(record.id, settlement_tx="0xother", response_body_sha256="cd" * 32)
    assert again == by_payer  # nothing missing any more: nothing changes


def test_unknown_payment_cannot_move(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory()
    for move in MOVES.values():
        with pytest.raises(LedgerError) as raised:
            move(ledger, "no-such-payment")
        assert raised.value.reason == "invalid_transition"
    assert ledger.get("no-such-payment") is None


# ---- uniqueness ------------------------------------------------------------------------------
def test_idempotency_key_unique_among_live_rows(ledger_factory: LedgerFactory) -> None:
    clock = Clock(tick=1)
    first_view, second_view = ledger_factory(clock), ledger_factory(clock)
    first = reserve(first_view, T0, key="k-1")
    for view in (first_view, second_view):
        with pytest.raises(PaymentInFlight) as raised:
            reserve(view, T0, key="k-1")
        assert raised.value.details == {"idempotency_key": "k-1"}
    send(first_view, first)
    first_view.settle(first.id, settlement_tx="0xtx")
    with pytest.raises(PaymentInFlight):  # a settled payment still holds its key
        reserve(second_view, T0, key="k-1")
    assert [r.id for r in all_rows(second_view)] == [first.id]
    assert second_view.find_by_idempotency_key("k-1") == first_view.get(first.id)

    # A released attempt frees the key; the live attempt is found before released ones.
    attempt = reserve(first_view, T0, key="k-2")
    first_view.release(attempt.id, reason="not_sent")
    retry = reserve(second_view, T0, key="k-2")
    assert retry.id != attempt.id
    assert first_view.find_by_idempotency_key("k-2") == retry
    second_view.release(retry.id, reason="not_sent")
    latest = first_view.find_by_idempotency_key("k-2")
    assert latest is not None and latest.id == retry.id and latest.state is S.RELEASED
    assert first_view.find_by_idempotency_key("k-3") is None


def test_nonce_is_unique(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory(Clock(tick=1))
    a, b = reserve(ledger, T0), reserve(ledger, T0)
    send(ledger, a, nonce="0xsame")
    with pytest.raises(LedgerError) as raised:
        send(ledger, b, nonce="0xsame")
    assert raised.value.reason == "nonce_reused"
    assert ledger.get(b.id) == b
    assert send(ledger, b, nonce="0xother").state is S.SENT  # the ledger is still usable


# ---- receipts and reads ----------------------------------------------------------------------
def test_receipt_hides_the_payment_header(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory(Clock(tick=1))
    record = send(ledger, reserve(ledger, T0, amount=1234))
    settled = ledger.settle(record.id, settlement_tx="0xtx", delivered=True, evidence={"tx": "0xtx"})
    stored = ledger_factory().get(settled.id)
    assert stored is not None
    receipt = stored.to_receipt()
    assert "payment_header" not in receipt
    assert f"header-{record.id}" not in json.dumps(receipt)
    assert receipt["amount"] == "1234" and receipt["state"] == "settled"
    assert receipt["requirement"] == {"amount": "1234", "payTo": PAYEE}
    assert receipt["evidence"] == {"tx": "0xtx"} and receipt["delivered"] is True


def test_recent_get_and_unresolved(ledger_factory: LedgerFactory) -> None:
    clock = Clock(tick=1)
    ledger = ledger_factory(clock)
    states = ["settled", "reserved", "released", "sent", "unknown", "settled"]
    records = [_bring_to(ledger, s) for s in states]  # created in this order
    newest_first = [r.id for r in reversed(records)]
    assert [r.id for r in ledger.recent()] == newest_first
    assert [r.id for r in ledger.recent(limit=3)] == newest_first[:3]
    assert [r.id for r in ledger.recent(states=[S.SETTLED])] == [records[5].id, records[0].id]
    assert {r.id for r in ledger.recent(states=[S.RESERVED, S.SENT])} == {records[1].id, records[3].id}
    assert [r.id for r in ledger.unresolved()] == [records[1].id, records[3].id, records[4].id]
    for record in records:
        stored = ledger.get(record.id)
        assert stored is not None and str(stored.state) == states[records.index(record)]


# ---- usage seen by reservations --------------------------------------------------------------
def test_reserve_check_sees_every_counted_row(ledger_factory: LedgerFactory) -> None:
    clock = Clock(now=T0 - 2 * DAY, tick=0.001)
    ledger = ledger_factory(clock)
    reserve(ledger, clock.now, amount=1000)  # two days ago: outside the window
    clock.advance(2 * DAY - 3600)
    amounts = {"reserved": 1, "sent": 2, "unknown": 4, "settled": 8, "released": 16}
    for state, amount in amounts.items():
        record = reserve(ledger, clock.now, amount=amount)
        if state in ("sent", "unknown", "settled", "released"):
            send(ledger, record)
        if state == "unknown":
            ledger.mark_unknown(record.id, evidence={})
        if state == "settled":
            ledger.settle(record.id, settlement_tx="0xtx")
        if state == "released":
            ledger.release(record.id, reason="test")
    reserve(ledger, clock.now, amount=32, asset=OTHER_ASSET)
    reserve(ledger, clock.now, amount=64, network=OTHER_NETWORK)

    seen: list[Usage] = []
    now = clock.now + 1
    ledger_factory(clock).reserve(new_payment(128), query(now), seen.append)
    assert len(seen) == 1
    assert seen[0].daily_spent == 1 + 2 + 4 + 8
    # The rate counts every asset and network, and not released rows.
    assert seen[0].payments_last_minute == 6
    assert ledger.usage(query(now + 1)).daily_spent == 1 + 2 + 4 + 8 + 128
    assert ledger.usage(query(now + 1)).payments_last_minute == 7
    assert ledger.usage(query(now + 120)).payments_last_minute == 0
    assert ledger.usage(query(now, asset=OTHER_ASSET)).daily_spent == 32


def test_refusing_check_inserts_nothing(ledger_factory: LedgerFactory) -> None:
    ledger = ledger_factory(Clock())

    def refuse(usage: Usage) -> None:
        raise PolicyDenied("no", reason="daily_limit_exceeded")

    with pytest.raises(PolicyDenied):
        ledger.reserve(new_payment(5, key="k", session="s-a"), query(T0, session="s-a"), refuse)

    def crash(usage: Usage) -> None:
        raise RuntimeError("check failed")

    with pytest.raises(RuntimeError):
        ledger.reserve(new_payment(5, key="k"), query(T0), crash)
    assert all_rows(ledger) == []
    usage = ledger.usage(query(T0, session="s-a"))
    assert usage == Usage()  # no session was opened either
    assert ledger.find_by_idempotency_key("k") is None
    reserve(ledger, T0, key="k")  # the key was never taken


def test_day_window_boundary(ledger_factory: LedgerFactory) -> None:
    clock = Clock()
    ledger = ledger_factory(clock)
    reserve(ledger, T0, amount=1)
    clock.advance(0.001)
    reserve(ledger, T0, amount=2)
    assert ledger.usage(UsageQuery(NETWORK, ASSET, day_start=T0, now=T0 + 1)).daily_spent == 3
    assert ledger.usage(UsageQuery(NETWORK, ASSET, day_start=T0 + 0.0005, now=T0 + 1)).daily_spent == 2
    assert ledger.usage(UsageQuery(NETWORK, ASSET, day_start=T0 + 0.002, now=T0 + 1)).daily_spent == 0


def _rows_around_bucket_edges(ledger: Ledger, clock: Clock) -> list[PaymentRecord]:
    """Rows on, just before and just after 10-minute bucket edges over two days, some released,
    some in another asset; the returned list is every row."""
    edge = (T0 // 600) * 600 - 2 * DAY
    for k in range(0, 2 * 144, 7):
        for offset in (-1e-6, 0.0, 1e-6, 0.5, 299.25, 599.75, 600 - 1e-6):
            clock.now = edge + k * 600 + offset
            record = reserve(ledger, clock.now, amount=1 + k % 13, asset=OTHER_ASSET if k % 5 == 0 else ASSET)
            if k % 3 == 0:
                ledger.release(record.id, reason="test")
    return all_rows(ledger)


def _assert_windows_match_a_recount(ledger: Ledger, rows: list[PaymentRecord]) -> None:
    counted = [r for r in rows if r.state in COUNTED_STATES and r.asset == ASSET]
    starts = {r.created_at + d for r in rows for d in (-1e-6, 0.0, 1e-6)}
    starts |= {(T0 // 600) * 600 - DAY + k * 600 for k in range(-2, 3)}
    for start in sorted(starts):
        expected = sum(r.amount for r in counted if r.created_at >= start)
        usage = ledger.usage(UsageQuery(NETWORK, ASSET, day_start=start, now=start + DAY))
        assert usage.daily_spent == expected, start


def test_day_window_equals_a_recount_at_any_start(ledger_factory: LedgerFactory) -> None:
    clock = Clock()
    ledger = ledger_factory(clock)
    rows = _rows_around_bucket_edges(ledger, clock)
    assert len(rows) > 200
    _assert_windows_match_a_recount(ledger_factory(), rows)


def test_ledger_without_usage_counters_builds_them(ledger_factory: LedgerFactory) -> None:
    """A ledger written before the usage counters existed: reads scan the rows, the first
    write builds the counters, and every window still equals a recount."""
    clock = Clock()
    rows = _rows_around_bucket_edges(ledger_factory(clock), clock)
    ledger_factory.close_all()
    execute(ledger_factory.store, "DELETE FROM usage_buckets")
    execute(ledger_factory.store, "DELETE FROM ledger_meta WHERE key = 'usage_buckets'")
    old = ledger_factory(clock)
    _assert_windows_match_a_recount(old, rows)
    clock.advance(1)
    reserve(old, clock.now, amount=1)  # the first write builds the counters
    rows = all_rows(old)
    _assert_windows_match_a_recount(old, rows)
    _assert_windows_match_a_recount(ledger_factory(clock), rows)


@pytest.mark.parametrize("day", ["rolling_24h", "calendar"])
def test_gate_counts_only_the_current_day(ledger_factory: LedgerFactory, day: str) -> None:
    midnight = T0 - T0 % DAY  # UTC midnight
    # Rolling: payments 25 hours ago no longer count. Calendar: yesterday's last minute doesn't.
    first, second = (
        (midnight - 25 * 3600, midnight) if day == "rolling_24h" else (midnight - 60, midnight + 60)
    )
    clock = Clock(now=first, tick=0.001)
    policy = make_policy(price=10, daily_max=30, day=day)
    gate = PolicyGate(policy, ledger_factory(clock), clock=clock)
    for _ in range(3):
        gate.reserve(make_offer(10), make_context())
    with pytest.raises(PolicyDenied) as raised:
        gate.reserve(make_offer(10), make_context())
    assert raised.value.reason == "daily_limit_exceeded"
    clock.advance(second - first)
    for _ in range(3):
        gate.reserve(make_offer(10), make_context())
    with pytest.raises(PolicyDenied):
        gate.reserve(make_offer(10), make_context())
    assert len([r for r in all_rows(gate.ledger) if r.state in COUNTED_STATES]) == 6


# ---- sessions, breaker, budget ---------------------------------------------------------------
def test_sessions(ledger_factory: LedgerFactory) -> None:
    clock = Clock(tick=1)
    ledger = ledger_factory(clock)
    ledger.open_session("s-a", "default", T0 - 100)
    ledger.open_session("s-a", "other", T0 - 50)  # first start wins
    reserve(ledger, T0, amount=10, session="s-a")
    reserve(ledger, T0, amount=20, session="s-a")
    ledger.release(reserve(ledger, T0, amount=40, session="s-a").id, reason="test")
    reserve(ledger, T0, amount=80, session="s-a", asset=OTHER_ASSET)
    reserve(ledger, T0, amount=160)
    b = reserve(ledger, T0, amount=5, session="s-b")  # a session starts at its first payment
    ledger.open_session("s-b", "default", T0 + 1000)
    view = ledger_factory()
    usage_a = view.usage(query(T0 + 100, session="s-a"))
    assert (usage_a.session_spent, usage_a.session_started_at) == (30, T0 - 100)
    assert usage_a.daily_spent == 10 + 20 + 160 + 5
    usage_b = view.usage(query(T0 + 100, session="s-b"))
    assert (usage_b.session_spent, usage_b.session_started_at) == (5, b.created_at)
    assert view.usage(query(T0 + 100, session="s-c")).session_started_at is None
    assert view.budget(T0 - DAY, T0 + 100).sessions == {
        "s-a": {f"{NETWORK}/{ASSET}": 30, f"{NETWORK}/{OTHER_ASSET}": 80},
        "s-b": {f"{NETWORK}/{ASSET}": 5},
    }


def test_consecutive_failures_and_breaker_reset(ledger_factory: LedgerFactory) -> None:
    clock = Clock(tick=1)
    ledger = ledger_factory(clock)

    def outcome(kind: str) -> None:
        record = send(ledger, reserve(ledger, clock.now))
        if kind == "ok":
            ledger.settle(record.id, settlement_tx="0xtx", delivered=True)
        elif kind == "undelivered":
            ledger.settle(record.id, settlement_tx="0xtx", delivered=False)
        else:
            ledger.mark_unknown(record.id, evidence={})

    def failures() -> int:
        usage = ledger.usage(query(clock.now))
        assert usage.consecutive_failures == ledger.budget(clock.now - DAY, clock.now).consecutive_failures
        return usage.consecutive_failures

    assert failures() == 0
    outcome("ok")
    outcome("unknown")
    outcome("undelivered")
    reserve(ledger, clock.now)  # reserved, sent and released rows are not outcomes
    ledger.release(reserve(ledger, clock.now).id, reason="test")
    assert failures() == 2
    outcome("ok")
    assert failures() == 0
    outcome("unknown")
    outcome("unknown")
    assert failures() == 2
    reset_at = clock()
    ledger_factory().reset_breaker(reset_at)
    assert failures() == 0
    assert ledger.budget(clock.now - DAY, clock.now).breaker_reset_at == reset_at
    outcome("undelivered")
    assert failures() == 1


def test_budget_snapshot(ledger_factory: LedgerFactory) -> None:
    clock = Clock(now=T0 - 2 * DAY, tick=1)
    ledger = ledger_factory(clock)
    old = send(ledger, reserve(ledger, clock.now, amount=1000))
    ledger.mark_unknown(old.id, evidence={})  # two days old, still unresolved
    clock.advance(2 * DAY)
    amounts = {"reserved": 1, "sent": 2, "unknown": 4, "settled": 8, "released": 16}
    for state, amount in amounts.items():
        record = reserve(ledger, clock.now, amount=amount, session="s-a")
        if state != "reserved":
            send(ledger, record)
        if state == "unknown":
            ledger.mark_unknown(record.id, evidence={})
        if state == "settled":
            ledger.settle(record.id, settlement_tx="0xtx")
        if state == "released":
            ledger.release(record.id, reason="test")
    reserve(ledger, clock.now, amount=32, asset=OTHER_ASSET)
    snapshot = ledger_factory().budget(clock.now - DAY, clock.now)
    by_asset = {(a.network, a.asset): a for a in snapshot.assets}
    main = by_asset[(NETWORK, ASSET)]
    assert (main.day_counted, main.in_flight, main.unknown, main.unknown_count) == (
        1 + 2 + 4 + 8,
        1 + 2,
        1000 + 4,
        2,
    )
    other = by_asset[(NETWORK, OTHER_ASSET)]
    assert (other.day_counted, other.in_flight, other.unknown, other.unknown_count) == (32, 32, 0, 0)
    assert snapshot.sessions == {"s-a": {f"{NETWORK}/{ASSET}": 1 + 2 + 4 + 8}}
    # The newest outcome is a settlement (delivery not recorded): no failure streak.
    assert snapshot.consecutive_failures == 0 and snapshot.breaker_reset_at is None


# ---- PostgreSQL specifics ---------------------------------------------------------------------
def test_postgres_unreachable_is_a_ledger_error() -> None:
    from x402_agent.ledger.postgres import PostgresLedger

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LedgerError) as raised:
        PostgresLedger(f"postgresql://postgres:secret@127.0.0.1:{port}/ledger")
    assert "cannot open ledger postgresql://postgres@127.0.0.1" in raised.value.message
    assert "secret" not in raised.value.message


def test_postgres_replaces_connections_the_server_dropped(postgres_url: str) -> None:
    import psycopg

    from x402_agent.ledger.postgres import PostgresLedger

    ledger = PostgresLedger(postgres_url, clock=Clock(tick=1))
    try:
        record = reserve(ledger, T0)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert ledger.get(record.id) == record  # the dead pooled connection was replaced
        send(ledger, record)
        assert ledger.usage(query(T0 + 10)).daily_spent == 10
    finally:
        ledger.close()


def test_only_the_postgres_backend_imports_psycopg() -> None:
    code = (
        "import sys, x402_agent.ledger, x402_agent.spendgate, x402_agent.operations; "
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---- concurrency with the real gate ----------------------------------------------------------
PRICE = 7
FITS = 20  # payments the daily limit allows


@dataclass
class RaceResult:
    reserved: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def merge(self, other: RaceResult) -> None:
        self.reserved += other.reserved
        self.denied += other.denied
        self.errors += other.errors


def _race(
    ledgers: Sequence[Ledger],
    policy: Policy,
    threads: int,
    attempts: int,
    start: Any,
    session: str | None = None,
) -> RaceResult:
    """``threads`` threads (over ``ledgers`` in turn) each try ``attempts`` reservations,
    all starting together at ``start`` (a barrier)."""
    result = RaceResult()
    lock = threading.Lock()

    def run(ledger: Ledger) -> None:
        gate = PolicyGate(policy, ledger)
        mine = RaceResult()
        try:
            start.wait(timeout=120)
            for _ in range(attempts):
                try:
                    mine.reserved.append(gate.reserve(make_offer(PRICE), make_context(session)).id)
                except PolicyDenied as exc:
                    mine.denied.append(exc.reason)
        except Exception as exc:  # reported, not lost in a thread
            mine.errors.append(repr(exc))
        with lock:
            result.merge(mine)

    workers = [threading.Thread(target=run, args=(ledgers[i % len(ledgers)],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return result


def _race_process(
    store: Store, policy_json: str, threads: int, attempts: int, start: Any, results: Any
) -> None:
    try:
        ledger = store.open()
        try:
            result = _race([ledger], parse_policy(policy_json), threads, attempts, start)
        finally:
            ledger.close()
        results.put(result)
    except BaseException as exc:
        results.put(RaceResult(errors=[f"process failed: {exc!r}"]))


def test_gate_race_threads_and_processes(ledger_factory: LedgerFactory) -> None:
    policy = make_policy(price=PRICE, daily_max=FITS * PRICE)
    processes, threads, attempts, local_threads = 3, 4, 5, 6
    total = (processes * threads + local_threads) * attempts
    assert total > 3 * FITS
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes * threads + local_threads)
    results = ctx.Queue()
    children = [
        ctx.Process(
            target=_race_process,
            args=(
                ledger_factory.store,
                policy.model_dump_json(by_alias=True),
                threads,
                attempts,
                start,
                results,
            ),
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        outcome = _race([ledger_factory(), ledger_factory()], policy, local_threads, attempts, start)
        for _ in children:
            outcome.merge(results.get(timeout=180))
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()
    assert outcome.errors == []
    assert all(child.exitcode == 0 for child in children)
    assert len(outcome.reserved) == FITS
    assert len(outcome.denied) == total - FITS
    assert set(outcome.denied) == {"daily_limit_exceeded"}
    ledger = ledger_factory()
    rows = all_rows(ledger)
    assert sorted(r.id for r in rows) == sorted(outcome.reserved)
    assert ledger.usage(query(time.time())).daily_spent == FITS * PRICE


def test_gate_race_threads_on_one_instance_with_a_session(ledger_factory: LedgerFactory) -> None:
    fits = 6
    policy = make_policy(price=PRICE, daily_max=FITS * PRICE, session_allowance=fits * PRICE)
    threads = 12
    outcome = _race([ledger_factory()], policy, threads, 3, threading.Barrier(threads), session="s-a")
    assert outcome.errors == []
    assert len(outcome.reserved) == fits
    assert outcome.denied == ["session_allowance_exceeded"] * (threads * 3 - fits)
    assert ledger_factory().usage(query(time.time(), session="s-a")).session_spent == (fits * PRICE)


# ---- property-based: random interleavings ----------------------------------------------------
DAILY_MAX = 100
ALLOWANCE = 60  # per session, when the policy has a session rule

# How often each kind of step is drawn: reservations and the moves that follow them dominate.
KINDS = ["reserve"] * 4 + ["send"] * 3 + ["unknown"] * 2 + ["settle"] * 2 + ["release", "expire"]


@dataclass(frozen=True)
class Step:
    """One step of a random script. ``expire`` releases an unknown payment whose authorization
    has passed its validBefore (it can never settle)."""

    kind: str
    amount: int = 1  # reserve
    session: str | None = None  # reserve
    pick: int = 0  # which payment a state change applies to
    legal: bool = True  # pick among the payments the change is legal for (else among all)
    offset: int = 0  # send: validBefore - now, in seconds
    delivered: bool = True  # settle
    view: int = 0  # model test: which ledger instance (process view) acts
    advance: float = 0.0  # model test: how far the clock moves before the step


def step_strategy(*, views: int = 1, clock_moves: bool = False) -> st.SearchStrategy[Step]:
    return st.builds(
        Step,
        kind=st.sampled_from(KINDS),
        amount=st.integers(1, 60),
        session=st.sampled_from([None, None, *SESSIONS]),
        pick=st.integers(0, 63),
        legal=st.sampled_from([True, True, True, True, False]),
        offset=st.integers(-3, 3),
        delivered=st.booleans(),
        view=st.integers(0, views - 1),
        advance=(st.sampled_from([0.0] * 16 + [1.0, 3600.0, 40_000.0, DAY]) if clock_moves else st.just(0.0)),
    )


_TRANSITIONS: dict[str, tuple[PaymentState, frozenset[PaymentState]]] = {
    "send": (S.SENT, frozenset({S.RESERVED})),
    "settle": (S.SETTLED, frozenset({S.SENT, S.UNKNOWN})),
    "unknown": (S.UNKNOWN, frozenset({S.SENT, S.UNKNOWN})),
    "release": (S.RELEASED, frozenset({S.RESERVED, S.SENT, S.UNKNOWN})),
}


@dataclass
class Tracked:
    """What a test expects of one payment it made."""

    id: str
    amount: int
    session: str | None
    created_at: float
    state: PaymentState = S.RESERVED
    valid_before: int | None = None

    def expired(self, now: float) -> bool:
        return self.state is S.UNKNOWN and self.valid_before is not None and self.valid_before < now


@dataclass(frozen=True)
class Limits:
    daily_max: int
    allowance: int | None

    def policy(self) -> Policy:
        return make_policy(price=self.daily_max, daily_max=self.daily_max, session_allowance=self.allowance)


def choose(payments: list[Tracked], step: Step, now: float) -> Tracked | None:
    if step.legal:
        legal = (
            [p for p in payments if p.expired(now)]
            if step.kind == "expire"
            else [p for p in payments if p.state in _TRANSITIONS[step.kind][1]]
        )
        payments = legal or payments
    return payments[step.pick % len(payments)] if payments else None


def apply_transition(ledger: Ledger, payment: Tracked, step: Step, now: float) -> str | None:
    """Apply one state change to a payment whose state we know; return a problem or None."""
    kind = step.kind
    if kind == "expire":
        if not payment.expired(now):
            return None
        kind = "release"
    target, sources = _TRANSITIONS[kind]
    valid_before = int(now) + step.offset
    # A finished payment never moves; any change but a send answers with it as it is.
    answers = payment.state in (S.SETTLED, S.RELEASED) and kind != "send"
    try:
        if kind == "send":
            record = ledger.mark_sent(
                payment.id,
                payer=PAYER,
                nonce=f"0x{payment.id}",
                valid_after=0,
                valid_before=valid_before,
                payment_header="header",
            )
        elif kind == "settle":
            record = ledger.settle(payment.id, settlement_tx=f"0x{payment.id}", delivered=step.delivered)
        elif kind == "unknown":
            record = ledger.mark_unknown(payment.id, evidence={"why": "timeout"})
        else:
            record = ledger.release(payment.id, reason=step.kind)
    except LedgerError as exc:
        if payment.state in sources or answers or exc.reason != "invalid_transition":
            return f"{kind} of a {payment.state} payment raised {exc.reason}: {exc}"
        return None
    if answers:
        return (
            None
            if record.state is payment.state
            else (f"{kind} of a {payment.state} payment answered {record.state}")
        )
    if payment.state not in sources:
        return f"{kind} moved a {payment.state} payment to {record.state}"
    if record.state is not target:
        return f"{kind} left the payment {record.state}"
    payment.state = target
    if kind == "send":
        payment.valid_before = valid_before
    return None


def try_reserve(gate: PolicyGate, step: Step) -> tuple[PaymentRecord | None, str]:
    try:
        return gate.reserve(make_offer(step.amount), make_context(step.session)), "allowed"
    except PolicyDenied as exc:
        return None, exc.reason


def check_invariants(ledger: Ledger, now: float, limits: Limits, *, exact: bool) -> list[str]:
    """The sum of counted rows in the day window never exceeds the daily limit (nor a session's
    allowance); with ``exact``, the ledger's own usage equals a recount of its rows."""
    problems = []
    counted = [r for r in all_rows(ledger) if r.state in COUNTED_STATES]
    daily = sum(r.amount for r in counted if r.created_at >= now - DAY)
    usage = ledger.usage(query(now))
    if daily > limits.daily_max or usage.daily_spent > limits.daily_max:
        problems.append(f"daily limit exceeded: rows {daily}, usage {usage.daily_spent}")
    if exact and usage.daily_spent != daily:
        problems.append(f"usage {usage.daily_spent} != recount {daily}")
    for session in SESSIONS:
        spent = sum(r.amount for r in counted if r.session == session)
        session_usage = ledger.usage(query(now, session=session)).session_spent
        if limits.allowance is not None and max(spent, session_usage) > limits.allowance:
            problems.append(f"session {session} allowance exceeded: {spent}/{session_usage}")
        if exact and session_usage != spent:
            problems.append(f"session {session}: usage {session_usage} != recount {spent}")
    return problems


def run_script(
    ledger: Ledger, gate: PolicyGate, clock: Callable[[], float], script: list[Step], limits: Limits
) -> tuple[list[Tracked], list[str]]:
    """One thread's (or process's) part: its own payments, its own expectations of them."""
    mine: list[Tracked] = []
    problems: list[str] = []
    for step in script:
        if step.kind == "reserve":
            record, reason = try_reserve(gate, step)
            if record is not None:
                mine.append(Tracked(record.id, step.amount, step.session, record.created_at))
            elif reason not in ("daily_limit_exceeded", "session_allowance_exceeded"):
                problems.append(f"unexpected refusal {reason}")
        else:
            now = clock()
            payment = choose(mine, step, now)
            problem = payment and apply_transition(ledger, payment, step, now)
            if problem:
                problems.append(problem)
        problems += check_invariants(ledger, clock(), limits, exact=False)
    return mine, problems


def check_final(ledger: Ledger, tracked: list[Tracked], limits: Limits, now: float) -> None:
    for payment in tracked:
        stored = ledger.get(payment.id)
        assert stored is not None and stored.state is payment.state, payment
    assert sorted(r.id for r in all_rows(ledger)) == sorted(p.id for p in tracked)
    assert check_invariants(ledger, now, limits, exact=True) == []


# Each example makes its own fresh store, so function-scoped fixtures are safe to share.
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


# Deterministic interleavings over three instances, with an exact model of every decision.
@settings(deadline=None, max_examples=60, suppress_health_check=HEALTH)
@given(
    steps=st.lists(step_strategy(views=3, clock_moves=True), min_size=5, max_size=40),
    with_sessions=st.booleans(),
)
def test_interleavings_match_a_model(stores: Stores, steps: list[Step], with_sessions: bool) -> None:
    limits = Limits(DAILY_MAX, ALLOWANCE if with_sessions else None)
    policy = limits.policy()
    clock = Clock(tick=0.25)
    factory = LedgerFactory(stores.new())
    try:
        views = [factory(clock) for _ in range(3)]
        gates = [PolicyGate(policy, view, clock=clock) for view in views]
        model: list[Tracked] = []
        for step in steps:
            clock.advance(step.advance)
            ledger = views[step.view]
            if step.kind == "reserve":
                day_start = clock.now + clock.tick - DAY  # the gate reads the clock first
                counted = [p for p in model if p.state in COUNTED_STATES]
                daily = sum(p.amount for p in counted if p.created_at >= day_start)
                spent = sum(p.amount for p in counted if p.session == step.session)
                expected = (
                    "daily_limit_exceeded"
                    if daily + step.amount > DAILY_MAX
                    else "session_allowance_exceeded"
                    if (with_sessions and step.session is not None and spent + step.amount > ALLOWANCE)
                    else "allowed"
                )
                record, reason = try_reserve(gates[step.view], step)
                assert reason == expected
                if record is not None:
                    model.append(Tracked(record.id, step.amount, step.session, record.created_at))
            else:
                now = clock()
                payment = choose(model, step, now)
                if payment is not None:
                    problem = apply_transition(ledger, payment, step, now)
                    assert problem is None, problem
            event(f"{step.kind}: {'ok' if step.kind != 'reserve' else reason}")
            assert check_invariants(ledger, clock(), limits, exact=True) == []
        check_final(views[0], model, limits, clock())
        for payment in model:
            event(f"ends {payment.state}")
    finally:
        factory.close_all()


def _run_threads(
    ledgers: Sequence[Ledger], policy: Policy, scripts: list[list[Step]], limits: Limits
) -> tuple[list[Tracked], list[str]]:
    """One thread per script, all starting together; thread i uses ledgers[i % n]."""
    start = threading.Barrier(len(scripts))
    tracked: list[Tracked] = []
    problems: list[str] = []
    lock = threading.Lock()

    def run(index: int, script: list[Step]) -> None:
        ledger = ledgers[index % len(ledgers)]
        try:
            start.wait(timeout=60)
            mine, found = run_script(ledger, PolicyGate(policy, ledger), time.time, script, limits)
        except Exception as exc:
            mine, found = [], [f"thread failed: {exc!r}"]
        with lock:
            tracked.extend(mine)
            problems.extend(found)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(scripts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tracked, problems


# Free-running threads: the interleaving is the scheduler's; each thread knows its own rows.
@settings(deadline=None, max_examples=40, suppress_health_check=HEALTH)
@given(
    scripts=st.lists(st.lists(step_strategy(), min_size=3, max_size=15), min_size=2, max_size=5),
    with_sessions=st.booleans(),
)
def test_interleavings_across_threads(stores: Stores, scripts: list[list[Step]], with_sessions: bool) -> None:
    limits = Limits(DAILY_MAX, ALLOWANCE if with_sessions else None)
    factory = LedgerFactory(stores.new())
    try:
        views = [factory() for _ in range(2)]
        tracked, problems = _run_threads(views, limits.policy(), scripts, limits)
        assert problems == []
        check_final(views[0], tracked, limits, time.time())
    finally:
        factory.close_all()


def _script_process(
    store: Store, policy_json: str, limits: Limits, scripts: list[list[Step]]
) -> tuple[list[Tracked], list[str]]:
    """In a spawned process: its own ledger instance, one thread per script."""
    ledger = store.open()
    try:
        return _run_threads([ledger], parse_policy(policy_json), scripts, limits)
    finally:
        ledger.close()


def _noop(_: int) -> int:
    return 0


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """Spawned worker processes, started once and reused by every example."""
    workers = 3
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(_noop, range(workers))) == [0] * workers
        yield pool


@settings(deadline=None, max_examples=15, suppress_health_check=HEALTH)
@given(
    scripts=st.lists(
        st.lists(st.lists(step_strategy(), min_size=3, max_size=12), min_size=1, max_size=2),
        min_size=3,
        max_size=3,
    ),
    with_sessions=st.booleans(),
)
def test_interleavings_across_processes(
    stores: Stores, process_pool: ProcessPoolExecutor, scripts: list[list[list[Step]]], with_sessions: bool
) -> None:
    limits = Limits(DAILY_MAX, ALLOWANCE if with_sessions else None)
    store = stores.new()
    factory = LedgerFactory(store)
    try:
        ledger = factory()  # creates the schema before the processes race
        policy_json = limits.policy().model_dump_json(by_alias=True)
        futures = [process_pool.submit(_script_process, store, policy_json, limits, part) for part in scripts]
        outcomes = [future.result(timeout=180) for future in futures]
        assert [p for _, problems in outcomes for p in problems] == []
        check_final(ledger, [t for tracked, _ in outcomes for t in tracked], limits, time.time())
    finally:
        factory.close_all()
