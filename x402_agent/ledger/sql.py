"""The ledger in SQL, shared by the SQLite and PostgreSQL stores.

A reservation is one transaction: take the budget lock, read what is counted, let the policy
decide, insert. SQLite's ``BEGIN IMMEDIATE`` and PostgreSQL's transaction-scoped advisory lock
both serialise reservations across threads, processes and (for PostgreSQL) hosts. Every usage
read is an index range scan over the session, the last minute or a small table of counters, so
its cost grows neither with the ledger's history nor with the number of payments in the day.

The daily usage comes from ``usage_buckets``: counted amounts per asset and 10-minute bucket of
``created_at``, updated in the same transaction as the rows they count (added at reservation,
subtracted at release, the only move out of the counted states). A day window is the buckets
after the one holding its start, plus the rows of that one bucket. A ledger written before the
counters existed gets them built at its first write (``ledger_meta`` marks them built).

DDL and queries use types and syntax both engines accept (BIGINT, DOUBLE PRECISION,
ON CONFLICT DO NOTHING, partial indexes); placeholders are written ``?`` and translated.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any

from ..decision import Usage
from ..errors import LedgerError, PaymentInFlight
from ..reasons import Reason
from .channels import ChannelTable
from .entitlements import EntitlementTable
from .migrations import migrate
from .owners import new_owner_id
from .records import (
    AssetUsage,
    BudgetSnapshot,
    Claim,
    NewPayment,
    Ownership,
    PaymentRecord,
    PaymentState,
    UsageCheck,
    UsageQuery,
    Verification,
)

COLUMNS = [f.name for f in fields(PaymentRecord)]


# Which states a transition may start from: a settled or released row never moves again.
# A change asked of a finished row lost a race (another process, or the paying process, got
# there first): it answers with the row as it is (see _finished), except ``mark_sent``, whose
# caller must not send a payment whose reservation is gone.
_FROM = {
    PaymentState.SENT: (PaymentState.RESERVED,),
    PaymentState.SETTLED: (PaymentState.SENT, PaymentState.UNKNOWN),
    PaymentState.UNKNOWN: (PaymentState.SENT, PaymentState.UNKNOWN),
    PaymentState.RELEASED: (PaymentState.RESERVED, PaymentState.SENT, PaymentState.UNKNOWN),
}
_FINAL = (PaymentState.SETTLED, PaymentState.RELEASED)
# Evidence a later settle (or unknown) brings to a row another process already settled, kept
# only where the row has none: the payer's transaction and response hashes complete a row that
# a reconciler settled from the chain's nonce alone.
_FILLABLE = (
    "settlement_tx",
    "response_status",
    "response_content_type",
    "response_body_sha256",
    "delivered",
    "evidence_json",
    "verification",
)
_DELIVERY = ("response_status", "response_content_type", "response_body_sha256", "delivered", "evidence_json")
_IN_FLIGHT = "state IN ('reserved', 'sent', 'unknown')"
# What a row counts against the limits: the reserved maximum while open, what moved once
# settled (an upto payment may settle less; the difference is released).
_COUNTED = "CASE WHEN {p}state = 'settled' THEN COALESCE({p}settled_amount, {p}amount) ELSE {p}amount END"
COUNTED = _COUNTED.format(p="")
BREAKER_KEY = "breaker_reset_at"
# How many recent outcomes the circuit breaker looks at, at most.
FAILURE_SCAN = 1000
# Sessions listed by the budget view: those started within the longest allowed lifetime.
SESSION_HORIZON = 30 * 86_400
# Width of a usage bucket; ledger_meta[BUCKETS_KEY] holds the width the counters were built with.
BUCKET_SECONDS = 600
BUCKETS_KEY = "usage_buckets"


def _assign(column: str) -> str:
    # A settlement that names no amount settled the reserved one.
    return "settled_amount = COALESCE(?, amount)" if column == "settled_amount" else f"{column} = ?"


def bucket_of(created_at: float) -> int:
    """The usage bucket of a row: floor(created_at) // BUCKET_SECONDS, so that a row is in a
    bucket after bucket b exactly when created_at >= (b + 1) * BUCKET_SECONDS."""
    return math.floor(created_at) // BUCKET_SECONDS


def _values(item: NewPayment) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in fields(item)}


class SqlLedger(ABC):
    """Ledger logic over a DB-API connection; subclasses supply transactions and dialect."""

    placeholder = "?"
    # floor() of a DOUBLE PRECISION column as an integer. SQLite's CAST truncates, which is floor
    # for the (positive) times stored here; PostgreSQL's rounds, so its backend overrides this.
    floor_sql = "CAST({} AS INTEGER)"

    def __init__(self, clock: Any) -> None:
        # The backend takes this owner's liveness lock before it writes anything.
        self.owner = new_owner_id()
        self._clock = clock
        self._buckets_ready = False

    # ---- what a backend provides -----------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction holding the budget lock; yields a DB-API cursor."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Any]:
        """A consistent read; yields a DB-API cursor."""

    @abstractmethod
    def _is_conflict(self, exc: BaseException) -> bool:
        """True if ``exc`` is a unique-constraint violation."""

    @abstractmethod
    def _live_owners(self, owners: set[str]) -> set[str]:
        """Which of ``owners`` (other openers) still hold their liveness lock."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    def channels(self) -> ChannelTable:
        """The batch-settlement channels kept in this ledger."""
        return ChannelTable(self)

    @property
    def entitlements(self) -> EntitlementTable:
        """Re-access bought by payments (sign-in-with-x) and the sign-ins that used it."""
        return EntitlementTable(self)

    def _migrate(self, cur: Any) -> list[int]:
        """Bring an older ledger's schema up to date (in the opening write transaction)."""
        # The wall clock: the ledger's own clock (a test's) counts the ledger's payment events.
        return migrate(cur, self._run, self.owner, time.time())

    # ---- helpers ---------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _run(self, cur: Any, text: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(text), tuple(params))
        return cur

    def _records(self, cur: Any, where: str, params: Sequence[Any]) -> list[PaymentRecord]:
        rows = self._run(cur, f"SELECT {', '.join(COLUMNS)} FROM payments {where}", params).fetchall()
        return [self._record(row) for row in rows]

    @staticmethod
    def _record(row: Sequence[Any]) -> PaymentRecord:
        data = dict(zip(COLUMNS, row, strict=True))
        data["state"] = PaymentState(data["state"])
        data["amount"] = int(data["amount"])
        if data["delivered"] is not None:
            data["delivered"] = bool(data["delivered"])
        if data["verification"] is not None:
            data["verification"] = Verification(data["verification"])
        if data["settled_amount"] is not None:
            data["settled_amount"] = int(data["settled_amount"])
        return PaymentRecord(**data)

    def _select(self, where: str, params: Sequence[Any]) -> list[PaymentRecord]:
        with self._reading() as cur:
            return self._records(cur, where, params)

    # ---- reservations ----------------------------------------------------------------------
    def reserve(self, payment: NewPayment, query: UsageQuery, check: UsageCheck) -> PaymentRecord:
        now = self._clock()
        # Shallow copies (every field is a scalar): asdict() deep-copies, which costs more
        # than the reservation's SQL on SQLite.
        record = PaymentRecord(
            **_values(payment),
            id=uuid.uuid4().hex,
            state=PaymentState.RESERVED,
            created_at=now,
            updated_at=now,
        )
        row = {**_values(record), "state": str(record.state), "owner": self.owner}
        try:
            with self._transaction() as cur:
                self._buckets(cur, build=True)
                check(self._usage(cur, query))
                if payment.session is not None:
                    self._run(
                        cur,
                        "INSERT INTO sessions (id, profile, started_at) "
                        "VALUES (?, NULL, ?) ON CONFLICT (id) DO NOTHING",
                        (payment.session, now),
                    )
                self._run(
                    cur,
                    f"INSERT INTO payments ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                    tuple(row.values()),
                )
                self._run(
                    cur,
                    "INSERT INTO usage_buckets (network, asset, bucket, amount) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (network, asset, bucket) "
                    "DO UPDATE SET amount = usage_buckets.amount + excluded.amount",
                    (payment.network, payment.asset, bucket_of(now), payment.amount),
                )
        except LedgerError:
            raise
        except Exception as exc:
            if self._is_conflict(exc) and payment.idempotency_key:
                raise PaymentInFlight(
                    "a payment with this idempotency key is in progress",
                    idempotency_key=payment.idempotency_key,
                ) from exc
            if type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise LedgerError(f"ledger write failed: {exc}") from exc
            raise
        return record

    def open_session(self, session: str, profile: str | None, now: float) -> None:
        with self._transaction() as cur:
            self._run(
                cur,
                "INSERT INTO sessions (id, profile, started_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (session, profile, now),
            )

    def usage(self, query: UsageQuery) -> Usage:
        with self._reading() as cur:
            return self._usage(cur, query)

    def _buckets(self, cur: Any, *, build: bool) -> bool:
        """Whether the usage counters are built; with ``build`` (in a write transaction, so
        under the budget lock) build them from the rows if this ledger predates them."""
        if self._buckets_ready:
            return True
        row = self._run(cur, "SELECT value FROM ledger_meta WHERE key = ?", (BUCKETS_KEY,)).fetchone()
        if row is not None and row[0] == str(BUCKET_SECONDS):
            self._buckets_ready = True
        elif build:
            bucket = f"{self.floor_sql.format('created_at')} / {BUCKET_SECONDS}"
            self._run(cur, "DELETE FROM usage_buckets")
            self._run(
                cur,
                f"INSERT INTO usage_buckets (network, asset, bucket, amount) "
                f"SELECT network, asset, {bucket}, SUM({COUNTED}) FROM payments "
                f"WHERE state <> 'released' GROUP BY network, asset, {bucket} "
                f"ORDER BY network, asset, {bucket}",
            )  # a window's rows stay together
            self._run(cur, "DELETE FROM ledger_meta WHERE key = ?", (BUCKETS_KEY,))
            self._run(
                cur, "INSERT INTO ledger_meta (key, value) VALUES (?, ?)", (BUCKETS_KEY, str(BUCKET_SECONDS))
            )
            self._buckets_ready = True
        return self._buckets_ready

    def _usage(self, cur: Any, q: UsageQuery) -> Usage:
        def scalar(text: str, params: Sequence[Any]) -> Any:
            row = self._run(cur, text, params).fetchone()
            return None if row is None else row[0]

        if self._buckets(cur, build=False):
            first = bucket_of(q.day_start)  # the bucket holding the window's start
            daily = scalar(
                "SELECT (SELECT COALESCE(SUM(amount), 0) FROM usage_buckets WHERE network = ? "
                f"AND asset = ? AND bucket > ?) + (SELECT COALESCE(SUM({COUNTED}), 0) FROM payments "
                "WHERE asset = ? AND network = ? AND created_at >= ? AND created_at < ? AND "
                "state <> 'released')",
                (
                    q.network,
                    q.asset,
                    first,
                    q.asset,
                    q.network,
                    q.day_start,
                    float((first + 1) * BUCKET_SECONDS),
                ),
            )
        else:  # counters not built yet (no write since this ledger was upgraded): scan
            daily = scalar(
                f"SELECT COALESCE(SUM({COUNTED}), 0) FROM payments WHERE asset = ? AND "
                "network = ? AND created_at >= ? AND state <> 'released'",
                (q.asset, q.network, q.day_start),
            )
        session_spent, started = 0, None
        if q.session is not None:
            session_spent = scalar(
                f"SELECT COALESCE(SUM({COUNTED}), 0) FROM payments WHERE session = ? AND asset = ? "
                "AND network = ? AND state <> 'released'",
                (q.session, q.asset, q.network),
            )
            started = scalar("SELECT started_at FROM sessions WHERE id = ?", (q.session,))
        last_minute = scalar(
            "SELECT COUNT(*) FROM payments WHERE created_at >= ? AND state <> 'released'", (q.now - 60,)
        )
        failures, mismatch = self._breaker(cur)
        return Usage(
            daily_spent=int(daily),
            session_spent=int(session_spent),
            session_started_at=started,
            payments_last_minute=int(last_minute),
            consecutive_failures=failures,
            settlement_mismatch=mismatch,
        )

    def _breaker(self, cur: Any) -> tuple[int, str | None]:
        """The failure streak, and the latest payment whose settlement the chain contradicted
        (both since the breaker's last reset)."""
        reset = self._run(cur, "SELECT value FROM ledger_meta WHERE key = ?", (BREAKER_KEY,)).fetchone()
        since = float(reset[0]) if reset else 0.0
        mismatch = self._run(
            cur,
            "SELECT id FROM payments WHERE verification = 'mismatch' AND "
            "updated_at > ? ORDER BY updated_at DESC LIMIT 1",
            (since,),
        ).fetchone()
        return self._consecutive_failures(cur, since), mismatch[0] if mismatch else None

    def _consecutive_failures(self, cur: Any, since: float) -> int:
        # Outcomes that failed (unknown, or settled but not delivered, or sent, refused and
        # released once expired: a refused signature is a failure) after the latest success
        # (or the reset), counted in SQL: the latest success is found by walking the created_at
        # index backwards from the newest row, and the count is a range scan after it (one bound,
        # so that both engines use it for the index range), so the cost follows the failure
        # streak, not FAILURE_SCAN rows.
        row = self._run(
            cur,
            "SELECT COUNT(*) FROM (SELECT 1 FROM payments WHERE "
            "created_at > COALESCE((SELECT created_at FROM payments WHERE "
            "created_at > ? AND state = 'settled' AND (delivered IS NULL OR "
            "delivered <> 0) AND (verification IS NULL OR verification <> "
            "'mismatch') ORDER BY created_at DESC LIMIT 1), ?) AND "
            "(state IN ('settled', 'unknown') OR (state = 'released' AND "
            "delivered = 0)) LIMIT ?) AS streak",
            (since, since, FAILURE_SCAN),
        ).fetchone()
        return int(row[0])

    def reset_breaker(self, now: float) -> None:
        with self._transaction() as cur:
            self._run(cur, "DELETE FROM ledger_meta WHERE key = ?", (BREAKER_KEY,))
            self._run(cur, "INSERT INTO ledger_meta (key, value) VALUES (?, ?)", (BREAKER_KEY, repr(now)))

    # ---- transitions -----------------------------------------------------------------------
    def _transition(self, payment_id: str, to: PaymentState, **values: Any) -> PaymentRecord:
        now = self._clock()
        values = {**values, "state": str(to), "updated_at": now}
        if to in (PaymentState.SETTLED, PaymentState.RELEASED):
            values["finished_at"] = now
        allowed = _FROM[to]
        try:
            with self._transaction() as cur:
                counters = to in _FINAL and self._buckets(cur, build=True)
                rows = self._run(
                    cur,
                    f"UPDATE payments SET {', '.join(_assign(k) for k in values)} "
                    f"WHERE id = ? AND state IN ({', '.join('?' for _ in allowed)}) "
                    f"RETURNING {', '.join(COLUMNS)}",
                    (*values.values(), payment_id, *map(str, allowed)),
                ).fetchall()
                if len(rows) != 1:
                    return self._finished(cur, payment_id, to, values)
                record = self._record(rows[0])
                # Released: nothing counts any more; settled: only what moved.
                uncounted = record.amount - (record.settled_amount or 0 if to is PaymentState.SETTLED else 0)
                if counters and uncounted:
                    self._run(
                        cur,
                        "UPDATE usage_buckets SET amount = amount - ? WHERE "
                        "network = ? AND asset = ? AND bucket = ?",
                        (uncounted, record.network, record.asset, bucket_of(record.created_at)),
                    )
        except LedgerError:
            raise
        except Exception as exc:
            # The same error whatever the engine: the only unique column a transition writes
            # is the authorization nonce.
            if self._is_conflict(exc):
                raise LedgerError(
                    f"payment {payment_id}: nonce already used by another payment",
                    reason=Reason.NONCE_REUSED,
                    payment_id=payment_id,
                ) from exc
            if type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise LedgerError(f"ledger write failed: {exc}", payment_id=payment_id) from exc
            raise
        return record

    def _finished(self, cur: Any, payment_id: str, to: PaymentState, values: dict[str, Any]) -> PaymentRecord:
        """The answer to a transition that found the row elsewhere: a finished row as it is,
        a settled one completed with the evidence it lacks; anything else is an error."""
        rows = self._records(cur, "WHERE id = ?", (payment_id,))
        if not rows or to is PaymentState.SENT or rows[0].state not in _FINAL:
            raise LedgerError(
                f"payment {payment_id} cannot move to {to}",
                reason=Reason.INVALID_TRANSITION,
                payment_id=payment_id,
            )
        record = rows[0]
        missing = {
            name: values[name]
            for name in _FILLABLE
            if values.get(name) is not None and getattr(record, name) is None
        }
        replace: dict[str, Any] = {}
        if to is PaymentState.SETTLED and values.get("delivered") and record.delivered is False:
            # Settled but recorded undelivered, then delivered by a later resend (the server's
            # answer cached under the payment identifier): the delivery replaces the failed
            # attempt's response fields.
            replace = {name: values[name] for name in _DELIVERY if name in values}
            missing = {name: value for name, value in missing.items() if name not in replace}
        if record.state is PaymentState.SETTLED and to is not PaymentState.RELEASED and (missing or replace):
            # COALESCE: a value another writer filled in meanwhile is kept.
            fill = ", ".join(
                [f"{name} = COALESCE({name}, ?)" for name in missing] + [f"{name} = ?" for name in replace]
            )
            record = self._record(
                self._run(
                    cur,
                    f"UPDATE payments SET {fill} WHERE id = ? RETURNING {', '.join(COLUMNS)}",
                    (*missing.values(), *replace.values(), payment_id),
                ).fetchone()
            )
        return record

    def mark_sent(
        self,
        payment_id: str,
        *,
        payer: str,
        nonce: str,
        valid_after: int,
        valid_before: int,
        payment_header: str,
    ) -> PaymentRecord:
        return self._transition(
            payment_id,
            PaymentState.SENT,
            payer=payer,
            nonce=nonce,
            valid_after=valid_after,
            valid_before=valid_before,
            payment_header=payment_header,
            sent_at=self._clock(),
        )

    def settle(
        self,
        payment_id: str,
        *,
        settlement_tx: str | None,
        response_status: int | None = None,
        response_content_type: str | None = None,
        response_body_sha256: str | None = None,
        delivered: bool | None = None,
        evidence: dict[str, Any] | None = None,
        verification: Verification | None = None,
        settled_amount: int | None = None,
    ) -> PaymentRecord:
        # Unsaid, what settled is the reserved amount (exact: what was signed is what moves).
        values: dict[str, Any] = {"settled_amount": settled_amount}
        if verification is not None:
            values["verification"] = str(verification)
        if settlement_tx is not None:
            values["settlement_tx"] = settlement_tx
        if response_status is not None:
            values.update(
                response_status=response_status,
                response_content_type=response_content_type,
                response_body_sha256=response_body_sha256,
            )
        if delivered is not None:
            values["delivered"] = int(delivered)
        if evidence is not None:
            values["evidence_json"] = json.dumps(evidence, sort_keys=True)
        return self._transition(payment_id, PaymentState.SETTLED, **values)

    def mark_verified(self, outcomes: Mapping[str, dict[str, Any] | None]) -> set[str]:
        now = self._clock()
        verified = [payment_id for payment_id, mismatch in outcomes.items() if mismatch is None]
        changed: set[str] = set()
        try:
            with self._transaction() as cur:
                if verified:  # the usual outcome: one statement for the whole batch
                    marks = ", ".join("?" for _ in verified)
                    changed.update(
                        row[0]
                        for row in self._run(
                            cur,
                            f"UPDATE payments SET verification = ?, updated_at = ? WHERE "
                            f"verification = 'pending' AND id IN ({marks}) RETURNING id",
                            (str(Verification.VERIFIED), now, *verified),
                        ).fetchall()
                    )
                for payment_id, mismatch in outcomes.items():
                    if mismatch is not None and self._mark_mismatch(cur, payment_id, mismatch, now):
                        changed.add(payment_id)
        except Exception as exc:
            if type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise LedgerError(f"ledger write failed: {exc}") from exc
            raise
        return changed

    def _mark_mismatch(self, cur: Any, payment_id: str, mismatch: dict[str, Any], now: float) -> bool:
        row = self._run(
            cur, "SELECT evidence_json FROM payments WHERE id = ? AND verification = 'pending'", (payment_id,)
        ).fetchone()
        if row is None:
            return False  # checked already (by another process or an earlier run)
        evidence = {**(json.loads(row[0]) if row[0] else {}), "mismatch": mismatch}
        self._run(
            cur,
            "UPDATE payments SET verification = ?, updated_at = ?, evidence_json = ? WHERE id = ?",
            (str(Verification.MISMATCH), now, json.dumps(evidence, sort_keys=True), payment_id),
        )
        return True

    def mark_unknown(
        self,
        payment_id: str,
        *,
        evidence: dict[str, Any],
        response_status: int | None = None,
        delivered: bool | None = None,
    ) -> PaymentRecord:
        values: dict[str, Any] = {"evidence_json": json.dumps(evidence, sort_keys=True)}
        if response_status is not None:
            values["response_status"] = response_status
        if delivered is not None:
            values["delivered"] = int(delivered)
        return self._transition(payment_id, PaymentState.UNKNOWN, **values)

    def release(self, payment_id: str, *, reason: str) -> PaymentRecord:
        return self._transition(
            payment_id, PaymentState.RELEASED, evidence_json=json.dumps({"released": reason})
        )

    # ---- reads -----------------------------------------------------------------------------
    def get(self, payment_id: str) -> PaymentRecord | None:
        rows = self._select("WHERE id = ?", (payment_id,))
        return rows[0] if rows else None

    def find_by_idempotency_key(self, key: str) -> PaymentRecord | None:
        rows = self._select(
            "WHERE idempotency_key = ? ORDER BY CASE WHEN state = 'released' "
            "THEN 1 ELSE 0 END, created_at DESC LIMIT 1",
            (key,),
        )
        return rows[0] if rows else None

    def recent(self, limit: int = 50, states: Sequence[PaymentState] | None = None) -> list[PaymentRecord]:
        if states:
            marks = ", ".join("?" for _ in states)
            return self._select(
                f"WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?", (*map(str, states), limit)
            )
        return self._select("ORDER BY created_at DESC LIMIT ?", (limit,))

    def unverified(self) -> list[PaymentRecord]:
        return self._select("WHERE verification = 'pending' ORDER BY updated_at", ())

    def unresolved(self) -> list[PaymentRecord]:
        return self._select(f"WHERE {_IN_FLIGHT} ORDER BY created_at", ())

    def own_in_flight(self) -> list[PaymentRecord]:
        return self._select(
            "WHERE state IN ('sent', 'unknown') AND owner = ? ORDER BY valid_before", (self.owner,)
        )

    # ---- owners ----------------------------------------------------------------------------
    def claim_orphans(self) -> list[Claim]:
        with self._reading() as cur:
            owners = self._run(cur, f"SELECT DISTINCT owner FROM payments WHERE {_IN_FLIGHT}", ()).fetchall()
        others = {owner for (owner,) in owners if owner is not None and owner != self.owner}
        gone = others - self._live_owners(others)
        if not gone and all(owner is not None for (owner,) in owners):
            return []  # the usual start: every row in flight has a live owner (or none is)
        return self._take_over(gone, None)

    def claim(self, payment_id: str) -> Claim:
        with self._reading() as cur:
            row = self._run(
                cur, f"SELECT owner, {', '.join(COLUMNS)} FROM payments WHERE id = ?", (payment_id,)
            ).fetchone()
        if row is None:
            raise LedgerError(
                f"no payment {payment_id}", reason=Reason.INVALID_TRANSITION, payment_id=payment_id
            )
        owner, record = row[0], self._record(row[1:])
        if owner == self.owner:
            return Claim(record, Ownership.MINE)
        if owner is not None and self._live_owners({owner}):
            return Claim(record, Ownership.LIVE)
        taken = self._take_over({owner} if owner else set(), payment_id)
        if taken:
            return taken[0]
        # Not taken: it finished meanwhile (re-read it), or another opener took it over first.
        final = self.get(payment_id) or record
        return Claim(final, Ownership.ORPHANED if final.state in _FINAL else Ownership.LIVE)

    def _take_over(self, gone: set[str], payment_id: str | None) -> list[Claim]:
        """Make this opener the owner of the rows in flight owned by ``gone`` or by nobody
        (only ``payment_id``'s, if given). Under the budget lock, so that of several openers
        taking over at once exactly one gets each row."""
        where = f"WHERE {_IN_FLIGHT} AND (owner IS NULL"
        params: list[Any] = list(gone)
        if gone:
            where += f" OR owner IN ({', '.join('?' for _ in gone)})"
        where += ")"
        if payment_id is not None:
            where += " AND id = ?"
            params.append(payment_id)
        with self._transaction() as cur:
            rows = self._run(
                cur, f"SELECT owner, {', '.join(COLUMNS)} FROM payments {where} ORDER BY created_at", params
            ).fetchall()
            if rows:
                self._run(cur, f"UPDATE payments SET owner = ? {where}", (self.owner, *params))
        return [
            Claim(self._record(row[1:]), Ownership.OWNERLESS if row[0] is None else Ownership.ORPHANED)
            for row in rows
        ]

    def budget(self, day_start: float, now: float) -> BudgetSnapshot:
        with self._reading() as cur:
            day = self._run(
                cur,
                f"SELECT network, asset, SUM({COUNTED}) FROM payments WHERE "
                "created_at >= ? AND state <> 'released' GROUP BY network, asset",
                (day_start,),
            ).fetchall()
            open_rows = self._run(
                cur,
                "SELECT network, asset, state, SUM(amount), COUNT(*) FROM "
                "payments WHERE state IN ('reserved', 'sent', 'unknown') "
                "GROUP BY network, asset, state",
                (),
            ).fetchall()
            sessions = self._run(
                cur,
                f"SELECT p.session, p.network, p.asset, SUM({_COUNTED.format(p='p.')}) FROM "
                "payments p JOIN sessions s ON s.id = p.session WHERE "
                "s.started_at >= ? AND p.state <> 'released' "
                "GROUP BY p.session, p.network, p.asset",
                (now - SESSION_HORIZON,),
            ).fetchall()
            failures, mismatch = self._breaker(cur)
            reset = self._run(cur, "SELECT value FROM ledger_meta WHERE key = ?", (BREAKER_KEY,)).fetchone()
        keys = {(n, a) for n, a, _ in day} | {(n, a) for n, a, *_ in open_rows}
        assets = []
        for network, asset in sorted(keys):

            def total(states: tuple[str, ...], column: int, n: str = network, a: str = asset) -> int:
                return sum(int(r[column]) for r in open_rows if r[0] == n and r[1] == a and r[2] in states)

            assets.append(
                AssetUsage(
                    network,
                    asset,
                    day_counted=sum(int(s) for n, a, s in day if (n, a) == (network, asset)),
                    in_flight=total(("reserved", "sent"), 3),
                    unknown=total(("unknown",), 3),
                    unknown_count=total(("unknown",), 4),
                )
            )
        by_session: dict[str, dict[str, int]] = {}
        for session, network, asset, spent in sessions:
            by_session.setdefault(session, {})[f"{network}/{asset}"] = int(spent)
        return BudgetSnapshot(assets, by_session, failures, float(reset[0]) if reset else None, mismatch)
