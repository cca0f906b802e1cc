"""Choose which of a challenge's offers to pay: the cheapest one everything allows.

Caps and limits apply to the offer actually chosen, never to the first or the advertised one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from .challenge import Challenge, Offer
from .decision import Decision, PaymentContext
from .errors import InvalidRequest, NoAcceptableRequirement, PolicyDenied
from .money import format_units
from .policy import AssetRule
from .reasons import Reason
from .schemes import Scheme, resolve
from .spendgate import SpendGate

# Codes that mean "we cannot pay this offer at all", as opposed to "the policy said no".
_UNPAYABLE = {
    Reason.UNSUPPORTED_SCHEME,
    Reason.UNKNOWN_NETWORK,
    Reason.ASSET_DOMAIN_MISMATCH,
    Reason.UNKNOWN_ASSET,
    Reason.PERMIT2_UNSUPPORTED_SIGNER,
}

# A ceiling above a trillion units of anything is a typo, not a limit.
_MAX_PRICE = 10**12
_MAX_PRICE_CHARS = 64
_PRICE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)(?:\s+([A-Za-z][A-Za-z0-9.]{0,15}))?\s*")


@dataclass(frozen=True)
class PriceLimit:
    """A caller's ceiling for one request: ``"0.05"`` (any asset) or ``"0.05 USDC"``."""

    amount: str
    symbol: str | None = None

    @classmethod
    def parse(cls, text: str) -> PriceLimit:
        match = _PRICE.fullmatch(text) if len(text) <= _MAX_PRICE_CHARS else None
        if not match:
            raise InvalidRequest(
                f"max price must look like '0.05' or '0.05 USDC', got {text[:_MAX_PRICE_CHARS]!r}",
                reason=Reason.INVALID_MAX_PRICE,
            )
        if not 0 < Fraction(match.group(1)) <= _MAX_PRICE:
            raise InvalidRequest(
                f"max price must be positive and at most {_MAX_PRICE}, got {match.group(1)!r}",
                reason=Reason.INVALID_MAX_PRICE,
            )
        return cls(match.group(1), match.group(2))

    def atomic_for(self, rule: AssetRule) -> int | None:
        """The limit in this asset's atomic units, or None if it names another asset."""
        if self.symbol is not None and self.symbol.upper() != rule.symbol.upper():
            return None
        # A ceiling finer than the token's precision rounds down: it can only refuse more.
        scale: int = 10**rule.decimals
        ceiling = Fraction(self.amount) * scale
        return ceiling.numerator // ceiling.denominator


@dataclass(frozen=True)
class Choice:
    offer: Offer
    asset: AssetRule
    decision: Decision
    scheme: Scheme  # the module that pays it
    maximum: int  # what paying it can cost at most: what is reserved and approved


def assess(
    offer: Offer,
    gate: SpendGate,
    context: PaymentContext,
    limit: PriceLimit | None,
    *,
    with_usage: bool = True,
    signer: object | None = None,
) -> Decision:
    """Why this one offer can or cannot be paid (``with_usage=False``: ignoring what the ledger
    already counts, which the reservation checks anyway; ``signer``: by this payer, which may
    lack what the offer's scheme signs)."""
    return _assess(offer, gate, context, limit, with_usage, signer)[0]


def _assess(
    offer: Offer,
    gate: SpendGate,
    context: PaymentContext,
    limit: PriceLimit | None,
    with_usage: bool,
    signer: object | None,
) -> tuple[Decision, Scheme | None]:
    scheme = resolve(offer)
    if isinstance(scheme, Decision):
        return scheme, None
    decision = gate.evaluate(offer, context, with_usage=with_usage)
    rule = decision.asset
    if rule is None:
        return decision, scheme
    if offer.scheme not in rule.allowed_schemes:
        return Decision(
            False,
            Reason.SCHEME_NOT_ALLOWED,
            f"the policy lets {rule.symbol} be paid with {list(rule.allowed_schemes)}, not {offer.scheme!r} "
            "(the asset's schemes field; unset means exact only)",
            rule,
        ), scheme
    refused = scheme.check_offer(offer, rule)
    if refused is not None:
        return refused, scheme
    if limit is not None:
        ceiling = limit.atomic_for(rule)
        if ceiling is None:
            return Decision(
                False,
                Reason.MAX_PRICE_ASSET_MISMATCH,
                f"the max price is in {limit.symbol}, but this offer is paid in {rule.symbol}",
                rule,
            ), scheme
        if scheme.maximum(offer) > ceiling:
            return Decision(
                False,
                Reason.PRICE_ABOVE_MAX,
                f"price {format_units(scheme.maximum(offer), rule.decimals)} {rule.symbol} "
                f"is above the max price {limit.amount}",
                rule,
            ), scheme
    # Last: an offer everything else allows but this payer cannot sign is not payable, and
    # rank falls back from it before anything is reserved or topped up (a refusal by the
    # policy is the more useful answer, so it is given first).
    unsignable = None if signer is None or not decision.allowed else scheme.refusal_for(signer)
    return (decision if unsignable is None else unsignable), scheme


def choose(
    challenge: Challenge,
    gate: SpendGate,
    context: PaymentContext,
    limit: PriceLimit | None,
    *,
    signer: object | None = None,
) -> Choice:
    """The cheapest offer allowed now, counting what the ledger holds (quotes use this)."""
    return rank(challenge, gate, context, limit, signer=signer)[0]


def rank(
    challenge: Challenge,
    gate: SpendGate,
    context: PaymentContext,
    limit: PriceLimit | None,
    *,
    with_usage: bool = True,
    signer: object | None = None,
) -> list[Choice]:
    """Acceptable offers, cheapest first; raise with every offer's reason if there is none.
    ``signer``: the payer; offers it cannot sign are refused like unsupported ones."""
    assessed = [
        (offer, *_assess(offer, gate, context, limit, with_usage, signer)) for offer in challenge.offers
    ]
    verdicts = [(offer, decision) for offer, decision, _ in assessed]
    payable = [
        Choice(o, d.asset, d, s, s.maximum(o))
        for o, d, s in assessed
        if d.allowed and d.asset is not None and s is not None
    ]
    if payable:
        # Compare in display units so 6- and 18-decimal tokens rank sensibly; ties: server order.
        return sorted(payable, key=lambda c: (Fraction(c.offer.amount, 10**c.asset.decimals), c.offer.index))
    rejected = [{**o.describe(), "reason": d.reason, "message": d.message} for o, d in verdicts]
    by_policy = [d for _, d in verdicts if d.reason not in _UNPAYABLE]
    if by_policy:
        # The offers we could pay were refused by the policy (or the caller's max price): say
        # why for the first of them, with the budgets that remain.
        first = by_policy[0]
        message = (
            first.message if len(verdicts) == 1 else (f"{first.message} ({len(verdicts)} offers refused)")
        )
        raise PolicyDenied(message, reason=first.reason, rejected=rejected, remaining=first.remaining)
    reasons = {d.reason for _, d in verdicts}
    reason = reasons.pop() if len(reasons) == 1 else Reason.NO_ACCEPTABLE_REQUIREMENT
    raise NoAcceptableRequirement(
        f"none of the {len(verdicts)} offers can be paid", reason=reason, rejected=rejected
    )
