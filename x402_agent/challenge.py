"""Parse an HTTP 402 answer into a challenge: the offers a server will accept as payment.

v2 carries the challenge in the PAYMENT-REQUIRED header, v1 in the JSON body. Decoding uses the
x402 SDK's codecs and pydantic models; this module adds the distrust: size limits, version
checks, strict integer amounts and addresses. Nothing here signs or spends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from eth_utils.address import is_hex_address, to_checksum_address
from pydantic import ValidationError
from x402.http import PAYMENT_REQUIRED_HEADER, safe_base64_decode
from x402.schemas import PaymentRequired, PaymentRequirements, SettleResponse
from x402.schemas.v1 import PaymentRequiredV1, PaymentRequirementsV1

from .errors import ChallengeError
from .money import parse_atomic
from .networks import caip2
from .reasons import Reason

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_OFFERS = 32
MAX_TIMEOUT_SECONDS = 86_400

Requirement = PaymentRequirements | PaymentRequirementsV1


@dataclass(frozen=True)
class Offer:
    """One way to pay, normalised: integer amount, CAIP-2 network, checksummed addresses."""

    index: int
    x402_version: int
    scheme: str
    network: str  # CAIP-2 when it is an EVM network we can name, else exactly as sent
    chain_id: int | None
    asset: str
    amount: int
    pay_to: str
    max_timeout_seconds: int
    extra: Mapping[str, Any]
    requirement: Requirement = field(repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "scheme": self.scheme,
            "network": self.network,
            "asset": self.asset,
            "amount": str(self.amount),
            "pay_to": self.pay_to,
        }


@dataclass(frozen=True)
class Challenge:
    x402_version: int
    offers: tuple[Offer, ...]
    resource_url: str | None
    error: str | None
    required: PaymentRequired | PaymentRequiredV1 = field(repr=False, compare=False)


def parse_challenge(headers: Mapping[str, str], body: bytes, request_url: str) -> Challenge:
    """Turn a 402 answer into a Challenge, or raise ChallengeError with a reason code."""
    header = headers.get(PAYMENT_REQUIRED_HEADER) or headers.get(PAYMENT_REQUIRED_HEADER.lower())
    required = _from_header(header) if header is not None else _from_body(body)
    accepts: list[Requirement] = list(required.accepts)
    offers = tuple(make_offer(i, required.x402_version, r) for i, r in enumerate(accepts))
    # Every resource the challenge names must be on the requested host (v1 names one per offer:
    # a second offer naming another resource must not switch the check off).
    for named in _resource_urls(required):
        if _host(named) != _host(request_url):
            raise ChallengeError(
                f"challenge is for {_host(named)!r}, not the requested host",
                reason=Reason.RESOURCE_MISMATCH,
                resource=named[:200],
            )
    resource_url = _resource_url(required)
    return Challenge(required.x402_version, offers, resource_url, required.error, required)


def _from_header(header: str) -> PaymentRequired | PaymentRequiredV1:
    if len(header) > MAX_HEADER_BYTES:
        raise ChallengeError(
            "PAYMENT-REQUIRED header is too large",
            reason=Reason.OVERSIZED_CHALLENGE,
            size=len(header),
            limit=MAX_HEADER_BYTES,
        )
    try:
        text = safe_base64_decode(header)
    except (ValueError, UnicodeError) as exc:
        raise ChallengeError(
            "PAYMENT-REQUIRED header is not base64 of UTF-8 text", reason=Reason.UNDECODABLE_CHALLENGE
        ) from exc
    return _validated(text, versions=(2,), where="PAYMENT-REQUIRED header")


def _from_body(body: bytes) -> PaymentRequired | PaymentRequiredV1:
    if len(body) > MAX_BODY_BYTES:
        raise ChallengeError(
            "402 body is too large to be a challenge",
            reason=Reason.OVERSIZED_CHALLENGE,
            size=len(body),
            limit=MAX_BODY_BYTES,
        )
    return _validated(body, versions=(1, 2), where="402 body")


def _validated(
    raw: str | bytes, versions: tuple[int, ...], where: str
) -> PaymentRequired | PaymentRequiredV1:
    """JSON object, an integer x402Version we accept here, then the SDK's model."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeError) as exc:
        raise ChallengeError(f"{where} is not a JSON challenge", reason=Reason.UNDECODABLE_CHALLENGE) from exc
    if not isinstance(data, dict):
        raise ChallengeError(f"{where} is not a JSON object", reason=Reason.UNDECODABLE_CHALLENGE)
    version = data.get("x402Version")
    # type() rather than isinstance: JSON true must not pass for version 1.
    if type(version) is not int or version not in versions:
        raise ChallengeError(
            f"{where} has unsupported x402Version {version!r}"[:120],
            reason=Reason.UNSUPPORTED_X402_VERSION,
            version=repr(version)[:20],
        )
    model = PaymentRequiredV1 if version == 1 else PaymentRequired
    try:
        required = model.model_validate(data)
    except ValidationError as exc:
        raise ChallengeError(
            f"{where} is not a valid x402 challenge",
            reason=Reason.UNDECODABLE_CHALLENGE,
            problems=exc.error_count(),
        ) from exc
    _check_accepts(required)
    return required


