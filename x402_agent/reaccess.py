"""Re-access instead of repayment: sign in (sign-in-with-x) where a payment bought access.

A server offering the sign-in-with-x extension remembers who paid for a resource and lets that
address in on a signed EIP-4361 message instead of a new payment. After a paid fetch from such
a server the ledger keeps the entitlement (``ledger.entitlements``); before paying that
resource again, while the entitlement lives (the policy's ``reaccess`` bounds how long), the
paying key signs in. Accepted: a zero-cost access, recorded as a sign-in. Refused (402): the
entitlement ends and the flow pays as usual.

What is signed is checked first, because a hostile server could ask for a sign-in to another
site: the message must name the fetched URL's own host and resource (every listed resource on
that origin), the chain the entitlement was paid on, the statement the server gave when paid,
and times around now. Anything else: nothing is signed, and the flow pays as usual (under the
policy). The SDK's client helpers build and sign the message (``create_siwx_payload``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .challenge import Challenge
from .ledger import Ledger, PaymentRecord, PaymentState
from .ledger.entitlements import Entitlement, NewEntitlement, SignInRecord
from .policy import Policy
from .signer import PaymentSigner, SignInSigner, provides

log = logging.getLogger(__name__)
SIGN_IN_WITH_X = "sign-in-with-x"  # the extension's key and its request header (the SDK's name)
# How far the server's issuedAt may be from our clock, and how long its message may stay valid:
# a message good for longer is more useful to whoever else ends up holding it.
MAX_CLOCK_SKEW_SECONDS = 300
MAX_MESSAGE_SECONDS = 3600
_MAX_FIELD = 1024
_MAX_RESOURCES = 8
_NONCE = re.compile(r"^[A-Za-z0-9]{8,128}$")
_TEXT_FIELDS = ("domain", "uri", "version", "nonce", "issuedAt")
_OPTIONAL_TEXT = ("statement", "expirationTime", "notBefore", "requestId")


class SignInRefused(ValueError):
    """The server's sign-in challenge is not one to sign: ``reason`` says which check failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Attempt:
    """A sign-in about to be sent: the entitlement it uses and the header that carries it."""

    entitlement: Entitlement
    headers: Mapping[str, str]


def resource_of(url: str) -> str:
    """The resource an entitlement is for: the URL without its fragment."""
    return urlsplit(url)._replace(fragment="").geturl()


def declared(challenge: Challenge) -> Any:
    """The sign-in-with-x declaration of a v2 challenge (None: not offered)."""
    extensions = getattr(challenge.required, "extensions", None) if challenge.x402_version >= 2 else None
    return extensions.get(SIGN_IN_WITH_X) if isinstance(extensions, dict) else None


