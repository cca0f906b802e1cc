"""The policy decision: a pure function of the policy, the offer, who asks, what is already
counted, and the time. No I/O: the ledger gathers ``Usage`` inside the same transaction that
records the reservation, so the decision and the reservation cannot be raced apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .money import format_units
from .policy import DEFAULT_SESSION, AssetRule, Policy, SessionRule, host_matches
from .reasons import Reason

# Hosts sharing one ledger may disagree on the time by a little; more than this before a
# session's recorded start means a clock was set back.
SESSION_CLOCK_TOLERANCE_SECONDS = 30


class OfferLike(Protocol):
    @property
    def network(self) -> str: ...
    @property
    def asset(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def pay_to(self) -> str: ...


@dataclass(frozen=True)
class PaymentContext:
    """Who asks to pay for what: everything the policy may look at besides the offer."""

    method: str
    url: str
    host: str
    request_body_sha256: str
    request_fingerprint: str
    idempotency_key: str | None = None
    session: str | None = None  # id of one MCP connection / toolkit / named CLI session
    session_profile: str | None = None  # which SessionRule applies (DEFAULT_SESSION if None)


@dataclass(frozen=True)
class Usage:
    """What the ledger counts against the limits (reserved + sent + unknown + settled)."""

    daily_spent: int = 0
    session_spent: int = 0
    session_started_at: float | None = None
    payments_last_minute: int = 0
    consecutive_failures: int = 0
    # A payment whose settlement transaction the chain contradicted (since the breaker's reset).
    settlement_mismatch: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason  # ALLOWED or a refusal
    message: str
    asset: AssetRule | None = None
    needs_approval: bool = False
    remaining: dict[str, str] = field(default_factory=dict)


def session_rule(policy: Policy, context: PaymentContext) -> SessionRule | None:
    if context.session is None:
        return None
    return policy.sessions.get(context.session_profile or DEFAULT_SESSION)


def _lists_refuse(
    value: str,
    allow: tuple[str, ...] | None,
    deny: tuple[str, ...],
    kind: str,
    codes: tuple[Reason, Reason],
    matches: bool = False,
) -> tuple[Reason, str] | None:
    """``codes``: the refusals for a denied value and for one not on the allow list."""

    def hit(items: tuple[str, ...]) -> bool:
        return host_matches(value, items) if matches else value.lower() in {i.lower() for i in items}

    if hit(deny):
        return codes[0], f"{kind} {value} is on the deny list"
    if allow is not None and not hit(allow):
        return codes[1], f"{kind} {value} is not on the allow list"
    return None


def _under_prefix(url: str, prefix: str) -> bool:
    """``url`` starts with ``prefix``; a prefix that ends inside the host part only matches at
    the host's end, so ``https://api.example.com`` does not admit ``https://api.example.com.evil``
    nor ``https://api.example.com@evil.net/``."""
    if not url.startswith(prefix):
        return False
    if "/" in prefix.partition("://")[2]:
        return True
    return url[len(prefix) : len(prefix) + 1] in ("", "/", "?", "#")


def host_refusal(policy: Policy, host: str) -> tuple[Reason, str] | None:
    """The host lists alone: checked before any request is sent, so a refused host (say an
    internal address) is never even contacted."""
    return _lists_refuse(
        host,
        policy.hosts.allow,
        policy.hosts.deny,
        "host",
        (Reason.HOST_DENIED, Reason.HOST_NOT_ALLOWED),
        True,
    )


def _session_refusal(
    policy: Policy,
    rule: SessionRule,
    offer: OfferLike,
    context: PaymentContext,
    asset: AssetRule,
    usage: Usage,
    now: float,
) -> tuple[Reason, str] | None:
    if usage.session_started_at is not None:
        elapsed = now - usage.session_started_at
        if elapsed >= rule.lifetime_seconds:
            return Reason.SESSION_EXPIRED, f"session ended after {rule.lifetime_seconds}s"
        if elapsed < -SESSION_CLOCK_TOLERANCE_SECONDS:
            # A clock set back before the session began must not give it a second life.
            return Reason.SESSION_EXPIRED, "the clock is before this session's start"
    scope = rule.scope
    if scope.hosts is not None and not host_matches(context.host, scope.hosts):
        return Reason.SESSION_SCOPE, f"host {context.host} is outside this session's scope"
    if scope.url_prefixes is not None and not any(_under_prefix(context.url, p) for p in scope.url_prefixes):
        return Reason.SESSION_SCOPE, "URL is outside this session's scope"
    if scope.payees is not None and offer.pay_to not in scope.payees:
        return Reason.SESSION_SCOPE, f"payee {offer.pay_to} is outside this session's scope"
    if scope.networks is not None and offer.network not in scope.networks:
        return Reason.SESSION_SCOPE, f"network {offer.network} is outside this session's scope"
    if scope.assets is not None and asset not in [policy.asset(k) for k in scope.assets]:
        return Reason.SESSION_SCOPE, f"{asset.symbol} is outside this session's scope"
    return None


