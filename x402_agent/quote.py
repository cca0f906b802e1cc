"""What a URL would cost and whether the policy would pay it, without paying anything."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from .challenge import parse_challenge
from .errors import X402AgentError
from .flow import (
    FetchRequest,
    Payer,
    Step,
    _context,
    _send_following_redirects,
    check_host,
    validate_request,
)
from .money import format_units
from .netguard import check_literal
from .reasons import Reason
from .selection import assess, choose


@dataclass(frozen=True)
class Quote:
    url: str
    status: int
    payment_required: bool
    allowed: bool
    reason: Reason
    chosen: dict[str, Any] | None = None
    options: list[dict[str, Any]] = field(default_factory=list)
    policy_version: int | None = None
    policy_digest: str | None = None


def quote_flow(payer: Payer, req: FetchRequest) -> Generator[Step, Any, Quote]:
    check_literal(req.url, payer.gate.policy.private_allow)  # as fetch_flow: first
    validate_request(req)
    check_host(payer, req.url)
    policy = payer.gate.policy
    url, response = yield from _send_following_redirects(payer, req)
    if response.status_code != 402:
        return Quote(
            url,
            response.status_code,
            False,
            True,
            Reason.FREE,
            policy_version=policy.version,
            policy_digest=policy.digest,
        )
    challenge = parse_challenge(response.headers, response.content, url)
    context = _context(req, url)
    options = []
    for offer in challenge.offers:
        decision = assess(offer, payer.gate, context, req.max_price, signer=payer.signer)
        option = {**offer.describe(), "allowed": decision.allowed, "reason": decision.reason}
        if decision.asset is not None:
            option["symbol"] = decision.asset.symbol
            option["price"] = format_units(offer.amount, decision.asset.decimals)
        options.append(option)
    try:
        choice = choose(challenge, payer.gate, context, req.max_price, signer=payer.signer)
    except X402AgentError as exc:
        return Quote(url, 402, True, False, exc.reason, None, options, policy.version, policy.digest)
    chosen = next(o for o in options if o["index"] == choice.offer.index)
    return Quote(url, 402, True, True, Reason.ALLOWED, chosen, options, policy.version, policy.digest)
