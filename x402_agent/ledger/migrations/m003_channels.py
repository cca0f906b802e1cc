"""3: batch-settlement channels: what was deposited, signed, confirmed, claimed and returned.

One row per channel (its id is the EIP-712 hash of its config, so one per payer, payee,
token and salt). ``signed_total`` is the highest voucher ever signed (never above
``deposit``), ``charged`` the running total the server confirmed, ``claimed`` what the chain
shows the server claimed; ``refunded`` and ``withdrawn`` what came back to the payer.
``deposit_payment`` is the ledger row of the request that carried the deposit: its state says
whether the deposit may still land (sent, unknown) or never left (released).
"""

from __future__ import annotations

from typing import Any

_STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS channels (
        channel_id TEXT PRIMARY KEY,
        network TEXT NOT NULL,
        asset TEXT NOT NULL,
        payer TEXT NOT NULL,
        pay_to TEXT NOT NULL,
        url TEXT NOT NULL,
        config_json TEXT NOT NULL,
        deposit BIGINT NOT NULL DEFAULT 0 CHECK (deposit >= 0),
        signed_total BIGINT NOT NULL DEFAULT 0 CHECK (signed_total >= 0 AND signed_total <= deposit),
        charged BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0 AND charged <= signed_total),
        claimed BIGINT NOT NULL DEFAULT 0 CHECK (claimed >= 0),
        refunded BIGINT NOT NULL DEFAULT 0 CHECK (refunded >= 0),
        withdrawn BIGINT NOT NULL DEFAULT 0 CHECK (withdrawn >= 0),
        state TEXT NOT NULL,
        deposit_tx TEXT,
        deposit_payment TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_answer_at DOUBLE PRECISION)""",
)


def apply(cur: Any) -> None:
    for statement in _STATEMENTS:
        cur.execute(statement)
