"""The embedded ledger: one SQLite file in WAL mode in the agent home."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from .sql import SCHEMA, SqlLedger


class SQLiteLedger(SqlLedger):
    """Safe across threads (one connection, a lock) and processes (BEGIN IMMEDIATE)."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        super().__init__(clock)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (SIGKILL); only an OS crash
            # or power loss can lose the last transactions.
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction() as cur:
                for statement in SCHEMA:
                    cur.execute(statement)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")  # the write lock: reservations serialise here
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger is locked: {exc}") from exc
            try:
                yield cur
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger commit failed: {exc}") from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    def _is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)
