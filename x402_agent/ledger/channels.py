"""The ledger's batch-settlement channels (migration 3): one row per channel.

Every change is one transaction under the ledger's budget lock, so two processes paying
through the same channel never sign the same running total from the same state, and a crash
between steps leaves a row that says what may have left: ``signed_total`` is written before a
voucher is signed and never exceeds ``deposit`` (a CHECK in the table as well as here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ..errors import LedgerError, PolicyDenied
from ..reasons import Reason

if TYPE_CHECKING:
    from .sql import SqlLedger


class ChannelState(StrEnum):
    OPENING = "opening"  # deposit signed and sent, not yet confirmed by the server
    OPEN = "open"
    DISPUTED = "disputed"  # the server claimed above our vouchers: nothing more is signed
    WITHDRAWING = "withdrawing"  # initiateWithdraw sent; finalize after the delay
    CLOSED = "closed"  # refunded or withdrawn: nothing left in it for us


@dataclass(frozen=True)
class ChannelRecord:
    channel_id: str
    network: str
    asset: str
    payer: str
    pay_to: str
    url: str  # where it was opened: the server to ask for a refund
    config_json: str  # the SDK's ChannelConfig, as sent
    deposit: int = 0
    signed_total: int = 0
    charged: int = 0
    claimed: int = 0
    refunded: int = 0
    withdrawn: int = 0
    state: ChannelState = ChannelState.OPENING
    deposit_tx: str | None = None
    deposit_payment: str | None = None  # the payments row that carried the deposit
    created_at: float = 0.0
    updated_at: float = 0.0
    last_answer_at: float | None = None

    @property
    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_json)
        return data

    @property
    def unused(self) -> int:
        """What the payer can still get back: deposited, not claimable by the server."""
        return max(0, self.deposit - max(self.signed_total, self.claimed) - self.refunded - self.withdrawn)


@dataclass(frozen=True)
class Voucher:
    """The running total to sign now, and the deposit to sign with it (0: none)."""

    channel: ChannelRecord
    total: int
    deposit: int


_COLUMNS = [f.name for f in fields(ChannelRecord)]
_INTS = {"deposit", "signed_total", "charged", "claimed", "refunded", "withdrawn"}


def _record(row: Any) -> ChannelRecord:
    data = dict(zip(_COLUMNS, row, strict=True))
    for name in _INTS:
        data[name] = int(data[name])
    data["state"] = ChannelState(data["state"])
    return ChannelRecord(**data)


class ChannelTable:
    """The channels of one ledger."""

    def __init__(self, ledger: SqlLedger) -> None:
        self._ledger = ledger

    def _select(self, cur: Any, where: str, params: tuple[Any, ...]) -> list[ChannelRecord]:
        rows = self._ledger._run(cur, f"SELECT {', '.join(_COLUMNS)} FROM channels {where}", params)
        return [_record(row) for row in rows.fetchall()]

    def get(self, channel_id: str) -> ChannelRecord | None:
        with self._ledger._reading() as cur:
            found = self._select(cur, "WHERE channel_id = ?", (channel_id.lower(),))
        return found[0] if found else None

    def all(self) -> list[ChannelRecord]:
        with self._ledger._reading() as cur:
            return self._select(cur, "ORDER BY created_at", ())

    def voucher_totals(
        self, channel_id: str, *, exclude: str | None = None, settled_only: bool = False
    ) -> set[int]:
        """The running totals of this channel's requests still counted (or settled only)."""
        with self._ledger._reading() as cur:
            return self._totals(cur, channel_id, exclude, settled_only)

    def _totals(self, cur: Any, channel_id: str, exclude: str | None, settled_only: bool) -> set[int]:
        # A voucher row's authorization id is "<channel id>:<total>:<row id>" (schemes).
        states = "state = 'settled'" if settled_only else "state <> 'released'"
        rows = self._ledger._run(
            cur,
            f"SELECT nonce FROM payments WHERE scheme = 'batch-settlement' AND nonce LIKE ? AND {states}",
            (channel_id.lower() + ":%",),
        ).fetchall()
        return {int(nonce.split(":")[1]) for (nonce,) in rows if nonce != exclude}

    def next_voucher(
        self, template: ChannelRecord, price: int, deposit: int, *, reopen: bool = False
    ) -> Voucher:
        """Record the running total about to be signed: the confirmed total plus ``price``.
        A channel not in the ledger (or closed, or ``reopen``: its deposit never landed and
        never will) is opened with ``deposit``, carried by ``template.deposit_payment``;
        refused when the total would exceed the deposit."""
        now = self._ledger._clock()
        key = template.channel_id.lower()
        with self._ledger._transaction() as cur:
            found = self._select(cur, "WHERE channel_id = ?", (key,))
            current = found[0] if found else None
            if current is None or current.state is ChannelState.CLOSED or reopen:
                if price > deposit:
                    raise PolicyDenied(
                        f"a deposit of {deposit} does not cover the price {price}",
                        reason=Reason.CHANNEL_DEPOSIT_NOT_ALLOWED,
                    )
                # A closed channel keeps its id and its totals on chain (refunded or withdrawn
                # down to what was claimed): a new deposit tops it up and the vouchers continue
                # from its total. A reopened one (its deposit never landed) starts over.
                carried = current if current is not None and not reopen else None
                base = carried.charged if carried is not None else 0
                row = {
                    **{name: getattr(template, name) for name in _COLUMNS},
                    "channel_id": key,
                    "deposit": deposit + (carried.deposit if carried is not None else 0),
                    "signed_total": max(base + price, carried.signed_total if carried is not None else 0),
                    "charged": base,
                    "claimed": carried.claimed if carried is not None else 0,
                    "refunded": carried.refunded if carried is not None else 0,
                    "withdrawn": carried.withdrawn if carried is not None else 0,
                    "state": str(ChannelState.OPENING),
                    "deposit_tx": None,
                    "created_at": now,
                    "updated_at": now,
                    "last_answer_at": None,
                }
                self._ledger._run(cur, "DELETE FROM channels WHERE channel_id = ?", (key,))
                self._ledger._run(
                    cur,
                    f"INSERT INTO channels ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                    tuple(row.values()),
                )
                return Voucher(self._select(cur, "WHERE channel_id = ?", (key,))[0], base + price, deposit)
            if current.state is not ChannelState.OPEN and current.state is not ChannelState.OPENING:
                disputed = current.state is ChannelState.DISPUTED
                raise PolicyDenied(
                    f"channel {key} is {current.state}: no voucher is signed for it",
                    reason=Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS if disputed else Reason.CHANNEL_EXHAUSTED,
                    channel_id=key,
                )
            # A request the server took whose answer was lost, settled since from the chain:
            # the server's total is at least its voucher's.
            charged = max({current.charged} | self._totals(cur, key, None, True))
            total = charged + price
            if total > current.deposit - current.refunded - current.withdrawn:
                raise PolicyDenied(
                    f"channel {key}: a running total of {total} exceeds its deposit "
                    f"{current.deposit - current.refunded - current.withdrawn}",
                    reason=Reason.CHANNEL_EXHAUSTED,
                    channel_id=key,
                )
            self._ledger._run(
                cur,
                "UPDATE channels SET signed_total = ?, charged = ?, updated_at = ? WHERE channel_id = ?",
                (max(current.signed_total, total), charged, now, key),
            )
            return Voucher(self._select(cur, "WHERE channel_id = ?", (key,))[0], total, 0)

    def confirm(self, channel_id: str, charged: int, deposit_tx: str | None = None) -> ChannelRecord:
        """The server confirmed ``charged`` as the running total (and the deposit, if any)."""
        return self._update(
            channel_id,
            "charged = ?, state = ?, deposit_tx = COALESCE(deposit_tx, ?), last_answer_at = ?",
            (charged, str(ChannelState.OPEN), deposit_tx or None, self._ledger._clock()),
            must=f"signed_total >= {int(charged)}",
        )

    def resync(self, channel_id: str, charged: int) -> ChannelRecord:
        """Follow the server's total (the caller checked it is lower or proven)."""
        return self._update(
            channel_id,
            "charged = ?, last_answer_at = ?",
            (charged, self._ledger._clock()),
            must=f"signed_total >= {int(charged)}",
        )

    def mark(self, channel_id: str, **values: Any) -> ChannelRecord:
        """Record what came back or was seen on chain (refunded, withdrawn, claimed, state)."""
        unknown = set(values) - {"refunded", "withdrawn", "claimed", "state", "deposit", "charged"}
        if unknown:
            raise LedgerError(f"not a channel field to mark: {sorted(unknown)}")
        assigns = ", ".join(f"{name} = ?" for name in values)
        params = tuple(str(v) if isinstance(v, ChannelState) else v for v in values.values())
        return self._update(channel_id, assigns, params)

    def _update(
        self, channel_id: str, assigns: str, params: tuple[Any, ...], must: str = "1 = 1"
    ) -> ChannelRecord:
        key = channel_id.lower()
        with self._ledger._transaction() as cur:
            self._ledger._run(
                cur,
                f"UPDATE channels SET {assigns}, updated_at = ? WHERE channel_id = ? AND {must}",
                (*params, self._ledger._clock(), key),
            )
            found = self._select(cur, "WHERE channel_id = ?", (key,))
        if not found:
            raise LedgerError(f"no channel {key}", reason=Reason.INVALID_TRANSITION)
        return found[0]
