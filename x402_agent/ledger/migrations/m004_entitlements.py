"""4: entitlements (re-access instead of repayment) and the sign-ins that used them.

An entitlement is what a payment to a server offering sign-in-with-x bought: the right to sign
in to that resource (url), at that domain, on that chain, as that payer, until ``expires_at``
(the policy's bound; the server may refuse earlier, which sets ``ended_at``). Each accepted
sign-in is a ``sign_ins`` row: a zero-cost access, a receipt of kind "sign-in".
"""

from __future__ import annotations

from typing import Any

_STATEMENTS = (
    """CREATE TABLE entitlements (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        domain TEXT NOT NULL,
        network TEXT NOT NULL,
        payer TEXT NOT NULL,
        statement TEXT,
        payment_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        end_reason TEXT,
        uses BIGINT NOT NULL DEFAULT 0,
        last_used_at DOUBLE PRECISION)""",
    "CREATE INDEX entitlements_lookup ON entitlements (url, payer, expires_at)",
    """CREATE TABLE sign_ins (
        id TEXT PRIMARY KEY,
        entitlement_id TEXT NOT NULL REFERENCES entitlements (id),
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        session TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        response_status SMALLINT NOT NULL,
        response_content_type TEXT,
        response_body_sha256 TEXT)""",
    "CREATE INDEX sign_ins_created ON sign_ins (created_at)",
)


def apply(cur: Any) -> None:
    for statement in _STATEMENTS:
        cur.execute(statement)
