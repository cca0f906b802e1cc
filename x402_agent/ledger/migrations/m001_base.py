"""1: the ledger as the releases before numbered migrations left it (up to d37c352).

Idempotent over any of those ledgers: tables and indexes are created if missing, and the
columns those releases added one by one (verification, owner) are added where absent. The text
is frozen: a later change of the schema is a new migration, never an edit here.
"""

from __future__ import annotations

from typing import Any

_VERIFICATION = "TEXT CHECK (verification IN ('pending', 'verified', 'mismatch'))"

_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS payments (
        id TEXT PRIMARY KEY,
        idempotency_key TEXT,
        request_fingerprint TEXT NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        request_body_sha256 TEXT NOT NULL,
        x402_version SMALLINT NOT NULL,
        network TEXT NOT NULL,
        asset TEXT NOT NULL,
        symbol TEXT NOT NULL,
        decimals SMALLINT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        pay_to TEXT NOT NULL,
        requirement_json TEXT NOT NULL,
        policy_version BIGINT NOT NULL,
        policy_digest TEXT NOT NULL,
        session TEXT,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'sent', 'settled', 'released', 'unknown')),
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        payer TEXT,
        nonce TEXT UNIQUE,
        valid_after BIGINT,
        valid_before BIGINT,
        payment_header TEXT,
        sent_at DOUBLE PRECISION,
        settlement_tx TEXT,
        response_status SMALLINT,
        response_content_type TEXT,
        response_body_sha256 TEXT,
        delivered SMALLINT,
        evidence_json TEXT,
        finished_at DOUBLE PRECISION,
        verification {_VERIFICATION}
    )""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, profile TEXT, started_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS usage_buckets (
        network TEXT NOT NULL, asset TEXT NOT NULL, bucket BIGINT NOT NULL,
        amount BIGINT NOT NULL, PRIMARY KEY (network, asset, bucket))""",
    # One live payment per idempotency key; a released attempt frees the key.
    """CREATE UNIQUE INDEX IF NOT EXISTS payments_live_key ON payments (idempotency_key)
        WHERE idempotency_key IS NOT NULL AND state <> 'released'""",
    """CREATE INDEX IF NOT EXISTS payments_asset_day
        ON payments (asset, network, created_at, state, amount)""",
    """CREATE INDEX IF NOT EXISTS payments_session ON payments (session, asset, network)
        WHERE session IS NOT NULL""",
    "CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at)",
    """CREATE INDEX IF NOT EXISTS payments_open ON payments (state)
        WHERE state IN ('reserved', 'sent', 'unknown')""",
)
# Columns the unnumbered releases added to older ledgers when opened.
_ADDED_COLUMNS = (
    ("verification", _VERIFICATION),
    # The opener (process) a row in flight belongs to; NULL in rows written before owners were
    # recorded (see ledger.owners).
    ("owner", "TEXT"),
)
_LATE_INDEXES = (
    # Pending checks (the verifier's queue after a restart) and mismatches (the breaker).
    """CREATE INDEX IF NOT EXISTS payments_unverified ON payments (updated_at)
        WHERE verification = 'pending'""",
    """CREATE INDEX IF NOT EXISTS payments_mismatch ON payments (updated_at)
        WHERE verification = 'mismatch'""",
)


def apply(cur: Any) -> None:
    for statement in _TABLES:
        cur.execute(statement)
    cur.execute("SELECT * FROM payments WHERE 1 = 0")
    present = {column[0] for column in cur.description}
    for name, kind in _ADDED_COLUMNS:
        if name not in present:
            cur.execute(f"ALTER TABLE payments ADD COLUMN {name} {kind}")
    for statement in _LATE_INDEXES:
        cur.execute(statement)
