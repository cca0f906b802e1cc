"""The operations agents use (fetch, quote, receipts), written once.

The CLI, the MCP server and the LangChain toolkit are thin adapters over ``Agent``; this module
imports none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .flow import FetchOutcome, FetchRequest, Payer
from .home import AgentHome, open_home
from .ledger import PaymentRecord, PaymentState, SQLiteLedger
from .policy import Policy, load_policy
from .quote import Quote, quote_flow
from .selection import PriceLimit
from .signer import LocalKeySigner, PaymentSigner
from .spendgate import CapSpendGate


class PolicyFile:
    """The policy on disk, re-read when the file changes so a running agent follows it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._policy: Policy | None = None

    def __call__(self) -> Policy:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._policy is None or stamp != self._stamp:
            self._policy, self._stamp = load_policy(self.path), stamp
        return self._policy


class Agent:
    """One paying agent: a payer (policy gate, ledger, signer) and pooled HTTP clients."""

    def __init__(self, payer: Payer) -> None:
        from .client import AsyncX402Client, X402Client

        self.payer = payer
        self._sync = X402Client(payer)
        self._async: AsyncX402Client | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, home: AgentHome | Path | None = None, signer: PaymentSigner | None = None
             ) -> Agent:
        home = home if isinstance(home, AgentHome) else open_home(home)
        policy = PolicyFile(home.policy_path)
        policy()  # fail at start, with a clear error, on a missing or invalid policy
        ledger = SQLiteLedger(home.ledger_path)
        if signer is None:
            signer = LocalKeySigner.from_keystore(home.path(home.config.signer.keystore),
                                                  home.keystore_password())
        return cls(Payer(gate=CapSpendGate(policy, ledger), signer=signer,
                         rpc_urls=dict(home.config.rpc_urls)))

    def close(self) -> None:
        self._sync.close()

    @staticmethod
    def request(url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                body: bytes | str | None = None, max_price: str | None = None,
                idempotency_key: str | None = None, session: str | None = None) -> FetchRequest:
        return FetchRequest(
            url=url, method=method.upper(), headers=dict(headers or {}),
            body=body.encode() if isinstance(body, str) else body,
            max_price=PriceLimit.parse(max_price) if max_price is not None else None,
            idempotency_key=idempotency_key, session=session)

    def fetch(self, url: str, **options: Any) -> FetchOutcome:
        return self._sync.fetch(self.request(url, **options))

    async def afetch(self, url: str, **options: Any) -> FetchOutcome:
        from .client import AsyncX402Client

        # httpx's async pool belongs to one event loop; callers may run several in turn.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async, self._async_loop = AsyncX402Client(self.payer), loop
        return await self._async.fetch(self.request(url, **options))

    def quote(self, url: str, **options: Any) -> Quote:
        return self._sync.run(quote_flow(self.payer, self.request(url, **options)))

    def receipts(self, limit: int = 50, states: Sequence[PaymentState] | None = None
                 ) -> list[PaymentRecord]:
        return self.payer.gate.ledger.recent(limit, states)
