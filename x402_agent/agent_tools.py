"""The agent-facing tools (fetch, quote, budget, receipts), written once for every adapter.

The MCP server (``mcp_server.py``) and the LangChain toolkit (``langchain_tools.py``) are thin
wrappers over ``AgentTools``; this module imports neither ``mcp`` nor ``langchain``. One
``AgentTools`` = one agent session (one MCP connection, one toolkit): its session allowance and
lifetime count from when it was opened.

Results are pydantic models; every failure is a ``ToolRefusal`` carrying the error's stable
``reason`` code, a message written for a model, and for spending refusals what remains of the
budget, so the model can decide what to do next.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .errors import InvalidRequest, PolicyDenied, X402AgentError

if TYPE_CHECKING:
    from .flow import ApprovalRequest, FetchOutcome
    from .operations import Agent

# The body handed to a model is cut here; ``truncated`` says so and ``body_bytes`` is the size.
MAX_BODY_BYTES = 64 * 1024
MAX_RECEIPTS = 200
RECEIPT_STATES = ("reserved", "sent", "settled", "released", "unknown")
ReceiptState = Literal["reserved", "sent", "settled", "released", "unknown"]

Approver = Callable[["ApprovalRequest"], "bool | Awaitable[bool | None] | None"]

# What each reason means for the model, and what it can do next (also used in tool docs).
NEXT_STEP: dict[str, str] = {
    "per_request_cap_exceeded": "the price is above the policy's per-request cap: do not retry; "
                                "look for a cheaper resource or ask the user",
    "price_above_max": "the price is above the max_price you gave: raise max_price only if the "
                       "user agreed, or skip the resource",
    "daily_limit_exceeded": "today's budget is spent: stop paying until the day resets",
    "session_allowance_exceeded": "this session's allowance is spent: stop paying and tell the "
                                  "user",
    "approval_required": "the payment needs a human approval that could not be asked for here: "
                         "ask the user to approve it out of band",
    "approval_denied": "a human rejected the payment: do not retry it",
    "circuit_open": "payments are stopped after repeated failures: a human must reset "
                            "the breaker",
    "session_unknown": "this session has expired or is unknown: start a new MCP connection or "
                       "toolkit",
    "session_asset_not_allowed": "this session may not pay in that asset",
    "host_not_allowed": "the policy does not allow paying this host",
    "payee_not_allowed": "the policy does not allow paying this payee",
    "rate_limited": "too many payments in the last minute: wait, then retry",
    "invalid_max_price": "max_price must be a positive decimal like '0.05' or '0.05 USDC'",
    "unsupported_url": "only http:// and https:// URLs with a host can be fetched",
    "header_injection": "header names and values may not contain line breaks",
    "invalid_header": "headers must be valid HTTP tokens with printable ASCII values",
    "reserved_header": "payment headers are set by the wallet, never by the caller",
    "paid_not_delivered": "the payment was sent but the resource was not delivered; the amount "
                          "stays counted: report it to the user with the receipt id, do not "
                          "pay again",
    "idempotency_key_conflict": "that idempotency key was used for another request: use a new "
                                "key",
    "payment_in_flight": "a payment with this idempotency key is still in flight: retry later "
                         "with the same key",
}


class ToolRefusal(Exception):
    """A tool call that did not succeed, in terms a model can act on."""

    def __init__(self, reason: str, message: str, *, error: str = "X402AgentError",
                 details: Mapping[str, Any] | None = None,
                 budget: dict[str, Any] | None = None) -> None:
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.message = message
        self.error = error
        self.details = dict(details or {})
        self.budget = budget

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"refused": True, "reason": self.reason, "error": self.error,
                                "message": self.message}
        if self.reason in NEXT_STEP:
            data["next_step"] = NEXT_STEP[self.reason]
        if self.details:
            data["details"] = self.details
        if self.budget is not None:
            data["budget"] = self.budget
        return data

    def __str__(self) -> str:
        import json

        return json.dumps(self.to_dict(), default=str, sort_keys=True)


class FetchResult(BaseModel):
    """The resource, and what (if anything) was paid for it."""

    url: str
    status: int = Field(description="HTTP status of the final response")
    content_type: str | None = None
    body: str = Field(description="the response body: text, or base64 when it is binary")
    body_encoding: Literal["text", "base64"] = "text"
    body_bytes: int = Field(description="size of the whole body in bytes")
    truncated: bool = Field(description=f"true when the body was cut at {MAX_BODY_BYTES} bytes")
    paid: bool = Field(description="true when a payment was made (or replayed) for this request")
    amount: str | None = Field(None, description="amount paid, in the asset's atomic units")
    price: str | None = Field(None, description="amount paid for humans, e.g. '0.001 USDC'")
    network: str | None = None
    pay_to: str | None = None
    receipt_id: str | None = Field(None, description="the receipt of the payment (see receipts)")
    payment_state: str | None = None
    settlement_tx: str | None = None
    replayed: bool = Field(False, description="an idempotent repeat answered from the ledger: "
                                              "nothing was paid again")


class QuoteOption(BaseModel):
    index: int
    network: str
    asset: str
    amount: str
    pay_to: str
    price: str | None = None
    symbol: str | None = None
    allowed: bool
    reason: str


class QuoteResult(BaseModel):
    """What a URL would cost and whether the policy would pay it. Nothing is paid."""

    url: str
    status: int
    payment_required: bool
    allowed: bool
    reason: str = Field(description="'allowed', 'free', or why the policy would refuse")
    price: str | None = Field(None, description="price of the offer that would be paid")
    options: list[QuoteOption] = Field(default_factory=list)
    policy_version: int | None = None


class AssetBudget(BaseModel):
    symbol: str
    network: str
    asset: str
    decimals: int
    per_request_max: str
    daily_max: str | None
    counted_today: str
    daily_remaining: str | None
    daily_remaining_display: str | None
    in_flight: str
    unknown: str
    unknown_payments: int


class SessionAllowance(BaseModel):
    symbol: str
    network: str
    allowance: str
    spent: str
    remaining: str
    remaining_display: str


class SessionBudget(BaseModel):
    id: str
    profile: str
    lifetime_seconds: int | None = None
    allowance: list[SessionAllowance] | None = None


class BreakerState(BaseModel):
    open: bool
    consecutive_failures: int
    threshold: int | None


class WalletBudget(BaseModel):
    """The smart account's own bounds, read on chain (amounts in atomic units)."""

    account: str
    vault: str
    token: str
    session_key: str
    deployed: bool
    max_value: str = Field(description="the most one payment may move, enforced on chain")
    max_window: str
    payees_restricted: bool
    token_allowed: bool
    session_expiry: str = Field(description="unix time after which this session key signs nothing")
    hot_balance: str = Field(description="what the account holds now")
    vault_balance: str
    vault_available: str = Field(description="what the account may still pull this period")


