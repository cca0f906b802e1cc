"""The operations agents use (fetch, quote, receipts), written once.

The CLI, the MCP server and the LangChain toolkit are thin adapters over ``Agent``; this module
imports none of them.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import budget_view
from .content_store import CONTENT_DIR, ContentStore
from .deadline import DEFAULT_TIMEOUT_SECONDS, check_timeout
from .discovery import DEFAULT_RESULTS, Discovery, DiscoveryRequest, discover_flow
from .errors import ConfigError, InvalidRequest
from .expiry import ExpiryWatch
from .flow import (
    STALE_RESERVATION_SECONDS,
    ApprovalRequest,
    FetchOutcome,
    FetchRequest,
    Payer,
    reconcile,
)
from .home import AgentHome, open_home
from .ledger import Ownership, PaymentRecord, PaymentState, Verification, open_ledger
from .ledger.entitlements import SignInRecord
from .policy_store import ApprovedPolicy, PolicyStore, expectations
from .quote import Quote, quote_flow
from .reasons import Reason
from .selection import PriceLimit
from .signer import LocalKeySigner, PaymentSigner
from .spendgate import PolicyGate
from .verifier import Verifier

if TYPE_CHECKING:
    from .channel_watch import ChannelWatchdog
    from .client import AsyncApprover, AsyncX402Client
    from .ledger.channels import ChannelRecord


def _completed(answer: Awaitable[bool | None]) -> bool | None:
    """An async approver under a sync fetch, run to its answer on a private event loop: here
    when this thread runs no loop, else in a worker thread (a running loop cannot be re-entered,
    and the sync fetch blocks it anyway until the answer comes)."""

    async def wait() -> bool | None:
        return await answer

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(1, thread_name_prefix="x402-approver") as pool:
        return pool.submit(asyncio.run, wait()).result()


class Agent:
    """One paying agent: a payer (policy gate, ledger, signer) and pooled HTTP clients."""

    def __init__(self, payer: Payer, approver: AsyncApprover | None = None) -> None:
        from .client import X402Client

        self.payer = payer
        # The on-chain receipt check runs off the paid request's path, in this agent's
        # verifier; a mismatch it finds opens the breaker and is reported by ``take_alerts``.
        self.verifier: Verifier | None = None
        if payer.verify_on_chain and payer.rpc_urls and payer.defer_verification is None:
            self.verifier = Verifier(payer.gate.ledger, payer.rpc_urls, clock=payer.clock)
            payer.defer_verification = self.verifier.submit
        # Who says yes to payments above the approval threshold (a CLI prompt, an MCP
        # elicitation, a LangChain callback); without one such payments are refused.
        self.approver = approver
        self._sync = X402Client(payer, approver=self._sync_approver)
        # This process's own payments left sent/unknown (refused, cut by a deadline, lost) are
        # resolved from the chain at their expiry while it lives, not only at the next start.
        self.expiry = ExpiryWatch(payer, self._sync.run)
        self._async: AsyncX402Client | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        # Whose Bazaar listing ``discover`` reads when the caller names none (the home's config).
        self.facilitator_url: str | None = None
        self._channel_watch: ChannelWatchdog | None = None

    def _sync_approver(self, request: ApprovalRequest) -> bool | None:
        if self.approver is None:
            return None
        answer = self.approver(request)
        return _completed(answer) if inspect.isawaitable(answer) else answer

    @classmethod
    def open(
        cls,
        home: AgentHome | Path | None = None,
        signer: PaymentSigner | None = None,
        approver: AsyncApprover | None = None,
    ) -> Agent:
        home = home if isinstance(home, AgentHome) else open_home(home)
        if signer is None and home.config.signer.kind == "smart_account":
            from .chain.wallet import open_hot_wallet  # web3 loads only for smart accounts

            signer = open_hot_wallet(home)
        elif signer is None:
            signer = LocalKeySigner.from_keystore(
                home.path(home.config.signer.keystore), home.keystore_password()
            )
        # Pay only under a policy the enrolled device approved for this account and chain;
        # anything else fails here, at start, with a clear error.
        policy = ApprovedPolicy(PolicyStore(home.root, expectations(home, signer.address)))
        policy()
        ledger = open_ledger(home.config.ledger, home.root)
        agent = cls(
            Payer(
                gate=PolicyGate(policy, ledger, confirm=policy.confirm),
                signer=signer,
                rpc_urls=dict(home.config.rpc_urls),
                verify_on_chain=home.config.verify_on_chain,
                content_store=ContentStore(home.path(CONTENT_DIR)),
            ),
            approver,
        )
        agent.facilitator_url = home.config.facilitator_url
        agent.reconcile()
        if agent.verifier is not None:
            agent.verifier.check_pending()  # what an earlier process left unchecked
        return agent

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._channel_watch is not None:
            self._channel_watch.close()
        self.expiry.close()  # before the HTTP client it drives its chain reads with
        self._sync.close()
        if self.verifier is not None:  # check what this process paid before it exits
            self.verifier.close()
        close_signer = getattr(self.payer.signer, "close", None)  # a smart account's RPC clients
        if callable(close_signer):
            close_signer()
        self.payer.gate.ledger.close()

    def reconcile(self) -> dict[str, int]:
        """Resolve what processes that are gone left open (a live process's payments are its
        own to finish): unsent reservations are released (nothing signed ever left them), sent
        and unknown payments are checked against the chain."""
        counts: dict[str, int] = {}
        now = self.payer.clock()
        for claim in self.payer.gate.ledger.claim_orphans():
            record = claim.record
            if record.state == PaymentState.RESERVED:
                if claim.ownership is Ownership.OWNERLESS and (
                    now - record.created_at < STALE_RESERVATION_SECONDS
                ):
                    continue  # a previous release's process may be about to sign it
                state = self.payer.gate.ledger.release(record.id, reason="abandoned_before_sending").state
            else:
                state = self._sync.run(reconcile(self.payer, record))
            counts[str(state)] = counts.get(str(state), 0) + 1
        if counts.keys() & {str(PaymentState.SENT), str(PaymentState.UNKNOWN)}:
            self.expiry.poke()  # taken over, not expired yet: now this process's to resolve
        return counts

    def open_session(self, profile: str | None = None, session: str | None = None) -> str:
        """Start a session (one MCP connection, one toolkit, one named CLI session): its
        allowance and lifetime count from now."""
        session = session or uuid.uuid4().hex
        self.payer.gate.ledger.open_session(session, profile, self.payer.clock())
        return session

    def budget(
        self, session: str | None = None, profile: str | None = None, *, on_chain: bool = False
    ) -> dict[str, Any]:
        """What remains; ``on_chain`` adds a smart account's bounds and balances (RPC reads).
        This process's own payments the chain shows expired are resolved first, so a release
        shows at once, not at the watch's next timer."""
        self.expiry.resolve_now()
        view = budget_view(
            self.payer.gate.policy, self.payer.gate.ledger, self.payer.clock(), session, profile
        )
        status = getattr(self.payer.signer, "status", None)
        if on_chain and callable(status):
            view["wallet"] = {
                key: str(value) if isinstance(value, int) and not isinstance(value, bool) else value
                for key, value in status().items()
            }
        return view

    def reset_breaker(self) -> None:
        self.payer.gate.ledger.reset_breaker(self.payer.clock())

    @staticmethod
    def request(
        url: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        max_price: str | None = None,
        idempotency_key: str | None = None,
        session: str | None = None,
        session_profile: str | None = None,
        timeout_seconds: float | None = None,
    ) -> FetchRequest:
        return FetchRequest(
            url=url,
            method=method.upper(),
            headers=dict(headers or {}),
            body=body.encode() if isinstance(body, str) else body,
            max_price=PriceLimit.parse(max_price) if max_price is not None else None,
            idempotency_key=idempotency_key,
            session=session,
            session_profile=session_profile,
            timeout_seconds=DEFAULT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds,
        )

    def fetch(self, url: str, **options: Any) -> FetchOutcome:
        try:
            return self._watched(self._sync.fetch(self.request(url, **options)))
        except BaseException:
            self.expiry.poke()  # a refusal after paying, a deadline, a loss: a row may be open
            raise

    def _watched(self, outcome: FetchOutcome) -> FetchOutcome:
        if outcome.payment is not None and outcome.payment.state in (PaymentState.SENT, PaymentState.UNKNOWN):
            self.expiry.poke()
        return outcome

    def _async_client(self) -> AsyncX402Client:
        from .client import AsyncX402Client

        # httpx's async pool belongs to one event loop; callers may run several in turn.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = AsyncX402Client(self.payer, approver=self.approver)
            self._async_loop = loop
        return self._async

    async def afetch(self, url: str, **options: Any) -> FetchOutcome:
        try:
            return self._watched(await self._async_client().fetch(self.request(url, **options)))
        except BaseException:
            self.expiry.poke()
            raise

    def quote(self, url: str, **options: Any) -> Quote:
        request = self.request(url, **options)
        return self._sync.run(quote_flow(self.payer, request), request.timeout_seconds)

    async def aquote(self, url: str, **options: Any) -> Quote:
        """``quote`` on the event loop's HTTP pool, its ledger reads in a worker thread."""
        request = self.request(url, **options)
        return await self._async_client().run(quote_flow(self.payer, request), request.timeout_seconds)

    def discovery_request(
        self,
        query: str | None = None,
        max_price: str | None = None,
        network: str | None = None,
        limit: int = DEFAULT_RESULTS,
        facilitator_url: str | None = None,
        session: str | None = None,
        session_profile: str | None = None,
        timeout_seconds: float | None = None,
    ) -> DiscoveryRequest:
        url = facilitator_url or self.facilitator_url
        if url is None:
            raise ConfigError(
                "no facilitator to ask: give facilitator_url or set it in the home's config.json",
                reason=Reason.FACILITATOR_URL_MISSING,
            )
        return DiscoveryRequest(
            facilitator_url=url,
            query=query,
            max_price=PriceLimit.parse(max_price) if max_price is not None else None,
            network=network,
            limit=limit,
            session=session,
            session_profile=session_profile,
            timeout_seconds=check_timeout(
                DEFAULT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
            ),
        )

    def discover(self, query: str | None = None, **options: Any) -> Discovery:
        """What the facilitator's Bazaar lists that matches, each with the policy's verdict;
        pays nothing and requests nothing listed."""
        request = self.discovery_request(query, **options)
        return self._sync.run(discover_flow(self.payer, request), request.timeout_seconds)

    async def adiscover(self, query: str | None = None, **options: Any) -> Discovery:
        request = self.discovery_request(query, **options)
        return await self._async_client().run(discover_flow(self.payer, request), request.timeout_seconds)

    def verified(self, outcome: FetchOutcome, timeout: float | None = None) -> FetchOutcome:
        """``outcome`` once its payment's on-chain check is done (a CLI about to exit, a test);
        its payment's ``verification`` says how it ended (pending: not found yet)."""
        paid = outcome.payment
        if paid is None or self.verifier is None or paid.verification != Verification.PENDING:
            return outcome
        self.verifier.wait_idle(timeout)
        record = self.payer.gate.ledger.get(paid.id) or paid
        return replace(
            outcome, payment=record, confirmed_on_chain=record.verification == Verification.VERIFIED
        )

    def take_alerts(self) -> list[dict[str, Any]]:
        """Settlements the chain contradicted, found since the last call (each reported once)."""
        return self.verifier.take_alerts() if self.verifier is not None else []

    def channels(self) -> list[ChannelRecord]:
        """The batch-settlement channels this ledger keeps (deposit, signed, charged, returned)."""
        return self.payer.gate.ledger.channels.all()

    def refund_channel(self, channel_id: str) -> ChannelRecord:
        """Ask the channel's server for the unused deposit back (what the chain moved counts)."""
        from .channel_ops import refund_flow

        channel = self.payer.gate.ledger.channels.get(channel_id)
        if channel is None:
            raise InvalidRequest(
                f"no channel {channel_id[:80]!r} in this ledger", reason=Reason.INVALID_ARGUMENTS
            )
        result: ChannelRecord = self._sync.run(refund_flow(self.payer, channel))
        return result

    def channel_watchdog(
        self, interval: float | None = None, silence: float | None = None
    ) -> ChannelWatchdog:
        """This agent's channel watchdog (the long-running commands ``start()`` it): rounds
        every ``interval`` s; a server silent for ``silence`` s has its channels withdrawn."""
        from .channel_ops import DEFAULT_SILENCE_SECONDS
        from .channel_watch import DEFAULT_INTERVAL_SECONDS, ChannelWatchdog

        if self._channel_watch is None:
            self._channel_watch = ChannelWatchdog(
                self.payer,
                self._sync.run,
                DEFAULT_INTERVAL_SECONDS if interval is None else interval,
                DEFAULT_SILENCE_SECONDS if silence is None else silence,
            )
        return self._channel_watch

    def receipts(self, limit: int = 50, states: Sequence[PaymentState] | None = None) -> list[PaymentRecord]:
        return self.payer.gate.ledger.recent(limit, states)

    def sign_ins(self, limit: int = 50) -> list[SignInRecord]:
        """Accesses by sign-in-with-x (an earlier payment's entitlement; nothing paid), newest first."""
        return self.payer.gate.ledger.entitlements.sign_ins(limit)
