"""The spend gate: the only door through which a payment gets permission to be signed.

``evaluate`` answers "would this be allowed now?" without side effects (quotes, choosing an
offer). ``reserve`` decides again inside the ledger transaction that records the reservation,
with the policy as it is at that moment, so a concurrent payment, a crash or a policy change in
between cannot lead to a payment the policy does not cover.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .challenge import Offer
from .decision import Decision, PaymentContext, Usage, decide
from .errors import PolicyDenied
from .ledger import Ledger, NewPayment, PaymentRecord, UsageQuery
from .policy import Policy
from .reasons import Reason
from .schemes import transfer_method


class SpendGate(Protocol):
    @property
    def policy(self) -> Policy: ...
    @property
    def ledger(self) -> Ledger: ...
    def evaluate(self, offer: Offer, context: PaymentContext, *, with_usage: bool = True) -> Decision: ...
    def reserve(self, offer: Offer, context: PaymentContext, *, approved: bool = False) -> PaymentRecord: ...
    def pinned(self) -> SpendGate: ...


def refusal(decision: Decision, offer: Offer) -> PolicyDenied:
    return PolicyDenied(
        decision.message, reason=decision.reason, offer=offer.describe(), remaining=decision.remaining
    )


class PolicyGate:
    """Enforces a policy over a ledger; the policy source is read at every decision."""

    def __init__(
        self,
        policy: Policy | Callable[[], Policy],
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        confirm: Callable[[Policy], None] | None = None,
    ) -> None:
        # A callable lets a running agent pick up a newly accepted policy at the next payment.
        self._policy_source = policy if callable(policy) else (lambda: policy)
        # Raises if the policy may no longer pay (a smart account anchoring another one on chain):
        # run once per reservation, not at every read of the policy.
        self._confirm = confirm
        self._ledger = ledger
        self._clock = clock
        self._digest: tuple[Policy, str] | None = None  # the last policy and its digest

    @property
    def policy(self) -> Policy:
        return self._policy_source()

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def _digest_of(self, policy: Policy) -> str:
        """The same policy object comes back until its file changes: hash it once."""
        if self._digest is None or self._digest[0] is not policy:
            self._digest = (policy, policy.digest)
        return self._digest[1]

    @staticmethod
    def _query(policy: Policy, offer: Offer, context: PaymentContext, now: float) -> UsageQuery:
        return UsageQuery(
            network=offer.network,
            asset=offer.asset,
            day_start=policy.day.start(now),
            now=now,
            session=context.session,
        )

    def pinned(self) -> SpendGate:
        return PinnedGate(self)

    def evaluate(
        self, offer: Offer, context: PaymentContext, *, with_usage: bool = True, policy: Policy | None = None
    ) -> Decision:
        policy, now = self.policy if policy is None else policy, self._clock()
        if not with_usage or policy.find_asset(offer.network, offer.asset) is None:
            return decide(policy, offer, context, Usage(), now)
        usage = self._ledger.usage(self._query(policy, offer, context, now))
        return decide(policy, offer, context, usage, now)

    def reserve(self, offer: Offer, context: PaymentContext, *, approved: bool = False) -> PaymentRecord:
        policy, now = self.policy, self._clock()
        if self._confirm is not None:
            self._confirm(policy)
        rule = policy.find_asset(offer.network, offer.asset)
        if rule is None:
            raise refusal(decide(policy, offer, context, Usage(), now), offer)

        def check(usage: Usage) -> None:
            decision = decide(policy, offer, context, usage, now)
            if not decision.allowed:
                raise refusal(decision, offer)
            if decision.needs_approval and not approved:
                raise PolicyDenied(
                    "this payment needs a human approval, which was not given",
                    reason=Reason.APPROVAL_REQUIRED,
                    offer=offer.describe(),
                    remaining=decision.remaining,
                )

        return self._ledger.reserve(
            NewPayment(
                idempotency_key=context.idempotency_key,
                request_fingerprint=context.request_fingerprint,
                method=context.method,
                url=context.url,
                request_body_sha256=context.request_body_sha256,
                x402_version=offer.x402_version,
                network=offer.network,
                asset=offer.asset,
                symbol=rule.symbol,
                decimals=rule.decimals,
                amount=offer.amount,
                pay_to=offer.pay_to,
                requirement_json=offer.requirement.model_dump_json(by_alias=True, exclude_none=True),
                policy_version=policy.version,
                policy_digest=self._digest_of(policy),
                session=context.session,
                scheme=offer.scheme,
                credential=str(transfer_method(offer)),
            ),
            self._query(policy, offer, context, now),
            check,
        )


class PinnedGate:
    """One fetch's view of a gate: the policy read once, when the fetch starts. Its checks
    before the reservation (hosts, offers, the signing window, the body cap, re-access) all see
    that one policy, and reading it costs nothing (the gate re-verifies the policy files at every
    read: about ten per payment). The reservation itself still decides under the policy in force
    at that moment, so a policy approved meanwhile (a tightening included) applies to it."""

    def __init__(self, gate: PolicyGate) -> None:
        self._gate = gate
        self.policy = gate.policy

    @property
    def ledger(self) -> Ledger:
        return self._gate.ledger

    def pinned(self) -> SpendGate:
        return self

    def evaluate(self, offer: Offer, context: PaymentContext, *, with_usage: bool = True) -> Decision:
        return self._gate.evaluate(offer, context, with_usage=with_usage, policy=self.policy)

    def reserve(self, offer: Offer, context: PaymentContext, *, approved: bool = False) -> PaymentRecord:
        return self._gate.reserve(offer, context, approved=approved)
