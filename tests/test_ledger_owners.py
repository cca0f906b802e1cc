"""Payments in flight belong to the opener (process) that made them, on every backend: another
opener leaves a live owner's rows alone, takes over those of an owner that died (SIGKILL, so
nothing was closed) or that name no owner (a ledger written before owners were recorded), and
of several openers taking over at once exactly one gets each row."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_ledger import (
    ASSET,
    NETWORK,
    T0,
    Clock,
    LedgerFactory,
    Store,
    all_rows,
    execute,
    ledger_factory,
    query,
    reserve,
    send,
)

from x402_agent.ledger import Claim, Ledger, Ownership, PaymentState, SQLiteLedger
from x402_agent.ledger.owners import advisory_key

S = PaymentState
__all__ = ["ledger_factory"]  # the fixture, used here: one ledger store per backend
# A process that opens the ledger, leaves one payment sent and one reserved, says which, and
# waits to be killed.
CHILD = """
import sys
sys.path.insert(0, sys.argv[3])
from test_ledger import Store, reserve, send, T0
ledger = Store(sys.argv[1], sys.argv[2]).open(lambda: T0)
sent = send(ledger, reserve(ledger, T0))
reserved = reserve(ledger, T0)
print(ledger.owner, sent.id, reserved.id, flush=True)
sys.stdin.read()
"""


def in_flight_of_another_process(store: Store) -> tuple[subprocess.Popen[str], list[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store.kind, store.where, str(Path(__file__).parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    return child, child.stdout.readline().split()


def killed(child: subprocess.Popen[str], store: Store, owner: str) -> None:
    """SIGKILL ``child`` and wait until its lock is free: at once for a file lock (the kernel
    frees it as the process exits); PostgreSQL ends the session when it notices the closed
    connection, a moment later."""
    child.send_signal(signal.SIGKILL)  # nothing closed: only the OS/server frees the lock
    assert child.wait(timeout=30) == -signal.SIGKILL
    if store.kind == "postgres":
        import psycopg

        deadline = time.monotonic() + 30
        with psycopg.connect(store.where, autocommit=True) as conn:
            while conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                "objsubid = 1 AND (classid::bigint << 32) | objid::bigint = %s",
                (advisory_key(owner),),
            ).fetchone() != (0,):
                assert time.monotonic() < deadline, "the server kept a dead session's lock"


def ids(claims: list[Claim]) -> dict[str, Ownership]:
    return {c.record.id: c.ownership for c in claims}


def test_a_live_owners_rows_are_left_alone(ledger_factory: LedgerFactory) -> None:
    mine = ledger_factory(Clock(tick=1))
    sent = send(mine, reserve(mine, T0))
    reserved = reserve(mine, T0)
    other = ledger_factory(Clock(tick=1))  # another opener, as a starting process is
    child, (_, child_sent, child_reserved) = in_flight_of_another_process(ledger_factory.store)
    try:
        before = all_rows(mine)
        assert other.claim_orphans() == [] and mine.claim_orphans() == []
        for ledger in (other, mine):
            for pid in (sent.id, reserved.id, child_sent, child_reserved):
                claim = ledger.claim(pid)
                expected = (
                    Ownership.MINE if ledger is mine and pid in (sent.id, reserved.id) else Ownership.LIVE
                )
                assert claim.ownership is expected and claim.record.state is not S.RELEASED
        assert all_rows(other) == before  # nothing moved, nothing changed hands
        assert mine.settle(sent.id, settlement_tx="0xtx").settlement_tx == "0xtx"
    finally:
        child.kill()
        child.wait(timeout=30)


def test_a_dead_owners_rows_are_taken_over_once(ledger_factory: LedgerFactory) -> None:
    store = ledger_factory.store
    child, (owner, sent, reserved) = in_flight_of_another_process(store)
    killed(child, store, owner)
    first, second = ledger_factory(Clock(tick=1)), ledger_factory(Clock(tick=1))
    taken: list[list[Claim]] = [[], []]

    def take(ledger: Ledger) -> None:
        taken[0 if ledger is first else 1] = ledger.claim_orphans()

    racers = [threading.Thread(target=take, args=(ledger,)) for ledger in (first, second)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    got = [ids(claims) for claims in taken]
    assert {**got[0], **got[1]} == {sent: Ownership.ORPHANED, reserved: Ownership.ORPHANED}
    assert not set(got[0]) & set(got[1])  # each row taken over exactly once
    holder = first if got[0] else second
    assert {c.record.state for c in taken[0] + taken[1]} == {S.SENT, S.RESERVED}
    if store.kind == "sqlite":  # the dead owner's lock file is gone
        assert not (Path(store.where + ".owners") / f"{owner}.lock").exists()

    # Taken over means owned by a live opener again: left alone until it, too, is gone.
    later = ledger_factory(Clock(tick=1))
    assert later.claim_orphans() == [] and later.claim(sent).ownership is Ownership.LIVE
    holder.close()
    ledger_factory.opened.remove(holder)
    assert ids(later.claim_orphans()) == {sent: Ownership.ORPHANED, reserved: Ownership.ORPHANED}
    # What a restart then does with them (start-up reconciliation, flow.reconcile): counted
    # until resolved; a release of the never-sent one frees its amount.
    assert later.usage(query(T0)).daily_spent == 20
    later.release(reserved, reason="abandoned_before_sending")
    assert later.usage(query(T0)).daily_spent == 10


def test_a_claim_of_one_row_takes_over_a_dead_owners(ledger_factory: LedgerFactory) -> None:
    """An idempotent retry resumes a payment whose process died (flow._resume)."""
    child, (owner, sent, reserved) = in_flight_of_another_process(ledger_factory.store)
    ledger = ledger_factory(Clock(tick=1))
    assert ledger.claim(sent).ownership is Ownership.LIVE
    killed(child, ledger_factory.store, owner)
    claim = ledger.claim(sent)
    assert (claim.ownership, claim.record.state) == (Ownership.ORPHANED, S.SENT)
    assert ledger.claim(sent).ownership is Ownership.MINE
    assert ids(ledger.claim_orphans()) == {reserved: Ownership.ORPHANED}


def test_a_ledger_without_owners_opens_and_keeps_every_row_counted(ledger_factory: LedgerFactory) -> None:
    """A ledger written by the release before owners: every row is kept and counted, and its
    rows in flight are ownerless, so the first opener may resolve them."""
    old = ledger_factory(Clock(tick=1))
    rows = {
        "reserved": reserve(old, T0),
        "sent": send(old, reserve(old, T0)),
        "unknown": old.mark_unknown(send(old, reserve(old, T0)).id, evidence={}),
        "settled": old.settle(send(old, reserve(old, T0)).id, settlement_tx="0xtx"),
        "released": old.release(reserve(old, T0).id, reason="test"),
    }
    usage, budget = old.usage(query(T0)), old.budget(T0 - 86_400, T0)
    ledger_factory.close_all()
    execute(ledger_factory.store, "ALTER TABLE payments DROP COLUMN owner")

    opened = ledger_factory(Clock(T0 + 1, tick=1))
    assert sorted(all_rows(opened), key=lambda r: r.id) == sorted(rows.values(), key=lambda r: r.id)
    assert opened.usage(query(T0)) == usage and opened.budget(T0 - 86_400, T0) == budget
    assert usage.daily_spent == 40 and budget.assets[0].asset == ASSET
    assert ids(opened.claim_orphans()) == {
        rows[s].id: Ownership.OWNERLESS for s in ("reserved", "sent", "unknown")
    }
    assert opened.claim_orphans() == []  # now its own
    reopened = ledger_factory(Clock(T0 + 2, tick=1))  # the column exists now: a no-op
    assert all_rows(reopened) == all_rows(opened)
    assert reopened.claim(rows["sent"].id).ownership is Ownership.LIVE
    assert reopened.usage(query(T0)) == usage and all_rows(reopened)[0].network == NETWORK


def test_owner_lock_files_of_dead_processes_are_cleaned_up(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    children = [in_flight_of_another_process(Store("sqlite", str(path)))[0] for _ in range(3)]
    for child in children:
        child.kill()
        child.wait(timeout=30)
    owners = tmp_path / "ledger.sqlite3.owners"
    assert len(list(owners.glob("*.lock"))) == 3
    ledger = SQLiteLedger(path)
    try:
        assert len(list(owners.glob("*.lock"))) == 4
        assert len(ledger.claim_orphans()) == 6  # finds their owners gone, and forgets them
        assert [p.name for p in owners.iterdir()] == [f"{ledger.owner}.lock"]
    finally:
        ledger.close()
    assert list(owners.iterdir()) == []  # a closed ledger leaves nothing behind


def test_own_in_flight_lists_only_this_openers_sent_and_unknown_rows(ledger_factory: LedgerFactory) -> None:
    # What a long-lived process resolves itself at expiry (x402_agent.expiry): its own rows
    # past sending, earliest expiry first; not another live opener's, not a reservation.
    mine, other = ledger_factory(Clock(tick=1)), ledger_factory(Clock(tick=1))
    late = send(mine, reserve(mine, T0), valid_before=2_000_000_100)
    early = send(mine, reserve(mine, T0), valid_before=2_000_000_000)
    reserve(mine, T0)
    send(other, reserve(other, T0), valid_before=1_900_000_000)
    mine.mark_unknown(late.id, evidence={"why": "refused"})
    settled = send(mine, reserve(mine, T0))
    mine.settle(settled.id, settlement_tx="0xtx")
    assert [r.id for r in mine.own_in_flight()] == [early.id, late.id]
    assert [r.state for r in mine.own_in_flight()] == [S.SENT, S.UNKNOWN]
