"""Ledger records and the interface every ledger store implements.

States: reserved -> sent -> settled, or released, or unknown (sent, outcome not proven; it
stays counted until the chain proves it settled or that it can never settle). A row is also
the payment's receipt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..decision import Usage


class PaymentState(StrEnum):
    RESERVED = "reserved"
    SENT = "sent"
    SETTLED = "settled"
    RELEASED = "released"
    UNKNOWN = "unknown"


# What counts against limits: everything that is or may become a transfer.
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
    session: str | None = None


@dataclass(frozen=True)
class PaymentRecord(NewPayment):
    """A ledger row; for sent and later states it is also the payment's receipt."""

    id: str = ""
    state: PaymentState = PaymentState.RESERVED
    created_at: float = 0.0
    updated_at: float = 0.0
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
    delivered: bool | None = None
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


@dataclass(frozen=True)
class UsageQuery:
    """Which counters a decision needs: one asset, one day window, maybe one session."""

    network: str
    asset: str
    day_start: float
    now: float
    session: str | None = None


@dataclass(frozen=True)
class AssetUsage:
    network: str
    asset: str
    day_counted: int
    in_flight: int  # reserved + sent
    unknown: int
    unknown_count: int


@dataclass(frozen=True)
class BudgetSnapshot:
    assets: list[AssetUsage]
    sessions: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> asset id -> spent
    consecutive_failures: int = 0
    breaker_reset_at: float | None = None


UsageCheck = Callable[[Usage], None]  # raises PolicyDenied to refuse


class Ledger(Protocol):
    """Storage of payment records; every method is atomic, across threads and processes."""

    def reserve(self, payment: NewPayment, query: UsageQuery, check: UsageCheck
                ) -> PaymentRecord:
        """Gather usage, run ``check`` and insert the reservation in one transaction."""
        ...
    def usage(self, query: UsageQuery) -> Usage: ...
    def open_session(self, session: str, profile: str | None, now: float) -> None: ...
    def mark_sent(self, payment_id: str, *, payer: str, nonce: str, valid_after: int,
                  valid_before: int, payment_header: str) -> PaymentRecord: ...
    def settle(self, payment_id: str, *, settlement_tx: str | None,
               response_status: int | None = None, response_content_type: str | None = None,
               response_body_sha256: str | None = None, delivered: bool | None = None,
               evidence: dict[str, Any] | None = None) -> PaymentRecord: ...
    def mark_unknown(self, payment_id: str, *, evidence: dict[str, Any],
                     response_status: int | None = None, delivered: bool | None = None
                     ) -> PaymentRecord: ...
    def release(self, payment_id: str, *, reason: str) -> PaymentRecord: ...
    def get(self, payment_id: str) -> PaymentRecord | None: ...
    def find_by_idempotency_key(self, key: str) -> PaymentRecord | None: ...
    def recent(self, limit: int = 50, states: Sequence[PaymentState] | None = None
               ) -> list[PaymentRecord]: ...
    def unresolved(self) -> list[PaymentRecord]:
        """Reserved, sent and unknown rows: what start-up reconciliation looks at."""
        ...
    def reset_breaker(self, now: float) -> None: ...
    def budget(self, day_start: float, now: float) -> BudgetSnapshot: ...
    def close(self) -> None: ...
