"""2: rows name their scheme and credential, and what settled next to what was reserved.

``scheme`` and ``credential`` (the transfer method) say which scheme module resolves a row in
flight; every row before this migration was ``exact`` over EIP-3009, the only one those releases
paid. ``amount`` stays the reserved maximum (what counts against the limits while the payment is
open); ``settled_amount`` is what moved, filled for settled rows (exact settles its maximum).
The authorization id and expiry are the ``nonce`` and ``valid_before`` columns.

The defaults keep the previous release writing correct rows into a migrated ledger.
"""

from __future__ import annotations

from typing import Any

_STATEMENTS = (
    "ALTER TABLE payments ADD COLUMN scheme TEXT NOT NULL DEFAULT 'exact'",
    "ALTER TABLE payments ADD COLUMN credential TEXT NOT NULL DEFAULT 'eip3009'",
    "ALTER TABLE payments ADD COLUMN settled_amount BIGINT CHECK (settled_amount >= 0)",
    "UPDATE payments SET settled_amount = amount WHERE state = 'settled'",
)


def apply(cur: Any) -> None:
    for statement in _STATEMENTS:
        cur.execute(statement)
