"""Ledger records and the interface every ledger store implements.

States: reserved -> sent -> settled, or released, or unknown (sent, outcome not proven; it
stays counted until the chain proves it settled or that it can never settle). A row is also
the payment's receipt. A row in flight belongs to the opener (process) that made it until that
opener is gone; settled and released rows never move again, and a change asked of one reports
the row as it is (a race lost to another process is not an error).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from ..decision import Usage

if TYPE_CHECKING:
    from .channels import ChannelTable
    from .entitlements import EntitlementTable


class PaymentState(StrEnum):
    RESERVED = "reserved"
    SENT = "sent"
    SETTLED = "settled"
    RELEASED = "released"
    UNKNOWN = "unknown"


class Verification(StrEnum):
    """The on-chain check of a settled payment's transaction, done after the body was returned:
    pending until the receipt is read, then verified or mismatch (the transaction did not move
    this payment; the row stays settled and counted, and the circuit breaker opens)."""

    PENDING = "pending"
    VERIFIED = "verified"
    MISMATCH = "mismatch"


# What counts against limits: everything that is or may become a transfer.
COUNTED_STATES = (PaymentState.RESERVED, PaymentState.SENT, PaymentState.UNKNOWN, PaymentState.SETTLED)


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
    # Which scheme module pays it and resolves it later (``schemes``), and its transfer
    # method; rows of releases before they were recorded are exact over EIP-3009.
    scheme: str = "exact"
    credential: str = "eip3009"


@dataclass(frozen=True)
class PaymentRecord(NewPayment):
    """A ledger row; for sent and later states it is also the payment's receipt.

    ``amount`` is the reserved maximum (what counts while the payment is open), ``nonce`` the
    authorization id the chain marks used, ``valid_before`` the authorization's expiry and
    ``settled_amount`` what moved (set when settled)."""

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
    verification: Verification | None = None
    settled_amount: int | None = None

    def to_receipt(self) -> dict[str, Any]:
        """The receipt view: everything except the bearer payment header."""
        data = asdict(self)
        data.pop("payment_header")
        data["state"] = str(self.state)
        data["amount"] = str(self.amount)
        data["settled_amount"] = None if self.settled_amount is None else str(self.settled_amount)
        data["requirement"] = json.loads(data.pop("requirement_json"))
        evidence = data.pop("evidence_json")
        data["evidence"] = json.loads(evidence) if evidence else None
        data["verification"] = None if self.verification is None else str(self.verification)
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
    # The payment whose settlement the chain contradicted since the last reset (breaker open).
    settlement_mismatch: str | None = None


UsageCheck = Callable[[Usage], None]  # raises PolicyDenied to refuse


class Ownership(StrEnum):
    """Whose a payment in flight is, seen from one ledger opener (see ``ledger.owners``)."""

    MINE = "mine"  # this opener's own: it may be in progress here
    LIVE = "live"  # another live opener's: left alone
    ORPHANED = "orphaned"  # its owner is gone: now this opener's
    OWNERLESS = "ownerless"  # written by a release that recorded no owner: now this opener's


@dataclass(frozen=True)
class Claim:
    record: PaymentRecord  # as read when claimed
    ownership: Ownership


class Ledger(Protocol):
    """Storage of payment records; every method is atomic, across threads and processes."""

    def reserve(self, payment: NewPayment, query: UsageQuery, check: UsageCheck) -> PaymentRecord:
        """Gather usage, run ``check`` and insert the reservation in one transaction."""
        ...

    def usage(self, query: UsageQuery) -> Usage: ...
    def open_session(self, session: str, profile: str | None, now: float) -> None: ...
    def mark_sent(
        self,
        payment_id: str,
        *,
        payer: str,
        nonce: str,
        valid_after: int,
        valid_before: int,
        payment_header: str,
    ) -> PaymentRecord: ...
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
    ) -> PaymentRecord: ...
    def mark_verified(self, outcomes: Mapping[str, dict[str, Any] | None]) -> set[str]:
        """End pending verifications in one transaction: payment id -> None (verified) or the
        mismatch's evidence (which opens the circuit breaker). Returns the ids that were
        pending (the others were checked already)."""
        ...

    def unverified(self) -> list[PaymentRecord]:
        """Settled payments whose transaction was not checked on chain yet."""
        ...

    def mark_unknown(
        self,
        payment_id: str,
        *,
        evidence: dict[str, Any],
        response_status: int | None = None,
        delivered: bool | None = None,
    ) -> PaymentRecord: ...
    def release(self, payment_id: str, *, reason: str) -> PaymentRecord: ...
    def get(self, payment_id: str) -> PaymentRecord | None: ...
    def find_by_idempotency_key(self, key: str) -> PaymentRecord | None: ...
    def recent(
        self, limit: int = 50, states: Sequence[PaymentState] | None = None
    ) -> list[PaymentRecord]: ...
    def unresolved(self) -> list[PaymentRecord]:
        """Reserved, sent and unknown rows, whoever owns them (all are counted)."""
        ...

    def own_in_flight(self) -> list[PaymentRecord]:
        """Sent and unknown rows this opener owns, earliest expiry first: its own to resolve
        while it lives (no other opener takes them over)."""
        ...

    def claim_orphans(self) -> list[Claim]:
        """Take over the rows in flight that no live opener owns (their owner is gone, or
        they name none): what start-up reconciliation may resolve."""
        ...

    def claim(self, payment_id: str) -> Claim:
        """Whose the payment is; an orphaned or ownerless row in flight becomes this
        opener's. A live opener's row is reported ``LIVE`` and left alone."""
        ...

    @property
    def channels(self) -> ChannelTable:
        """The batch-settlement channels (``ledger.channels``)."""
        ...

    @property
    def entitlements(self) -> EntitlementTable:
        """Re-access bought by payments and its sign-ins (``ledger.entitlements``)."""
        ...

    def reset_breaker(self, now: float) -> None: ...
    def budget(self, day_start: float, now: float) -> BudgetSnapshot: ...
    def close(self) -> None: ...
