"""Numbered schema migrations, applied when a ledger is opened.

``schema_version`` holds one row per applied migration (who applied it, when). Opening runs
every migration above the highest version in one write transaction, under the ledger's budget
lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL's advisory transaction lock), so of several
processes opening an old ledger at once exactly one migrates it and the others find it done; a
failure rolls the whole step back. Each migration is one module with an ``apply(cursor)`` whose
statements both engines accept; a migration is never edited once released.

The baseline (1) is the schema of the releases before versioning, which brought a ledger up to
date at every open, table by table and column by column. It stays idempotent and is checked at
every open as they did (a dozen catalog-level statements, once per process): a ledger whose
baseline lost a column (an older release's file, or a column dropped by hand) gets it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...errors import LedgerError
from . import m001_base, m002_rail_neutral, m003_channels, m004_entitlements

Run = Callable[[Any, str, Sequence[Any]], Any]

MIGRATIONS: tuple[tuple[int, str, Callable[[Any], None]], ...] = (
    (1, "base", m001_base.apply),
    (2, "rail_neutral", m002_rail_neutral.apply),
    (3, "channels", m003_channels.apply),
    (4, "entitlements", m004_entitlements.apply),
)
LATEST = MIGRATIONS[-1][0]
BASELINE = 1

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL, applied_by TEXT NOT NULL)"""


def migrate(cur: Any, run: Run, owner: str, now: float) -> list[int]:
    """Bring the ledger to ``LATEST`` (inside the caller's write transaction); the versions
    applied by this call."""
    cur.execute(_VERSION_TABLE)
    current = int(run(cur, "SELECT COALESCE(MAX(version), 0) FROM schema_version", ()).fetchone()[0])
    if current > LATEST:
        raise LedgerError(
            f"the ledger is at schema version {current}, newer than this release knows ({LATEST}): "
            "open it with the release that wrote it"
        )
    applied = []
    for version, name, apply in MIGRATIONS:
        if version == BASELINE and current >= BASELINE:
            apply(cur)  # the baseline's repair, recorded once already
        elif version > current:
            apply(cur)
            run(
                cur,
                "INSERT INTO schema_version (version, name, applied_at, applied_by) VALUES (?, ?, ?, ?)",
                (version, name, now, owner),
            )
            applied.append(version)
    return applied
