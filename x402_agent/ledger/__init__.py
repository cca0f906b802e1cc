"""The payment ledger: every payment is recorded before it is signed and until it is resolved.

``Ledger`` is the interface; ``SQLiteLedger`` is the embedded default and ``PostgresLedger``
(imported from ``x402_agent.ledger.postgres``) serves fleets sharing one budget.
"""

from pathlib import Path

from .records import (
    COUNTED_STATES,
    AssetUsage,
    BudgetSnapshot,
    Claim,
    Ledger,
    NewPayment,
    Ownership,
    PaymentRecord,
    PaymentState,
    UsageCheck,
    UsageQuery,
    Verification,
)
from .sqlite import SQLiteLedger


def open_ledger(spec: str, home: Path) -> Ledger:
    """``postgresql://...`` opens the shared fleet ledger; anything else is a SQLite file
    (relative to the agent home)."""
    if spec.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger

        return PostgresLedger(spec)
    return SQLiteLedger((home / spec).resolve())


__all__ = [
    "COUNTED_STATES",
    "AssetUsage",
    "BudgetSnapshot",
    "Claim",
    "Ledger",
    "NewPayment",
    "Ownership",
    "PaymentRecord",
    "PaymentState",
    "SQLiteLedger",
    "UsageCheck",
    "UsageQuery",
    "Verification",
    "open_ledger",
]