class BudgetResult(BaseModel):
    """What remains to spend (amounts in atomic units, ``*_display`` for humans)."""

    policy_version: int
    policy_digest: str
    assets: list[AssetBudget]
    session: SessionBudget | None = None
    circuit_breaker: BreakerState
    wallet: WalletBudget | None = Field(
        None, description="a smart-account payer's on-chain bounds and balances")


class Receipt(BaseModel):
    id: str
    state: str
    created_at: float
    method: str
    url: str
    network: str
    asset: str
    symbol: str
    amount: str
    price: str
    pay_to: str
    settlement_tx: str | None = None
    response_status: int | None = None
    policy_version: int | None = None
    policy_digest: str | None = None
    idempotency_key: str | None = None


class ReceiptsResult(BaseModel):
    receipts: list[Receipt]


def refusal(exc: BaseException, budget: Callable[[], dict[str, Any]] | None = None) -> ToolRefusal:
    """Turn any failure into a ``ToolRefusal`` (already one: returned as is)."""
    if isinstance(exc, ToolRefusal):
        return exc
    if isinstance(exc, X402AgentError):
        remaining = None
        if isinstance(exc, PolicyDenied) and budget is not None:
            try:
                remaining = budget()
            except Exception:  # the refusal matters more than the budget view
                remaining = None
        return ToolRefusal(exc.reason, exc.message, error=type(exc).__name__,
                           details=_safe(exc.details), budget=remaining)
    if isinstance(exc, ValueError | TypeError):
        return ToolRefusal("invalid_request", str(exc)[:300], error=type(exc).__name__)
    return ToolRefusal("internal_error", f"{type(exc).__name__}: {str(exc)[:300]}",
                       error=type(exc).__name__)


