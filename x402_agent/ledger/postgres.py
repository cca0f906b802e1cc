"""The fleet ledger: one PostgreSQL database shared by agents on many hosts.

Every write transaction first takes one transaction-scoped advisory lock, so reservations
(read what is counted, decide, insert) serialise across threads, processes and hosts exactly as
SQLite's ``BEGIN IMMEDIATE`` does on one machine. Transactions run at READ COMMITTED so that each
statement after the lock sees every reservation committed before the lock was granted.

Each opener holds a session advisory lock keyed by its owner id (``ledger.owners``) on a
connection of its own for its whole life: the server drops it when the process dies (or, for a
host that vanished, when its TCP keepalives give up), and ``pg_locks`` tells other openers which
owners are still there.

psycopg (3) is imported here only: the rest of the package never needs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from ..errors import LedgerError
from .owners import advisory_key
from .sql import SqlLedger

if TYPE_CHECKING:
    import psycopg

# Key of the budget lock: the bytes "x402ledg" as a signed 64-bit integer. Advisory locks are
# per database, so ledgers in different databases of one server do not contend.
LOCK_KEY = int.from_bytes(b"x402ledg", "big", signed=True)
POOL_SIZE = 4
CONNECT_TIMEOUT = 10
# The owner's session: the server probes an idle client after 30 s, then every 10 s, 3 times,
# so the lock of an agent whose host vanished is freed in about a minute.
_OWNER_SESSION = (
    b"SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
)
# Advisory locks held on this database: a bigint key shows as classid (high 32 bits) and objid
# (low 32 bits) with objsubid 1; the shift wraps into the sign bit, giving the signed key back.
_HELD_KEYS = (
    "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE "
    "locktype = 'advisory' AND objsubid = 1 AND granted AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


class PostgresLedger(SqlLedger):
    """Safe across threads (a small connection pool) and processes and hosts (advisory lock)."""

    placeholder = "%s"
    floor_sql = "CAST(floor({}) AS BIGINT)"  # CAST alone rounds in PostgreSQL

    def __init__(self, url: str, clock: Any = time.time, *, pool_size: int = POOL_SIZE) -> None:
        super().__init__(clock)
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self._idle: list[psycopg.Connection[Any]] = []
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        self._owner_conn: psycopg.Connection[Any] | None = None
        try:
            self._owner_conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            self._owner_conn.execute(_OWNER_SESSION, prepare=False)
            self._owner_conn.execute("SELECT pg_advisory_lock(%s)", (advisory_key(self.owner),))
            # DDL under the same lock: CREATE ... IF NOT EXISTS is not safe when several
            # processes run it at once (they can collide on the catalog's unique indexes).
            with self._transaction() as cur:
                self._migrate(cur)
                self._buckets(cur, build=True)  # a ledger that predates the counters
        except LedgerError as exc:
            self.close()
            raise LedgerError(f"cannot open ledger {self._where()}: {exc.message}") from exc
        except psycopg.Error as exc:
            self.close()
            raise LedgerError(f"cannot open ledger {self._where()}: {exc}") from exc

    def _where(self) -> str:
        """The URL without a password, for messages."""
        try:
            info = self._psycopg.conninfo.conninfo_to_dict(self.url)
        except self._psycopg.Error:
            return "(unparsable PostgreSQL URL)"
        return (
            f"postgresql://{info.get('user') or ''}@{info.get('host') or ''}"
            f":{info.get('port') or 5432}/{info.get('dbname') or ''}"
        )

    # ---- connections -------------------------------------------------------------------------
    def _acquire(self, *, fresh: bool = False) -> psycopg.Connection[Any]:
        """A connection from the pool (or a new one); give it back with ``_release``."""
        if self._closed:
            raise LedgerError("ledger is closed")
        self._slots.acquire()
        try:
            conn = None
            if not fresh:
                with self._idle_lock:
                    conn = self._idle.pop() if self._idle else None
            # Autocommit: transactions are begun explicitly, see _in_transaction.
            return conn or self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except self._psycopg.OperationalError as exc:
            self._slots.release()
            raise LedgerError(f"cannot reach ledger {self._where()}: {exc}") from exc
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        """Back to the pool if it is idle and healthy, else closed."""
        try:
            idle = self._psycopg.pq.TransactionStatus.IDLE
            if conn.closed or conn.info.transaction_status != idle or self._closed:
                conn.close()
            else:
                with self._idle_lock:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._owner_conn is not None:  # frees the owner's lock: its rows are anyone's now
            # Unlocked before closing: the server ends a closed session a moment later, and
            # the next opener must not find this owner still there.
            with suppress(self._psycopg.Error):
                self._owner_conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(self.owner),))
            self._owner_conn.close()

    def _live_owners(self, owners: set[str]) -> set[str]:
        with self._reading() as cur:
            held = {key for (key,) in cur.execute(_HELD_KEYS).fetchall()}
        return {owner for owner in owners if advisory_key(owner) in held}

    # ---- transactions ------------------------------------------------------------------------
    # Each transaction starts with one round trip: BEGIN (with its isolation level written out,
    # whatever the server's default) and, for writes, the budget lock. READ COMMITTED for writes:
    # every statement after the lock sees what was committed before it was granted. A read is
    # one REPEATABLE READ snapshot for all its statements (usage, budget).
    _BEGIN_WRITE = (
        f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({LOCK_KEY})"
    ).encode()
    _BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._in_transaction(self._BEGIN_WRITE) as cur:
            yield cur

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._in_transaction(self._BEGIN_READ) as cur:
            yield cur

    def _begin(self, begin: bytes) -> psycopg.Connection[Any]:
        """A connection with a transaction begun. A pooled connection the server has dropped
        (restart, idle timeout) fails here, before anything was done: it is replaced, once."""
        conn = self._acquire()
        for last_try in (False, True):
            try:
                conn.execute(begin, prepare=False)  # constant text, no parameters
                return conn
            except self._psycopg.OperationalError as exc:
                self._release(conn)  # closes it
                if last_try:
                    raise LedgerError(f"ledger connection failed: {exc}") from exc
                conn = self._acquire(fresh=True)
            except BaseException:
                self._release(conn)
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def _in_transaction(self, begin: bytes) -> Iterator[psycopg.Cursor[Any]]:
        conn = self._begin(begin)
        try:
            with conn.cursor() as cur:
                try:
                    yield cur
                except BaseException:
                    # A broken connection cannot roll back; it is closed, not pooled, and the
                    # server ends its transaction.
                    with suppress(self._psycopg.Error):
                        conn.execute(b"ROLLBACK")
                    raise
                conn.execute(b"COMMIT")
        except self._psycopg.OperationalError as exc:
            raise LedgerError(f"ledger connection failed: {exc}") from exc
        finally:
            self._release(conn)

    def _is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)
