"""The ledger's entitlements (migration 4): re-access bought by a payment, and its sign-ins.

A payment to a server that offers sign-in-with-x buys an entitlement: the payer may sign in to
that resource instead of paying again until it expires (the policy's bound) or the server
refuses a sign-in (it ended). Each accepted sign-in is a row of ``sign_ins``: an access that
cost nothing, with the response it brought, the receipt of kind "sign-in".

Times are the caller's clock (the payer's), so an entitlement expires on the same clock that
decides whether to sign in.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sql import SqlLedger


@dataclass(frozen=True)
class NewEntitlement:
    url: str  # the resource paid for, as fetched (scheme://host[:port]/path?query)
    domain: str  # host[:port]: the only domain a sign-in message for it may name
    network: str  # CAIP-2 chain the payment settled on: the only chain to sign in on
    payer: str  # the address that paid: the one that signs in
    statement: str | None  # what the server asked to sign when it was paid: must not change
    payment_id: str  # the ledger row that bought it


@dataclass(frozen=True)
class Entitlement(NewEntitlement):
    id: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0
    ended_at: float | None = None  # the server refused a sign-in before it expired
    end_reason: str | None = None
    uses: int = 0
    last_used_at: float | None = None

    def live(self, now: float) -> bool:
        return self.ended_at is None and now < self.expires_at

    def to_view(self, now: float) -> dict[str, Any]:
        return {**asdict(self), "live": self.live(now)}


@dataclass(frozen=True)
class SignInRecord:
    """One access by sign-in: it cost nothing (the receipt of kind "sign-in")."""

    id: str
    entitlement_id: str
    method: str
    url: str
    session: str | None
    created_at: float
    response_status: int
    response_content_type: str | None
    response_body_sha256: str | None

    def to_receipt(self) -> dict[str, Any]:
        return {**asdict(self), "kind": "sign-in", "amount": "0"}


_ENTITLEMENT = [f.name for f in fields(Entitlement)]
_SIGN_IN = [f.name for f in fields(SignInRecord)]


def _entitlement(row: Any) -> Entitlement:
    data = dict(zip(_ENTITLEMENT, row, strict=True))
    data["uses"] = int(data["uses"])
    return Entitlement(**data)


def _sign_in(row: Any) -> SignInRecord:
    data = dict(zip(_SIGN_IN, row, strict=True))
    data["response_status"] = int(data["response_status"])
    return SignInRecord(**data)


class EntitlementTable:
    """The entitlements and sign-ins of one ledger."""

    def __init__(self, ledger: SqlLedger) -> None:
        self._ledger = ledger

    def _select(self, cur: Any, where: str, params: tuple[Any, ...]) -> list[Entitlement]:
        rows = self._ledger._run(cur, f"SELECT {', '.join(_ENTITLEMENT)} FROM entitlements {where}", params)
        return [_entitlement(row) for row in rows.fetchall()]

    def add(self, new: NewEntitlement, now: float, expires_at: float) -> Entitlement:
        row = {
            **asdict(new),
            "id": uuid.uuid4().hex,
            "created_at": now,
            "expires_at": expires_at,
            "uses": 0,
        }
        with self._ledger._transaction() as cur:
            self._ledger._run(
                cur,
                f"INSERT INTO entitlements ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                tuple(row.values()),
            )
            return self._select(cur, "WHERE id = ?", (row["id"],))[0]

    def live(self, url: str, payer: str, now: float) -> Entitlement | None:
        """The live entitlement of ``payer`` to ``url`` that lasts longest."""
        with self._ledger._reading() as cur:
            found = self._select(
                cur,
                "WHERE url = ? AND payer = ? AND expires_at > ? AND ended_at IS NULL "
                "ORDER BY expires_at DESC LIMIT 1",
                (url, payer, now),
            )
        return found[0] if found else None

    def record_sign_in(
        self,
        entitlement: Entitlement,
        *,
        method: str,
        url: str,
        session: str | None,
        now: float,
        response_status: int,
        response_content_type: str | None,
        response_body_sha256: str | None,
    ) -> SignInRecord:
        record = SignInRecord(
            uuid.uuid4().hex,
            entitlement.id,
            method,
            url,
            session,
            now,
            response_status,
            response_content_type,
            response_body_sha256,
        )
        row = asdict(record)
        with self._ledger._transaction() as cur:
            self._ledger._run(
                cur,
                f"INSERT INTO sign_ins ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                tuple(row.values()),
            )
            self._ledger._run(
                cur,
                "UPDATE entitlements SET uses = uses + 1, last_used_at = ? WHERE id = ?",
                (now, entitlement.id),
            )
        return record

    def end(self, entitlement: Entitlement, reason: str, now: float) -> None:
        """The server refused a sign-in: the entitlement is over (paying again starts another)."""
        with self._ledger._transaction() as cur:
            self._ledger._run(
                cur,
                "UPDATE entitlements SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
                (now, reason, entitlement.id),
            )

    def active(self, now: float, limit: int = 50) -> list[Entitlement]:
        """The live entitlements, the soonest to expire first."""
        with self._ledger._reading() as cur:
            return self._select(
                cur, "WHERE expires_at > ? AND ended_at IS NULL ORDER BY expires_at LIMIT ?", (now, limit)
            )

    def recent(self, limit: int = 50) -> list[Entitlement]:
        with self._ledger._reading() as cur:
            return self._select(cur, "ORDER BY created_at DESC LIMIT ?", (limit,))

    def get(self, entitlement_id: str) -> Entitlement | None:
        with self._ledger._reading() as cur:
            found = self._select(cur, "WHERE id = ?", (entitlement_id,))
        return found[0] if found else None

    def sign_ins(self, limit: int = 50) -> list[SignInRecord]:
        with self._ledger._reading() as cur:
            rows = self._ledger._run(
                cur, f"SELECT {', '.join(_SIGN_IN)} FROM sign_ins ORDER BY created_at DESC LIMIT ?", (limit,)
            )
            return [_sign_in(row) for row in rows.fetchall()]
