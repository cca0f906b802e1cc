"""The channel watchdog: a long-lived agent (``x402-agent channels watch``, the MCP server)
looks after its batch-settlement channels while it lives.

Each round runs ``channel_ops.watch_flow`` over every channel not closed: a claim on chain above
the vouchers we signed is reported (an alert, and no more vouchers are signed for it: the
channel is marked withdrawing), and a server that stopped answering gets its channel withdrawn
after the contract's delay. Rounds run every ``interval`` seconds or when woken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from .channel_ops import DEFAULT_SILENCE_SECONDS, watch_flow
from .errors import SettlementMismatch, X402AgentError
from .flow import Payer, Step
from .ledger.channels import ChannelRecord, ChannelState

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 30.0


class ChannelWatchdog:
    def __init__(
        self,
        payer: Payer,
        run: Callable[[Generator[Step, Any, Any]], Any],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        silence: float = DEFAULT_SILENCE_SECONDS,
    ) -> None:
        self.payer = payer
        self._run = run  # the Agent's sync driver
        self.interval = interval
        self.silence = silence
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one round at a time
        self.alerts: list[dict[str, Any]] = []

    def round(self) -> list[ChannelRecord]:
        """One pass over the open channels, now; the channels as they are afterwards."""
        with self._lock:
            result = []
            for channel in self.payer.gate.ledger.channels.all():
                if channel.state is ChannelState.CLOSED:
                    result.append(channel)
                    continue
                try:
                    channel = self._run(watch_flow(self.payer, channel, self.payer.clock(), self.silence))
                except SettlementMismatch as claimed:
                    # Withdrawing already: no voucher is signed for it again.
                    self.alerts.append({"channel_id": channel.channel_id, "message": claimed.message})
                    log.error("channel %s: %s", channel.channel_id, claimed.message)
                    channel = self.payer.gate.ledger.channels.get(channel.channel_id) or channel
                except X402AgentError as failed:  # the chain or the server: next round
                    log.warning("channel %s: watch round failed: %s", channel.channel_id, failed.message)
                result.append(channel)
            return result

    def start(self) -> ChannelWatchdog:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, daemon=True, name=f"channel-watch-{id(self):x}"
            )
            self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self.round()
            except Exception:  # the ledger closed under us, or a bug: logged, retried
                log.exception("channel watch round failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
