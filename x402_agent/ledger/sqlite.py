"""The embedded ledger: one SQLite file in WAL mode in the agent home; its openers' liveness
locks are files beside it (``ledger.owners``)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from .owners import OwnerFiles
from .sql import SqlLedger

# A checkpoint copies the WAL's pages into the database file; pages written again between two
# checkpoints are copied once. So it runs once a second, or sooner after many commits (which
# keeps the WAL, and the readers' lookups in it, small), and not at all while nothing commits.
CHECKPOINT_INTERVAL_SECONDS = 1.0
CHECKPOINT_COMMITS = 256


class SQLiteLedger(SqlLedger):
    """Safe across threads (one connection, a lock) and processes (BEGIN IMMEDIATE)."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        super().__init__(clock)
        self.path = path
        self._lock = threading.Lock()
        self._wake = threading.Event()  # the checkpointer's: many commits, or closing
        self._commits = 0  # since the last checkpoint (a hint: a lost count only delays one)
        self._owners = OwnerFiles(path)
        try:
            self._owners.hold(self.owner)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: owner lock: {exc}") from exc
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (SIGKILL); only an OS crash
            # or power loss can lose the last transactions.
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (the only disk syncs in this mode) run off the payment path: a commit
            # that happened to trigger one waited several ms for the disk.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            with self._transaction() as cur:
                self._migrate(cur)
        except sqlite3.Error as exc:
            self._owners.release(self.owner)
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, daemon=True, name="ledger-checkpoint"
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1)
        try:
            while not self._closing.is_set():
                self._wake.wait(CHECKPOINT_INTERVAL_SECONDS)
                self._wake.clear()
                if not self._commits:
                    continue
                self._commits = 0
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    continue  # busy or locked: the next round catches up
        finally:
            db.close()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._checkpointer.join(5)
        # A last full checkpoint keeps the WAL file from growing across short-lived processes.
        with contextlib.suppress(sqlite3.Error):  # busy: another process checkpoints later
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._db.close()
        self._owners.release(self.owner)  # what it left in flight is now anyone's to resolve

    def _live_owners(self, owners: set[str]) -> set[str]:
        return self._owners.live(owners)

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
            self._commits += 1
            if self._commits >= CHECKPOINT_COMMITS:
                self._wake.set()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    def _is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)
