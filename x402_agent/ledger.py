"""The payment ledger: every payment is recorded before it is signed and until it is resolved.

States: reserved -> sent -> settled, or released, or unknown (sent, outcome not proven; it
stays counted until the chain proves it settled or that it can never settle). A row is also
the payment's receipt. SQLite in WAL mode is the embedded store; ``Ledger`` is the interface
other stores implement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from .errors import LedgerError, PaymentInFlight


class PaymentState(StrEnum):
    RESERVED = "reserved"
    SENT = "sent"
    SETTLED = "settled"
    RELEASED = "released"
    UNKNOWN = "unknown"


COUNTED_STATES = (PaymentState.RESERVED, PaymentState.SENT, PaymentState.UNKNOWN,
                  PaymentState.SETTLED)


@dataclass(frozen=True)
class NewPayment:
    """What is known when a payment is reserved, before anything is signed."""

    idempotency_key: str | None
    request_fingerprint: str
    method: str
    url: str
    request_body_sha256: str
    x402_version: int
    network: str
    asset: str
    symbol: str
    decimals: int
    amount: int
    pay_to: str
    requirement_json: str
    policy_version: int
    policy_digest: str


@dataclass(frozen=True)
class PaymentRecord(NewPayment):
    """A ledger row; for sent and later states it is also the payment's receipt."""

    id: str
    state: PaymentState
    created_at: float
    updated_at: float
    payer: str | None = None
    nonce: str | None = None
    valid_after: int | None = None
    valid_before: int | None = None
    payment_header: str | None = None
    sent_at: float | None = None
    settlement_tx: str | None = None
    response_status: int | None = None
    response_content_type: str | None = None
    response_body_sha256: str | None = None
    evidence_json: str | None = None
    finished_at: float | None = None

    def to_receipt(self) -> dict[str, Any]:
        """The receipt view: everything except the bearer payment header."""
        data = asdict(self)
        data.pop("payment_header")
        data["state"] = str(self.state)
        data["amount"] = str(self.amount)
        data["requirement"] = json.loads(data.pop("requirement_json"))
        evidence = data.pop("evidence_json")
        data["evidence"] = json.loads(evidence) if evidence else None
        return data


class Ledger(Protocol):
    """Storage of payment records; every method is atomic."""

    def reserve(self, payment: NewPayment) -> PaymentRecord: ...
    def mark_sent(self, payment_id: str, *, payer: str, nonce: str, valid_after: int,
                  valid_before: int, payment_header: str) -> PaymentRecord: ...
    def settle(self, payment_id: str, *, settlement_tx: str | None, response_status: int | None,
               response_content_type: str | None, response_body_sha256: str | None,
               evidence: dict[str, Any] | None = None) -> PaymentRecord: ...
    def mark_unknown(self, payment_id: str, *, evidence: dict[str, Any],
                     response_status: int | None = None) -> PaymentRecord: ...
    def release(self, payment_id: str, *, reason: str) -> PaymentRecord: ...
    def get(self, payment_id: str) -> PaymentRecord | None: ...
    def find_by_idempotency_key(self, key: str) -> PaymentRecord | None: ...
    def recent(self, limit: int = 50, states: Sequence[PaymentState] | None = None
               ) -> list[PaymentRecord]: ...


