"""A long-lived agent resolves its own payments in flight while it lives.

Start-up reconciliation takes over only rows whose owner process is gone, so the rows a process
leaves ``sent`` or ``unknown`` itself (a payment the server refused, a paid request cut by its
deadline, a lost connection) would stay counted against its limits until it restarts: an MCP
server or a Python service would end up refused for good. This watch sleeps until the earliest
of those authorizations expires (validBefore plus a margin, by our clock) or until woken (a
fetch that left a row in flight, a budget read), then asks the chain, never the clock: at the
latest block's time, an authorization past validBefore is resolved by ``flow.reconcile``
(nonce used: settled; unused: released, it can never settle). A row not yet expired on chain is
left alone: the flow that sent it may still be finishing it. Other openers' rows are never read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from .errors import ChainError
from .flow import Payer, RpcCall, Step, reconcile
from .ledger import PaymentRecord, PaymentState

# After validBefore by our clock, the chain needs a block past it (the local world mines one a
# second; a real chain a few seconds).
MARGIN_SECONDS = 3.0
# The chain's time was still before validBefore, or the RPC failed: ask again this much later.
RETRY_SECONDS = 5.0
_OPEN = (PaymentState.SENT, PaymentState.UNKNOWN)


def resolve_expired(payer: Payer, records: list[PaymentRecord]) -> Generator[Step, Any, list[PaymentRecord]]:
    """Reconcile the rows whose authorization the chain's latest block shows expired; returns
    the rows still open that this process can resolve later (it has their network's RPC)."""
    by_network: dict[str, list[PaymentRecord]] = {}
    for record in records:
        if record.network in payer.rpc_urls and record.valid_before is not None:
            by_network.setdefault(record.network, []).append(record)
    left: list[PaymentRecord] = []
    for network, group in by_network.items():
        try:
            block = yield RpcCall(payer.rpc_urls[network], "eth_getBlockByNumber", ("latest", False))
        except ChainError:
            left += group
            continue
        chain_time = int(block["timestamp"], 16)
        for record in group:
            assert record.valid_before is not None
            if record.valid_before > chain_time or (yield from reconcile(payer, record)) in _OPEN:
                left.append(record)
    return left


class ExpiryWatch:
    """This process's timer at the next expiry of its own payments in flight."""

    def __init__(self, payer: Payer, run: Callable[[Generator[Step, Any, Any]], Any]) -> None:
        self.payer = payer
        self._run = run  # the Agent's sync driver
        self._cond = threading.Condition()
        self._pass = threading.Lock()  # one resolution pass at a time (thread or budget read)
        self._poked = False
        self._busy = False
        self._left = 0  # rows still open after the last pass
        self._wake_at: float | None = None  # time.monotonic() of the next pass, if any
        self._closed = False
        self._thread: threading.Thread | None = None
        self.thread_name = f"own-payments-expiry-{id(self):x}"

    def poke(self) -> None:
        """Look at this process's rows in flight soon (a fetch may have left one)."""
        with self._cond:
            self._poked = True
            self._start()
            self._cond.notify_all()

    def resolve_now(self) -> int:
        """Resolve what the chain shows expired among this process's rows, now; returns how
        many stay open. Re-arms the timer at the next expiry."""
        with self._pass:
            left: list[PaymentRecord] | None
            try:
                records = self.payer.gate.ledger.own_in_flight()
                left = self._run(resolve_expired(self.payer, records)) if records else []
            except Exception:  # the ledger or the RPC failed: still counted, retried
                left = None
            with self._cond:
                if left == []:
                    self._left, self._wake_at = 0, None
                else:
                    # Past it by our clock already: the chain's time lags, or a read failed.
                    delay = (
                        (min(r.valid_before or 0 for r in left) + MARGIN_SECONDS - self.payer.clock())
                        if left
                        else 0.0
                    )
                    self._left = len(left) if left else max(self._left, 1)
                    self._wake_at = time.monotonic() + (delay if delay > 0 else RETRY_SECONDS)
                    self._start()
                self._cond.notify_all()
                return self._left

    def _start(self) -> None:
        """The timer's thread, started at the first row to watch (called holding _cond)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, daemon=True, name=self.thread_name)
            self._thread.start()

    def wait_clear(self, timeout: float | None = None) -> bool:
        """Wait until a pass finds none of this process's rows left open; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._poked and not self._busy and self._left == 0, timeout
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the timer; what is left open is the next process's to reconcile."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._poked:
                    if self._wake_at is not None and time.monotonic() >= self._wake_at:
                        break
                    self._cond.wait(None if self._wake_at is None else self._wake_at - time.monotonic())
                if self._closed:
                    return
                self._poked, self._busy = False, True
            try:
                self.resolve_now()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
