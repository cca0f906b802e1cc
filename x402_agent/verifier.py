"""On-chain verification of settlements, off the paid request's critical path.

The flow returns the body as soon as the server's settlement header matches what was signed,
and records the payment settled with verification ``pending``: it is counted like any settled
payment, and nothing releases a settled row. This verifier then reads the transaction receipt
the server named and marks the payment ``verified``, or ``mismatch`` when the receipt does not
show our authorization moving exactly the price to the payee (or the transaction cannot be found
for ``receipt_grace_seconds``). A mismatch opens the circuit breaker (the ledger's usage reports
it to every later decision, in every process sharing the ledger) and is kept as an alert that
the next tool call reports.

The window a hostile server gets: between the body's return and the receipt check (one RPC round
trip, done by a background thread; at most the grace period if the server names a transaction
that does not exist), further payments are allowed as if the claim were true. A process that
exits checks what it left pending before it closes; one that crashed is caught up at the next
open.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ChainError, SettlementMismatch
from .ledger import Ledger, PaymentRecord
from .reasons import Reason
from .schemes import for_record
from .settlement import check_moved

# A settlement transaction not found this long after the server named it is a false claim.
RECEIPT_GRACE_SECONDS = 30.0
# Receipts read in one JSON-RPC batch (payments settled while the previous batch was read).
BATCH = 32
RETRY_SECONDS = 1.0
RPC_TIMEOUT_SECONDS = 10.0
_ids = itertools.count(1)


class Verifier:
    """Checks settled payments' transactions on chain in a background thread."""

    def __init__(
        self,
        ledger: Ledger,
        rpc_urls: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        receipt_grace_seconds: float = RECEIPT_GRACE_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.rpc_urls = dict(rpc_urls)
        self.clock = clock
        self.receipt_grace_seconds = receipt_grace_seconds
        self._cond = threading.Condition()
        self._queue: deque[PaymentRecord] = deque()
        self._later: list[tuple[float, PaymentRecord]] = []  # receipt not found yet: retry
        self._busy = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._alerts: list[dict[str, Any]] = []
        self._http: tuple[str, HTTPConnection] | None = None

    # ---- the queue ------------------------------------------------------------------------
    def submit(self, record: PaymentRecord) -> None:
        """Check ``record`` (settled, verification pending) soon, in the background."""
        with self._cond:
            self._queue.append(record)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="settlement-verifier")
                self._thread.start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted payment was checked (those whose receipt is not found
        yet excepted: they are retried later); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def take_alerts(self) -> list[dict[str, Any]]:
        """Mismatches found since the last call (each is reported once)."""
        with self._cond:
            alerts, self._alerts = self._alerts, []
        return alerts

    def close(self, timeout: float = RPC_TIMEOUT_SECONDS) -> None:
        """Finish what was submitted (a short-lived process checks before it exits), then stop.
        Whatever is left stays pending in the ledger and is checked at the next open."""
        self.wait_idle(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._http is not None:
            self._http[1].close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = [item for item in self._later if item[0] <= now]
                    self._later = [item for item in self._later if item[0] > now]
                    self._queue.extend(record for _, record in due)
                    if self._queue or self._closed:
                        break
                    wake = min((at for at, _ in self._later), default=None)
                    self._cond.wait(None if wake is None else wake - now)
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                self._busy = len(batch)
            try:
                retry = self.check(batch)
            except Exception:  # the ledger or the RPC failed: retried later, still counted
                retry = batch
            with self._cond:
                self._busy = 0
                self._later += [(time.monotonic() + RETRY_SECONDS, r) for r in retry]
                self._cond.notify_all()

    # ---- the check ------------------------------------------------------------------------
    def check_pending(self) -> list[PaymentRecord]:
        """Check every payment left pending (by this or an earlier process), now; returns those
        still pending (receipt not found yet, or the RPC failed)."""
        pending = self.ledger.unverified()
        left: list[PaymentRecord] = []
        for start in range(0, len(pending), BATCH):
            try:
                left += self.check(pending[start : start + BATCH])
            except ChainError:
                left += pending[start : start + BATCH]
        return left

    def check(self, records: Iterable[PaymentRecord]) -> list[PaymentRecord]:
        """Read the receipts and record the outcome of each payment; returns those whose
        transaction was not found yet (within the grace period)."""
        by_network: dict[str, list[PaymentRecord]] = {}
        for record in records:
            by_network.setdefault(record.network, []).append(record)
        retry: list[PaymentRecord] = []
        for network, group in by_network.items():
            rpc = self.rpc_urls.get(network)
            if rpc is None:
                retry += group  # no RPC in this process: another one (or a later run) checks
                continue
            receipts = self._receipts(rpc, [r.settlement_tx or "" for r in group])
            outcomes: dict[str, dict[str, Any] | None] = {}
            for record, receipt in zip(group, receipts, strict=True):
                found, mismatch = self._outcome(record, receipt)
                if found:
                    outcomes[record.id] = mismatch
                else:
                    retry.append(record)
            if not outcomes:
                continue
            # One ledger transaction per batch of receipts.
            changed = self.ledger.mark_verified(outcomes)
            alerts = [
                {"payment_id": record.id, "url": record.url, **mismatch}
                for record in group
                if record.id in changed and (mismatch := outcomes.get(record.id)) is not None
            ]
            if alerts:
                with self._cond:
                    self._alerts += alerts
        return retry

    def _outcome(
        self, record: PaymentRecord, receipt: Mapping[str, Any] | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """(False, None) while the receipt is not there yet; else (True, the mismatch or
        None when the receipt shows our payment)."""
        if receipt is None:
            claimed_at = record.finished_at or record.updated_at
            if self.clock() - claimed_at < self.receipt_grace_seconds:
                return False, None
            return True, {
                "reason": Reason.SETTLEMENT_TX_NOT_FOUND,
                "tx": record.settlement_tx,
                "message": "the transaction the server named does not exist on chain",
            }
        try:
            scheme = for_record(record)
            moved = scheme.check_receipt(receipt, scheme.restore(record), record.pay_to)
            check_moved(moved, record.settled_amount, record.settlement_tx)
        except SettlementMismatch as exc:
            return True, {"message": exc.message, **exc.details, "reason": exc.reason}
        return True, None

    def _post(self, rpc: str, body: bytes) -> tuple[int, bytes]:
        """One POST on a kept-alive stdlib connection: this runs once per payment, and
        http.client costs a fraction of an httpx client's CPU per request."""
        parts = urlsplit(rpc)
        if self._http is None or self._http[0] != rpc:
            if self._http is not None:
                self._http[1].close()
            kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
            self._http = (rpc, kind(parts.hostname or "", parts.port, timeout=RPC_TIMEOUT_SECONDS))
        connection = self._http[1]
        headers = {"content-type": "application/json"}
        if parts.username:  # an RPC URL carrying its credentials
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):  # a kept-alive connection the node closed: reconnect once
            try:
                connection.request("POST", target, body, headers)
                answer = connection.getresponse()
                return answer.status, answer.read()
            except (OSError, HTTPException):
                connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _receipts(self, rpc: str, txs: list[str]) -> list[Any]:
        """eth_getTransactionReceipt for each hash, in one JSON-RPC batch."""
        ids = [next(_ids) for _ in txs]
        body = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [tx]}
            for i, tx in zip(ids, txs, strict=True)
        ]
        try:
            status, raw = self._post(rpc, json.dumps(body).encode())
            data = json.loads(raw)
        except (OSError, HTTPException, ValueError) as exc:
            raise ChainError("RPC eth_getTransactionReceipt failed", cause=type(exc).__name__) from exc
        if status != 200 or not isinstance(data, list):
            raise ChainError("RPC eth_getTransactionReceipt failed", status=status)
        results = {item.get("id"): item for item in data if isinstance(item, dict)}
        out = []
        for i in ids:
            item = results.get(i)
            if item is None or "error" in item:
                raise ChainError(
                    "RPC eth_getTransactionReceipt failed", rpc_error=str(item and item.get("error"))[:200]
                )
            out.append(item.get("result"))
        return out