def _safe(details: Mapping[str, Any]) -> dict[str, Any]:
    import json

    safe: dict[str, Any] = json.loads(json.dumps(dict(details), default=str))
    return safe


def _check_max_price(max_price: str | None) -> None:
    if max_price is None:
        return
    from fractions import Fraction

    from .selection import PriceLimit

    limit = PriceLimit.parse(max_price.strip())
    try:
        value = Fraction(limit.amount)
    except (ValueError, ZeroDivisionError):
        value = Fraction(-1)
    if value <= 0 or value > 10**12:
        raise InvalidRequest(f"max price must be positive and sensible, got {max_price!r}",
                             reason="invalid_max_price")


def _check_arguments(url: str, method: str, headers: Mapping[str, str] | None,
                     max_price: str | None) -> None:
    if not isinstance(url, str) or len(url) > 8192:
        raise InvalidRequest("url must be a string of at most 8192 characters",
                             reason="unsupported_url")
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidRequest("headers must be an object of name: value strings",
                             reason="invalid_header")
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidRequest("header names and values must be strings",
                                 reason="invalid_header")
    _check_max_price(max_price)


def fetch_result(url: str, outcome: FetchOutcome, limit: int = MAX_BODY_BYTES) -> FetchResult:
    from .money import format_units

    content = outcome.content or b""
    cut = content[:limit]
    try:
        body, encoding = cut.decode("utf-8"), "text"
    except UnicodeDecodeError as exc:
        # Text cut in the middle of a character stays text; anything else is binary.
        if len(cut) < len(content) and exc.start >= len(cut) - 3:
            body, encoding = cut[:exc.start].decode("utf-8", "replace"), "text"
        else:
            body, encoding = base64.b64encode(cut).decode(), "base64"
    paid = outcome.payment
    return FetchResult(
        url=url, status=outcome.status, content_type=outcome.content_type, body=body,
        body_encoding=encoding, body_bytes=len(content), truncated=len(content) > limit,
        paid=paid is not None,
        amount=str(paid.amount) if paid else None,
        price=f"{format_units(paid.amount, paid.decimals)} {paid.symbol}" if paid else None,
        network=paid.network if paid else None, pay_to=paid.pay_to if paid else None,
        receipt_id=paid.id if paid else None, payment_state=str(paid.state) if paid else None,
        settlement_tx=paid.settlement_tx if paid else None, replayed=outcome.replayed)