def _text(info: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = info.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD or "\n" in value:
        raise SignInRefused("malformed", f"sign-in field {name} is missing or not one line of text")
    return value


def _time(value: str, name: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise SignInRefused("malformed", f"sign-in field {name} is not a time") from exc


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _check_info(info: Mapping[str, Any], url: str, entitlement: Entitlement, now: float) -> None:
    """Refuse a message that names anything but this fetch's own resource and entitlement."""
    fields = {name: _text(info, name, True) for name in _TEXT_FIELDS}
    fields |= {name: _text(info, name, False) for name in _OPTIONAL_TEXT}
    wanted = urlsplit(url)
    if fields["domain"] != wanted.netloc or fields["domain"] != entitlement.domain:
        raise SignInRefused("domain", f"the sign-in names domain {fields['domain']!r}, not {wanted.netloc!r}")
    uri = urlsplit(fields["uri"] or "")
    if (uri.scheme, uri.netloc, uri.path, uri.query) != (
        wanted.scheme,
        wanted.netloc,
        wanted.path,
        wanted.query,
    ):
        raise SignInRefused("uri", "the sign-in names another resource than the one fetched")
    resources = info.get("resources") or []
    if not isinstance(resources, list) or len(resources) > _MAX_RESOURCES:
        raise SignInRefused("malformed", "the sign-in's resources are not a short list")
    for resource in resources:
        if not isinstance(resource, str) or len(resource) > _MAX_FIELD or _origin(resource) != _origin(url):
            raise SignInRefused("resources", "the sign-in lists a resource on another origin")
    if fields["statement"] != entitlement.statement:
        raise SignInRefused("statement", "the sign-in's statement is not the one given when paid")
    if fields["version"] != "1" or not _NONCE.match(fields["nonce"] or ""):
        raise SignInRefused("malformed", "the sign-in's version or nonce is not EIP-4361's")
    issued = _time(fields["issuedAt"] or "", "issuedAt")
    if abs(issued - now) > MAX_CLOCK_SKEW_SECONDS:
        raise SignInRefused("time", "the sign-in's issuedAt is far from now")
    if fields["expirationTime"] is not None:
        expires = _time(fields["expirationTime"], "expirationTime")
        if not now < expires <= now + MAX_MESSAGE_SECONDS:
            raise SignInRefused("time", "the sign-in has expired or stays valid too long")
    if (
        fields["notBefore"] is not None
        and _time(fields["notBefore"], "notBefore") > now + MAX_CLOCK_SKEW_SECONDS
    ):
        raise SignInRefused("time", "the sign-in becomes valid only later")


def _chain(declaration: Mapping[str, Any], network: str) -> str:
    """The entitlement's own chain, if the server accepts EIP-191 sign-ins on it."""
    for chain in declaration.get("supportedChains") or []:
        if isinstance(chain, dict) and chain.get("chainId") == network and chain.get("type") == "eip191":
            return network
    raise SignInRefused("chain", f"the server does not offer sign-in on {network}, where it was paid")


def sign_in_info(declaration: Any, url: str, entitlement: Entitlement, now: float) -> dict[str, Any]:
    """The server's challenge completed with the chain to sign on, once every check passed."""
    if not isinstance(declaration, dict) or not isinstance(declaration.get("info"), dict):
        raise SignInRefused("malformed", "the sign-in declaration has no info")
    info: dict[str, Any] = declaration["info"]
    _check_info(info, url, entitlement, now)
    return {**info, "chainId": _chain(declaration, entitlement.network), "type": "eip191"}


@dataclass(frozen=True)
class _Signed:
    signature: bytes


class _SdkSigner:
    """Our signer as the SDK's sign-in helper calls an account: ``address`` and
    ``sign_message(SignableMessage)`` answering an object with ``signature`` bytes."""

    def __init__(self, signer: SignInSigner, address: str) -> None:
        self.address = address
        self._signer = signer

    def sign_message(self, signable: Any) -> _Signed:
        text = bytes(signable.body).decode()
        return _Signed(bytes.fromhex(self._signer.sign_in_message(text).removeprefix("0x")))


def _completed(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an SDK coroutine that awaits nothing (signing here is synchronous), without an event
    loop: the flow runs in the sync driver and in the async driver's worker threads alike."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the SDK's sign-in helper waited on I/O")


def sign_in_header(info: dict[str, Any], url: str, signer: SignInSigner, address: str) -> str:
    from x402.extensions.sign_in_with_x import create_siwx_payload, encode_siwx_header

    payload = _completed(create_siwx_payload(info, _SdkSigner(signer, address), url))
    if payload.address != address or payload.domain != info["domain"]:
        raise SignInRefused("malformed", "the SDK built a sign-in for another address or domain")
    return str(encode_siwx_header(payload))


def prepare(
    policy: Policy, ledger: Ledger, signer: PaymentSigner, url: str, challenge: Challenge, now: float
) -> Attempt | None:
    """The sign-in to send instead of paying, or None: pay as usual (re-access off, nothing
    offered or bought, or a challenge not to sign)."""
    declaration = declared(challenge)
    if declaration is None or not policy.reaccess_rule.sign_in or not provides(signer, SignInSigner):
        return None
    entitlement = ledger.entitlements.live(resource_of(url), signer.address, now)
    if entitlement is None:
        return None
    try:
        info = sign_in_info(declaration, url, entitlement, now)
        header = sign_in_header(info, url, signer, signer.address)
    except SignInRefused as refused:
        # Nothing signed: the payment that follows is the policy's to allow.
        log.warning(
            "not signing in to %s (%s: %s); paying as usual", urlsplit(url).netloc, refused.reason, refused
        )
        return None
    return Attempt(entitlement, {SIGN_IN_WITH_X: header})


def conclude(
    ledger: Ledger,
    attempt: Attempt,
    *,
    method: str,
    url: str,
    session: str | None,
    status: int,
    content_type: str | None,
    body_sha256: str,
    now: float,
) -> SignInRecord | None:
    """Record what the sign-in brought: a delivered access (its record), or a refusal (402:
    the entitlement ends, None). Other answers are the server's and are returned as they are."""
    if status == 402:
        ledger.entitlements.end(attempt.entitlement, "server_refused", now)
        return None
    if not 200 <= status < 300:
        return None
    return ledger.entitlements.record_sign_in(
        attempt.entitlement,
        method=method,
        url=url,
        session=session,
        now=now,
        response_status=status,
        response_content_type=content_type,
        response_body_sha256=body_sha256,
    )


def remember(
    policy: Policy,
    ledger: Ledger,
    signer: PaymentSigner,
    url: str,
    challenge: Challenge,
    payment: PaymentRecord,
    now: float,
) -> Entitlement | None:
    """After a settled payment to a server offering sign-in on the paid chain for this very
    URL's host: keep the entitlement (until the policy's bound)."""
    declaration = declared(challenge)
    rule = policy.reaccess_rule
    if (
        declaration is None
        or not rule.sign_in
        or not provides(signer, SignInSigner)
        or payment.state is not PaymentState.SETTLED
        or (payment.payer or "").lower() != signer.address.lower()
        or not isinstance(declaration, dict)
        or not isinstance(declaration.get("info"), dict)
    ):
        return None
    info = declaration["info"]
    statement = info.get("statement")
    new = NewEntitlement(
        url=resource_of(url),
        domain=urlsplit(url).netloc,
        network=payment.network,
        payer=signer.address,
        statement=statement if isinstance(statement, str) else None,
        payment_id=payment.id,
    )
    try:
        _chain(declaration, payment.network)
    except SignInRefused:
        return None
    if info.get("domain") != new.domain:
        return None  # a server naming another domain can never be signed in to
    return ledger.entitlements.add(new, now, now + rule.max_entitlement_seconds)