_COLUMNS = [f.name for f in fields(PaymentRecord)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT,
    request_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    request_body_sha256 TEXT NOT NULL,
    x402_version INTEGER NOT NULL,
    network TEXT NOT NULL,
    asset TEXT NOT NULL,
    symbol TEXT NOT NULL,
    decimals INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    pay_to TEXT NOT NULL,
    requirement_json TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    policy_digest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in PaymentState)})),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    payer TEXT,
    nonce TEXT UNIQUE,
    valid_after INTEGER,
    valid_before INTEGER,
    payment_header TEXT,
    sent_at REAL,
    settlement_tx TEXT,
    response_status INTEGER,
    response_content_type TEXT,
    response_body_sha256 TEXT,
    evidence_json TEXT,
    finished_at REAL
);
-- One live payment per idempotency key; a released attempt frees the key.
CREATE UNIQUE INDEX IF NOT EXISTS payments_live_key
    ON payments (idempotency_key) WHERE idempotency_key IS NOT NULL AND state != 'released';
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at);
CREATE INDEX IF NOT EXISTS payments_state ON payments (state) WHERE state IN ('reserved','sent','unknown');
"""

# Which state a transition may start from: a settled or released row never moves again.
_FROM = {
    PaymentState.SENT: (PaymentState.RESERVED,),
    PaymentState.SETTLED: (PaymentState.SENT, PaymentState.UNKNOWN),
    PaymentState.UNKNOWN: (PaymentState.SENT, PaymentState.UNKNOWN),
    PaymentState.RELEASED: (PaymentState.RESERVED, PaymentState.SENT, PaymentState.UNKNOWN),
}


class SQLiteLedger:
    """Ledger in one SQLite file (WAL), safe across threads and processes."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger write failed: {exc}") from exc

    def reserve(self, payment: NewPayment) -> PaymentRecord:
        now = self._clock()
        record = PaymentRecord(**asdict(payment), id=uuid.uuid4().hex,
                               state=PaymentState.RESERVED, created_at=now, updated_at=now)
        row = asdict(record)
        row["state"] = str(record.state)
        try:
            with self._tx() as db:
                db.execute(f"INSERT INTO payments ({', '.join(row)}) VALUES "
                           f"({', '.join('?' for _ in row)})", tuple(row.values()))
        except LedgerError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError) and payment.idempotency_key:
                raise PaymentInFlight("a payment with this idempotency key is in progress",
                                      idempotency_key=payment.idempotency_key) from exc
            raise
        return record

    def _transition(self, payment_id: str, to: PaymentState, **values: Any) -> PaymentRecord:
        now = self._clock()
        values = {**values, "state": str(to), "updated_at": now}
        if to in (PaymentState.SETTLED, PaymentState.RELEASED):
            values["finished_at"] = now
        allowed = _FROM[to]
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE payments SET {', '.join(f'{k} = ?' for k in values)} "
                f"WHERE id = ? AND state IN ({', '.join('?' for _ in allowed)})",
                (*values.values(), payment_id, *map(str, allowed)),
            )
            if cur.rowcount != 1:
                raise LedgerError(f"payment {payment_id} cannot move to {to}",
                                  reason="invalid_transition", payment_id=payment_id)
        record = self.get(payment_id)
        assert record is not None
        return record

    def mark_sent(self, payment_id: str, *, payer: str, nonce: str, valid_after: int,
                  valid_before: int, payment_header: str) -> PaymentRecord:
        return self._transition(payment_id, PaymentState.SENT, payer=payer, nonce=nonce,
                                valid_after=valid_after, valid_before=valid_before,
                                payment_header=payment_header, sent_at=self._clock())

    def settle(self, payment_id: str, *, settlement_tx: str | None, response_status: int | None,
               response_content_type: str | None, response_body_sha256: str | None,
               evidence: dict[str, Any] | None = None) -> PaymentRecord:
        values: dict[str, Any] = {"settlement_tx": settlement_tx}
        if response_status is not None:
            values.update(response_status=response_status,
                          response_content_type=response_content_type,
                          response_body_sha256=response_body_sha256)
        if evidence is not None:
            values["evidence_json"] = json.dumps(evidence, sort_keys=True)
        return self._transition(payment_id, PaymentState.SETTLED, **values)

    def mark_unknown(self, payment_id: str, *, evidence: dict[str, Any],
                     response_status: int | None = None) -> PaymentRecord:
        return self._transition(payment_id, PaymentState.UNKNOWN, response_status=response_status,
                                evidence_json=json.dumps(evidence, sort_keys=True))

    def release(self, payment_id: str, *, reason: str) -> PaymentRecord:
        return self._transition(payment_id, PaymentState.RELEASED,
                                evidence_json=json.dumps({"released": reason}))

    def _select(self, where: str, params: Sequence[Any]) -> list[PaymentRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM payments {where}",
                                    tuple(params)).fetchall()
        return [PaymentRecord(**{**dict(r), "state": PaymentState(r["state"])}) for r in rows]

    def get(self, payment_id: str) -> PaymentRecord | None:
        rows = self._select("WHERE id = ?", (payment_id,))
        return rows[0] if rows else None

    def find_by_idempotency_key(self, key: str) -> PaymentRecord | None:
        rows = self._select(
            "WHERE idempotency_key = ? ORDER BY (state = 'released'), created_at DESC LIMIT 1",
            (key,))
        return rows[0] if rows else None

    def recent(self, limit: int = 50, states: Sequence[PaymentState] | None = None
               ) -> list[PaymentRecord]:
        if states:
            marks = ", ".join("?" for _ in states)
            return self._select(f"WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?",
                                (*map(str, states), limit))
        return self._select("ORDER BY created_at DESC LIMIT ?", (limit,))
