"""The spend gate: the only door through which a payment gets permission to be signed.

``evaluate`` answers "would this be allowed?" without side effects (quotes, choosing an offer);
``reserve`` re-checks and records the reservation atomically, so nothing is signed unless the
ledger holds it first. The minimal gate here enforces the policy's per-request caps, asset list
and host lists; the policy engine (cumulative limits, sessions) implements the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .challenge import Offer
from .errors import PolicyDenied
from .ledger import Ledger, NewPayment, PaymentRecord
from .policy import AssetRule, Policy


@dataclass(frozen=True)
class PaymentContext:
    """Who asks to pay for what: everything the policy may look at besides the offer."""

    method: str
    url: str
    host: str
    request_body_sha256: str
    request_fingerprint: str
    idempotency_key: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "allowed" or a refusal code
    message: str
    asset: AssetRule | None = None
    remaining: dict[str, Any] | None = None


class SpendGate(Protocol):
    @property
    def policy(self) -> Policy: ...
    @property
    def ledger(self) -> Ledger: ...
    def evaluate(self, offer: Offer, context: PaymentContext) -> Decision: ...
    def reserve(self, offer: Offer, context: PaymentContext) -> PaymentRecord: ...


class CapSpendGate:
    """Per-request caps, asset allowlist and host lists from the current policy."""

    def __init__(self, policy: Policy | Callable[[], Policy], ledger: Ledger) -> None:
        # A callable lets a running agent pick up a newly accepted policy at the next payment.
        self._policy_source = policy if callable(policy) else (lambda: policy)
        self._ledger = ledger

    @property
    def policy(self) -> Policy:
        return self._policy_source()

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def evaluate(self, offer: Offer, context: PaymentContext) -> Decision:
        return decide(self.policy, offer, context)

    def reserve(self, offer: Offer, context: PaymentContext) -> PaymentRecord:
        policy = self.policy
        decision = decide(policy, offer, context)
        if not decision.allowed or decision.asset is None:
            raise PolicyDenied(decision.message, reason=decision.reason, offer=offer.describe())
        rule = decision.asset
        return self._ledger.reserve(NewPayment(
            idempotency_key=context.idempotency_key,
            request_fingerprint=context.request_fingerprint,
            method=context.method, url=context.url,
            request_body_sha256=context.request_body_sha256,
            x402_version=offer.x402_version, network=offer.network, asset=offer.asset,
            symbol=rule.symbol, decimals=rule.decimals, amount=offer.amount,
            pay_to=offer.pay_to,
            requirement_json=offer.requirement.model_dump_json(by_alias=True, exclude_none=True),
            policy_version=policy.version, policy_digest=policy.digest,
        ))


def decide(policy: Policy, offer: Offer, context: PaymentContext) -> Decision:
    """Pure per-payment decision: no I/O, same inputs give the same answer."""
    if not policy.host_allowed(context.host):
        return Decision(False, "host_not_allowed", f"paying {context.host} is not allowed")
    rule = policy.find_asset(offer.network, offer.asset)
    if rule is None:
        return Decision(False, "unknown_asset",
                        f"asset {offer.asset} on {offer.network} is not in the policy")
    if offer.amount > rule.per_request_max:
        return Decision(False, "per_request_cap_exceeded",
                        f"price {offer.amount} exceeds the per-request cap {rule.per_request_max}",
                        rule, {"per_request_max": str(rule.per_request_max)})
    return Decision(True, "allowed", "allowed", rule,
                    {"per_request_max": str(rule.per_request_max)})