def _check_accepts(required: PaymentRequired | PaymentRequiredV1) -> None:
    if not required.accepts:
        raise ChallengeError("challenge offers no way to pay", reason=Reason.EMPTY_CHALLENGE)
    if len(required.accepts) > MAX_OFFERS:
        raise ChallengeError(
            "challenge lists too many payment options",
            reason=Reason.OVERSIZED_CHALLENGE,
            offers=len(required.accepts),
        )


def make_offer(index: int, version: int, req: Requirement) -> Offer:
    """One requirement as an Offer, or ChallengeError: the checks every offer passes (a
    challenge's, a discovery listing's)."""
    raw_amount = req.amount if isinstance(req, PaymentRequirements) else req.max_amount_required
    try:
        amount = parse_atomic(raw_amount)
    except OverflowError as exc:
        raise ChallengeError(
            "amount does not fit uint256", reason=Reason.AMOUNT_OVERFLOW, offer=index
        ) from exc
    except ValueError as exc:
        raise ChallengeError(
            f"amount {str(raw_amount)[:40]!r} is not a non-negative integer",
            reason=Reason.INVALID_AMOUNT,
            offer=index,
        ) from exc
    if amount == 0:
        raise ChallengeError("amount is zero", reason=Reason.INVALID_AMOUNT, offer=index)
    if not 0 < req.max_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise ChallengeError("maxTimeoutSeconds out of range", reason=Reason.INVALID_TIMEOUT, offer=index)
    network = caip2(req.network)
    asset, pay_to = req.asset, req.pay_to
    if network is not None:  # an EVM network: addresses must be EVM addresses
        for name, value in (("asset", asset), ("payTo", pay_to)):
            if not is_hex_address(value) or int(value, 16) == 0:
                raise ChallengeError(
                    f"{name} is not a usable EVM address",
                    reason=Reason.INVALID_ADDRESS,
                    offer=index,
                    field=name,
                )
        asset, pay_to = _checksummed(asset), _checksummed(pay_to)
    return Offer(
        index=index,
        x402_version=version,
        scheme=req.scheme,
        network=network or req.network,
        chain_id=None if network is None else int(network.split(":")[1]),
        asset=asset,
        amount=amount,
        pay_to=pay_to,
        max_timeout_seconds=req.max_timeout_seconds,
        extra=dict(req.extra or {}),
        requirement=req,
    )


def _resource_urls(required: PaymentRequired | PaymentRequiredV1) -> list[str]:
    if isinstance(required, PaymentRequired):
        return [required.resource.url] if required.resource else []
    return [r.resource for r in required.accepts if r.resource]


@lru_cache(maxsize=1024)
def _checksummed(address: str) -> str:
    return str(to_checksum_address(address))  # ~50 us each: worth caching per payee/asset


def _resource_url(required: PaymentRequired | PaymentRequiredV1) -> str | None:
    if isinstance(required, PaymentRequired):
        return required.resource.url if required.resource else None
    resources = {r.resource for r in required.accepts if r.resource}
    return resources.pop() if len(resources) == 1 else None


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def refusal_reason(
    headers: Mapping[str, str], body: bytes, settlement: SettleResponse | None = None
) -> str | None:
    """Why a server answered a paid request with 402, as it states it: a failed settlement's
    ``errorReason``, else the challenge's ``error`` (v2 PAYMENT-REQUIRED header, v1 JSON body).
    Server text reaches the user and the model: printable ASCII only, and short."""
    stated = settlement.error_reason if settlement is not None and not settlement.success else None
    if not stated:
        header = headers.get(PAYMENT_REQUIRED_HEADER) or headers.get(PAYMENT_REQUIRED_HEADER.lower())
        try:
            required = _from_header(header) if header is not None else _from_body(body)
        except ChallengeError:
            return None
        stated = required.error
    cleaned = "".join(c for c in stated or "" if " " <= c <= "~").strip()
    return cleaned[:200] or None