class AgentTools:
    """The tools of one agent session: one ``Agent`` and one session id."""

    def __init__(self, agent: Agent, *, session: str | None = None,
                 session_profile: str | None = None, owns_agent: bool = False) -> None:
        self.agent = agent
        self.session_profile = session_profile
        self.session = agent.open_session(session_profile, session=session)
        self._owns_agent = owns_agent

    @classmethod
    def open(cls, home: Path | str | None = None, *, approver: Approver | None = None,
             session_profile: str | None = None) -> AgentTools:
        from .operations import Agent

        agent = Agent.open(Path(home) if home is not None else None, approver=approver)
        return cls(agent, session_profile=session_profile, owns_agent=True)

    def close(self) -> None:
        if self._owns_agent:
            self.agent.close()

    # ---- helpers ------------------------------------------------------------------------------
    def _budget_dict(self) -> dict[str, Any]:
        return self.agent.budget(self.session, self.session_profile)

    def _refusal(self, exc: BaseException) -> ToolRefusal:
        return refusal(exc, self._budget_dict)

    def _options(self, method: str, headers: Mapping[str, str] | None, body: str | None,
                 max_price: str | None) -> dict[str, Any]:
        return {"method": method, "headers": dict(headers or {}), "body": body,
                "max_price": max_price.strip() if max_price is not None else None,
                "session": self.session, "session_profile": self.session_profile}

    # ---- fetch --------------------------------------------------------------------------------
    def fetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: str | None = None, max_price: str | None = None,
              idempotency_key: str | None = None) -> FetchResult:
        try:
            _check_arguments(url, method, headers, max_price)
            outcome = self.agent.fetch(url, idempotency_key=idempotency_key,
                                       **self._options(method, headers, body, max_price))
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            raise self._refusal(exc) from exc
        return fetch_result(url, outcome)

    async def afetch(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
                     body: str | None = None, max_price: str | None = None,
                     idempotency_key: str | None = None) -> FetchResult:
        try:
            _check_arguments(url, method, headers, max_price)
            outcome = await self.agent.afetch(url, idempotency_key=idempotency_key,
                                              **self._options(method, headers, body, max_price))
        except Exception as exc:
            raise await asyncio.to_thread(self._refusal, exc) from exc
        return fetch_result(url, outcome)

    # ---- quote --------------------------------------------------------------------------------
    def quote(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
              body: str | None = None, max_price: str | None = None) -> QuoteResult:
        try:
            _check_arguments(url, method, headers, max_price)
            quote = self.agent.quote(url, **self._options(method, headers, body, max_price))
        except Exception as exc:
            raise self._refusal(exc) from exc
        chosen = quote.chosen or {}
        price = f"{chosen['price']} {chosen['symbol']}" if "price" in chosen else None
        options = [QuoteOption(**{k: option.get(k) for k in QuoteOption.model_fields
                                  if option.get(k) is not None})
                   for option in quote.options]
        return QuoteResult(url=quote.url, status=quote.status,
                           payment_required=quote.payment_required, allowed=quote.allowed,
                           reason=quote.reason, price=price, options=options,
                           policy_version=quote.policy_version)

    async def aquote(self, url: str, method: str = "GET", headers: dict[str, str] | None = None,
                     body: str | None = None, max_price: str | None = None) -> QuoteResult:
        return await asyncio.to_thread(self.quote, url, method, headers, body, max_price)

    # ---- budget -------------------------------------------------------------------------------
    def budget(self) -> BudgetResult:
        try:
            view = self.agent.budget(self.session, self.session_profile, on_chain=True)
        except Exception as exc:
            raise refusal(exc) from exc
        breaker = view["circuit_breaker"]
        return BudgetResult(
            wallet=WalletBudget(**view["wallet"]) if view.get("wallet") else None,
            policy_version=view["policy_version"], policy_digest=view["policy_digest"],
            assets=[AssetBudget(**a) for a in view["assets"]],
            session=SessionBudget(**view["session"]) if view.get("session") else None,
            circuit_breaker=BreakerState(open=breaker["open"],
                                         consecutive_failures=breaker["consecutive_failures"],
                                         threshold=breaker["threshold"]))

    async def abudget(self) -> BudgetResult:
        return await asyncio.to_thread(self.budget)

    # ---- receipts -----------------------------------------------------------------------------
    def receipts(self, limit: int = 20, state: str | None = None) -> ReceiptsResult:
        from .ledger import PaymentState
        from .receipts import receipt

        try:
            if not isinstance(limit, int) or isinstance(limit, bool) or not (
                    1 <= limit <= MAX_RECEIPTS):
                raise InvalidRequest(f"limit must be between 1 and {MAX_RECEIPTS}",
                                     reason="invalid_limit")
            if state is not None and state not in RECEIPT_STATES:
                raise InvalidRequest(f"state must be one of {', '.join(RECEIPT_STATES)}",
                                     reason="invalid_state")
            records = self.agent.receipts(limit, [PaymentState(state)] if state else None)
        except Exception as exc:
            raise refusal(exc) from exc
        rows = []
        for record in records:
            data = receipt(record)
            rows.append(Receipt(**{k: data.get(k) for k in Receipt.model_fields
                                   if data.get(k) is not None}))
        return ReceiptsResult(receipts=rows)

    async def areceipts(self, limit: int = 20, state: str | None = None) -> ReceiptsResult:
        return await asyncio.to_thread(self.receipts, limit, state)

    def policy(self) -> dict[str, Any]:
        """The policy in force (read-only): its version, digest and the document."""
        policy = self.agent.payer.gate.policy
        return {"version": policy.version, "digest": policy.digest,
                "policy": policy.model_dump(mode="json")}