def _allowance(policy: Policy, rule: SessionRule, asset: AssetRule) -> int | None:
    for key, amount in rule.allowance.items():
        if policy.asset(key) == asset:
            return amount
    return None


def decide(policy: Policy, offer: OfferLike, context: PaymentContext, usage: Usage, now: float) -> Decision:
    """Allow or refuse one payment, with a reason code and the budgets that would remain."""
    if usage.settlement_mismatch is not None:
        # A server claimed a settlement the chain does not show: whatever the policy's
        # threshold, nothing more is paid until a human has looked and reset the breaker.
        return Decision(
            False,
            Reason.CIRCUIT_OPEN,
            f"payment {usage.settlement_mismatch} was not settled by the transaction"
            " the server named; paying is stopped until the breaker is reset",
        )
    breaker = policy.circuit_breaker
    if breaker is not None and usage.consecutive_failures >= breaker.max_consecutive_failures:
        return Decision(
            False,
            Reason.CIRCUIT_OPEN,
            f"{usage.consecutive_failures} consecutive failed or unknown settlements;"
            " paying is stopped until the breaker is reset",
        )
    refusal = host_refusal(policy, context.host) or _lists_refuse(
        offer.network,
        policy.networks.allow,
        policy.networks.deny,
        "network",
        (Reason.NETWORK_DENIED, Reason.NETWORK_NOT_ALLOWED),
    )
    if refusal:
        return Decision(False, *refusal)
    asset = policy.find_asset(offer.network, offer.asset)
    if asset is None:
        return Decision(
            False, Reason.UNKNOWN_ASSET, f"asset {offer.asset} on {offer.network} is not in the policy"
        )
    refusal = _lists_refuse(
        offer.pay_to,
        policy.payees.allow,
        policy.payees.deny,
        "payee",
        (Reason.PAYEE_DENIED, Reason.PAYEE_NOT_ALLOWED),
    )
    if refusal:
        return Decision(False, *refusal, asset=asset)

    def units(value: int) -> str:
        return f"{format_units(value, asset.decimals)} {asset.symbol}"

    remaining = {"per_request": units(asset.per_request_max)}
    if asset.daily_max is not None:
        remaining["daily"] = units(max(asset.daily_max - usage.daily_spent, 0))
    rule = session_rule(policy, context)
    allowance = _allowance(policy, rule, asset) if rule is not None else None
    if rule is not None:
        remaining["session"] = units(max((allowance or 0) - usage.session_spent, 0))

    def refuse(reason: Reason, message: str) -> Decision:
        return Decision(False, reason, message, asset, remaining=remaining)

    if offer.amount > asset.per_request_max:
        return refuse(
            Reason.PER_REQUEST_CAP_EXCEEDED,
            f"price {units(offer.amount)} exceeds the per-request cap {units(asset.per_request_max)}",
        )
    if policy.max_payments_per_minute is not None and (
        usage.payments_last_minute >= policy.max_payments_per_minute
    ):
        return refuse(
            Reason.RATE_LIMITED, f"already {usage.payments_last_minute} payments in the last minute"
        )
    if asset.daily_max is not None and usage.daily_spent + offer.amount > asset.daily_max:
        return refuse(
            Reason.DAILY_LIMIT_EXCEEDED,
            f"price {units(offer.amount)} exceeds what remains today ({remaining['daily']})",
        )
    if context.session is not None and policy.sessions and rule is None:
        return refuse(
            Reason.SESSION_UNKNOWN, f"no session rule {context.session_profile or DEFAULT_SESSION!r}"
        )
    if rule is not None:
        refusal = _session_refusal(policy, rule, offer, context, asset, usage, now)
        if refusal:
            return refuse(*refusal)
        if allowance is None:
            return refuse(
                Reason.SESSION_ASSET_NOT_ALLOWED, f"this session has no allowance in {asset.symbol}"
            )
        if usage.session_spent + offer.amount > allowance:
            return refuse(
                Reason.SESSION_ALLOWANCE_EXCEEDED,
                f"price {units(offer.amount)} exceeds what remains of this session's "
                f"allowance ({remaining['session']})",
            )
    needs_approval = asset.approval_above is not None and offer.amount > asset.approval_above
    return Decision(True, Reason.ALLOWED, "allowed", asset, needs_approval, remaining)
