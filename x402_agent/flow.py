"""The pay-and-fetch flow, written once as a generator and driven by sync or async HTTP.

The generator yields ``HttpCall`` and ``RpcCall`` steps and receives their answers, so the steps
read top to bottom: request, parse the challenge, choose an offer, reserve, sign, record, retry
with payment, verify the settlement, commit. It never does I/O itself (besides the ledger, which
must record a reservation before anything is signed).

What is signed, sent and checked on chain belongs to the chosen offer's scheme module, found
through the registry (``schemes``): no scheme is named here.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx
from x402.http import (
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    decode_payment_signature_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse
from x402.schemas.v1 import PaymentPayloadV1

from . import reaccess
from .challenge import Challenge, Offer, parse_challenge, refusal_reason
from .content_store import (
    DEFAULT_MAX_PAID_BODY_BYTES,
    INLINE_BYTES,
    BodySink,
    ContentStore,
    StoredBody,
)
from .deadline import DEFAULT_TIMEOUT_SECONDS, check_timeout
from .decision import PaymentContext, host_refusal
from .errors import (
    ChainError,
    DeadlineExceeded,
    IdempotencyConflict,
    PaidNotDelivered,
    PaymentIdentifierConflict,
    PaymentInFlight,
    PaymentMismatch,
    PaymentNotSettled,
    PaymentRejected,
    PolicyDenied,
    RedirectRefused,
    SettlementMismatch,
    UpstreamError,
)
from .ledger import Ownership, PaymentRecord, PaymentState, Verification
from .ledger.entitlements import SignInRecord
from .money import format_units
from .netguard import check_literal
from .payment_identifier import CONFLICT_STATUS, carried_identifier, payment_extensions
from .reasons import Reason
from .request_limits import check_request, parsed_url, redirect_target
from .schemes import Authorized, Scheme, for_record
from .selection import Choice, PriceLimit, rank
from .settlement import check_moved, read_settlement_header
from .signer import OnChainGuard, PaymentSigner, provides
from .spendgate import SpendGate
from .steps import RpcCall as RpcCall  # steps like the others, for the drivers
from .steps import WalletCall as WalletCall

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An authorization this close to expiry is not worth resending: it may expire in flight.
_RESUME_MARGIN_SECONDS = 10
# A reservation that names no owner (written by a release before owners were recorded) and is
# older than this belongs to a crashed attempt: nothing signed ever left it (the ledger records
# the signed payment before sending it). Rows with an owner need no such guess (ledger.owners).
STALE_RESERVATION_SECONDS = 60


@dataclass(frozen=True)
class HttpCall:
    request: httpx.Request
    # The request carries a payment (or follows one): money may move from here on.
    paid: bool = False
    # Where the driver streams the body instead of memory (a paid body is never discarded).
    sink: BodySink | None = None
    # A lower cap than the driver's on this answer's body (a discovery listing).
    max_bytes: int | None = None


@dataclass(frozen=True)
class HttpAnswer:
    """A fully read HTTP response (bodies are size-limited by the driver)."""

    status_code: int
    headers: httpx.Headers
    content: bytes  # with ``stored``: the first INLINE_BYTES of it
    stored: StoredBody | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    """What a human is asked to approve: one payment above the policy's approval threshold."""

    method: str
    url: str
    amount: int
    symbol: str
    decimals: int
    network: str
    pay_to: str
    policy_version: int

    @property
    def price(self) -> str:
        return f"{format_units(self.amount, self.decimals)} {self.symbol}"

    def prompt(self) -> str:
        return f"Approve paying {self.price} on {self.network} to {self.pay_to} for {self.method} {self.url}?"


@dataclass(frozen=True)
class ApprovalCall:
    """Ask the driver's approver; the answer is True (approved), False (rejected) or None
    (nobody can be asked)."""

    request: ApprovalRequest


Step = HttpCall | RpcCall | ApprovalCall | WalletCall


@dataclass(frozen=True)
class FetchRequest:
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    max_price: PriceLimit | None = None
    idempotency_key: str | None = None
    session: str | None = None
    session_profile: str | None = None
    # The whole fetch's HTTP exchanges (connect, send, first byte, whole body) end by then.
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class FetchOutcome:
    status: int
    content: bytes | None
    content_type: str | None
    payment: PaymentRecord | None = None
    replayed: bool = False  # an idempotent repeat answered from the ledger, nothing re-sent
    confirmed_on_chain: bool = False
    # A paid body kept in the agent home; ``content`` then holds its first part only.
    stored: StoredBody | None = None
    # A redirect after payment to another origin, reported and not followed.
    location: str | None = None
    # An access by sign-in (sign-in-with-x) instead of a payment: it cost nothing.
    sign_in: SignInRecord | None = None

    @property
    def complete(self) -> bool:
        """True when ``content`` is the whole body."""
        return self.stored is None or len(self.content or b"") >= self.stored.size

    def open_body(self) -> BinaryIO:
        """The whole body as a binary file (stored paid bodies are read from the home)."""
        return self.stored.open() if self.stored is not None else io.BytesIO(self.content or b"")

    def read_body(self) -> bytes:
        """The whole body (a stored paid body may be large: prefer ``open_body``)."""
        with self.open_body() as body:
            return body.read()


@dataclass
class Payer:
    """Everything a payment needs: the gate (policy + ledger), the signer, chain access."""

    gate: SpendGate
    signer: PaymentSigner
    rpc_urls: Mapping[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    max_redirects: int = 5
    # Check each settlement's transaction receipt (needs an RPC); without it the server's
    # settlement header is trusted and the RPC serves only reconciliation.
    verify_on_chain: bool = True
    # Where the receipt check goes when it runs off the critical path (the Agent's verifier):
    # the payment is committed settled with verification pending and handed over. Without
    # one, the receipt is checked before committing.
    defer_verification: Callable[[PaymentRecord], None] | None = None
    # Where paid bodies are kept (the agent home's); without one they are read into memory.
    content_store: ContentStore | None = None


def sha256_hex(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def validate_request(req: FetchRequest) -> None:
    """Refuse what must never reach the network (limits and reserved headers: request_limits)."""
    check_request(req.url, req.method, req.headers, req.body, req.idempotency_key, req.session)
    check_timeout(req.timeout_seconds)


def _context(req: FetchRequest, url: str) -> PaymentContext:
    body_hash = sha256_hex(req.body)
    fingerprint = sha256_hex(f"{req.method.upper()} {req.url} {body_hash}".encode())
    return PaymentContext(
        method=req.method.upper(),
        url=url,
        host=(urlsplit(url).hostname or "").lower(),
        request_body_sha256=body_hash,
        request_fingerprint=fingerprint,
        idempotency_key=req.idempotency_key,
        session=req.session,
        session_profile=req.session_profile,
    )


def _build_request(req: FetchRequest, url: str, extra: Mapping[str, str] | None = None) -> httpx.Request:
    headers = {**req.headers, **(extra or {})}
    return httpx.Request(req.method.upper(), parsed_url(url), headers=headers, content=req.body)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def check_host(payer: Payer, url: str) -> None:
    refusal = host_refusal(payer.gate.policy, (urlsplit(url).hostname or "").lower())
    if refusal is not None:
        raise PolicyDenied(refusal[1], reason=refusal[0])


def fetch_flow(payer: Payer, req: FetchRequest) -> Generator[Step, Any, FetchOutcome]:
    """Fetch ``req``; pay for it if the server answers 402 and everything allows it."""
    payer = replace(payer, gate=payer.gate.pinned())
    # A host written as a private address is refused first, as such; names are checked on their
    # resolved addresses by the driver (netguard), at every hop.
    check_literal(req.url, payer.gate.policy.private_allow)
    validate_request(req)
    check_host(payer, req.url)
    context = _context(req, req.url)
    prior = None
    if req.idempotency_key:
        prior = payer.gate.ledger.find_by_idempotency_key(req.idempotency_key)
        if prior is not None and prior.request_fingerprint != context.request_fingerprint:
            raise IdempotencyConflict("idempotency key was used for a different request", payment_id=prior.id)
        if prior is not None:
            resumed = yield from _resume(payer, req, prior)
            if resumed is not None:
                return resumed

    url, response = yield from _send_following_redirects(payer, req)
    if response.status_code != 402:
        return FetchOutcome(response.status_code, response.content, response.headers.get("content-type"))

    challenge = parse_challenge(response.headers, response.content, url)
    signed_in = yield from _sign_in(payer, req, url, challenge)
    if signed_in is not None:
        return signed_in
    context = _context(req, url)
    choice, record = yield from _reserve_cheapest(payer, req, url, challenge, context)
    try:
        if provides(payer.signer, OnChainGuard):
            yield WalletCall(
                "top-up", partial(payer.signer.ensure_funds, _in_flight(payer, choice.offer.asset))
            )
        authorized = yield from _authorize(payer, choice, record)
        header_name, header_value = _payment_header(challenge, choice, authorized, record.id)
        record = payer.gate.ledger.mark_sent(
            record.id,
            payer=authorized.payer,
            nonce=authorized.authorization_id,
            valid_after=authorized.valid_after,
            valid_before=authorized.valid_before,
            payment_header=header_value,
        )
    except BaseException:
        payer.gate.ledger.release(record.id, reason="not_sent")
        raise
    outcome = yield from _deliver(
        payer, req, url, record, choice.scheme, authorized, header_name, header_value
    )
    if outcome.payment is not None:
        reaccess.remember(
            payer.gate.policy, payer.gate.ledger, payer.signer, url, challenge, outcome.payment, payer.clock()
        )
    return outcome


def _sign_in(
    payer: Payer, req: FetchRequest, url: str, challenge: Challenge
) -> Generator[Step, Any, FetchOutcome | None]:
    """Where a payment bought access, sign in instead of paying again (reaccess): no money
    moves. None: pay as usual (nothing to sign in with, or the server refused it with a 402)."""
    attempt = reaccess.prepare(
        payer.gate.policy, payer.gate.ledger, payer.signer, url, challenge, payer.clock()
    )
    if attempt is None:
        return None
    response: HttpAnswer = yield HttpCall(_build_request(req, url, attempt.headers), sink=_sink(payer))
    record = reaccess.conclude(
        payer.gate.ledger,
        attempt,
        method=req.method.upper(),
        url=url,
        session=req.session,
        status=response.status_code,
        content_type=response.headers.get("content-type"),
        body_sha256=response.stored.sha256 if response.stored else sha256_hex(response.content),
        now=payer.clock(),
    )
    if response.status_code == 402:
        return None
    return FetchOutcome(
        response.status_code,
        response.content,
        response.headers.get("content-type"),
        stored=response.stored,
        sign_in=record,
    )


def _reserve_cheapest(
    payer: Payer, req: FetchRequest, url: str, challenge: Challenge, context: PaymentContext
) -> Generator[Step, Any, tuple[Choice, PaymentRecord]]:
    """Reserve the cheapest offer the policy allows. What the ledger already counts is checked
    by the reservation itself, atomically; if that refuses the cheapest, try the next."""
    refusals: list[PolicyDenied] = []
    guard = payer.signer if provides(payer.signer, OnChainGuard) else None
    for choice in rank(challenge, payer.gate, context, req.max_price, with_usage=False, signer=payer.signer):
        if guard is not None:
            offer = choice.offer
            try:
                yield WalletCall(
                    "bound check",
                    partial(
                        guard.check_payment, offer.asset, offer.pay_to, choice.maximum, _window(payer, offer)
                    ),
                )
            except PolicyDenied as refused:
                refusals.append(refused)
                continue
        approved = False
        if choice.decision.needs_approval:
            approved = yield from _ask_approval(payer, req, url, choice)
        try:
            return choice, payer.gate.reserve(choice.offer, context, approved=approved)
        except PolicyDenied as refused:
            refusals.append(refused)
    raise refusals[0]


def _ask_approval(payer: Payer, req: FetchRequest, url: str, choice: Choice) -> Generator[Step, Any, bool]:
    offer, asset = choice.offer, choice.asset
    answer = yield ApprovalCall(
        ApprovalRequest(
            method=req.method.upper(),
            url=url,
            amount=choice.maximum,
            symbol=asset.symbol,
            decimals=asset.decimals,
            network=offer.network,
            pay_to=offer.pay_to,
            policy_version=payer.gate.policy.version,
        )
    )
    if answer is None:
        raise PolicyDenied(
            f"paying {format_units(choice.maximum, asset.decimals)} {asset.symbol} "
            "needs a human approval and no one can be asked here",
            reason=Reason.APPROVAL_REQUIRED,
            offer=offer.describe(),
        )
    if not answer:
        raise PolicyDenied(
            "the payment was rejected by the approver", reason=Reason.APPROVAL_DENIED, offer=offer.describe()
        )
    return True


def _send_following_redirects(
    payer: Payer, req: FetchRequest
) -> Generator[Step, Any, tuple[str, HttpAnswer]]:
    url = req.url
    for _ in range(payer.max_redirects + 1):
        try:
            response: HttpAnswer = yield HttpCall(_build_request(req, url))
        except UpstreamError as exc:
            # A pooled connection the server closed as we used it: nothing was paid, and a
            # safe method may be sent again, once.
            if exc.details.get("cause") != "RemoteProtocolError" or req.method.upper() not in (
                "GET",
                "HEAD",
                "OPTIONS",
            ):
                raise
            response = yield HttpCall(_build_request(req, url))
        target = _redirect_target(payer, url, response)
        if target is None:
            return url, response
        if _origin(target) != _origin(url):
            raise RedirectRefused(
                "refusing a redirect to another origin", location=target[:200], origin=url[:200]
            )
        url = target
    raise RedirectRefused("too many redirects", reason=Reason.TOO_MANY_REDIRECTS)


def _location(url: str, response: HttpAnswer) -> str | None:
    """Where a redirect points; None when it is not one (or points nowhere usable)."""
    if response.status_code not in _REDIRECTS or "location" not in response.headers:
        return None
    return redirect_target(url, response.headers["location"])


def _redirect_target(payer: Payer, url: str, response: HttpAnswer) -> str | None:
    target = _location(url, response)
    if target is not None:
        check_literal(target, payer.gate.policy.private_allow)  # says why, before the origin
    return target


def _follow_after_payment(
    payer: Payer, req: FetchRequest, url: str, response: HttpAnswer, sink: BodySink | None
) -> Generator[Step, Any, tuple[HttpAnswer, str | None]]:
    """The paid request was answered with a redirect: the content is at the target. Same-origin
    targets are fetched without the payment header (it was taken already); another origin is
    not followed, and its location is returned instead."""
    for _ in range(payer.max_redirects):
        # Same origin is the same host the guard passed already; another origin is not followed.
        target = _location(url, response)
        if target is None:
            return response, None
        if _origin(target) != _origin(url):
            return response, target[:2000]
        url = target
        response = yield HttpCall(_build_request(req, url), paid=True, sink=sink)
    raise RedirectRefused("too many redirects after the payment", reason=Reason.TOO_MANY_REDIRECTS)


def _sink(payer: Payer) -> BodySink | None:
    if payer.content_store is None:
        return None
    cap = payer.gate.policy.max_paid_body_bytes or DEFAULT_MAX_PAID_BODY_BYTES
    return BodySink(payer.content_store, cap)


def _window(payer: Payer, offer: Offer) -> int:
    """How long a signed authorization for ``offer`` stays valid, from now."""
    return min(offer.max_timeout_seconds, payer.gate.policy.max_authorization_seconds)


def _in_flight(payer: Payer, asset: str) -> int:
    """What the payer owes in ``asset`` for payments not yet settled, this one included."""
    return sum(r.amount for r in payer.gate.ledger.unresolved() if r.asset.lower() == asset.lower())


def _authorize(payer: Payer, choice: Choice, record: PaymentRecord) -> Generator[Step, Any, Authorized]:
    """Sign what was reserved, and only that."""
    offer = choice.offer
    if (record.amount, record.pay_to, record.asset) != (choice.maximum, offer.pay_to, offer.asset):
        raise PaymentMismatch("the reservation does not match the chosen offer")
    now = int(payer.clock())
    rpc = payer.rpc_urls.get(offer.network)
    return (
        yield from choice.scheme.authorize(
            offer,
            choice.asset,
            payer.signer,
            now,
            _window(payer, offer),
            rpc,
            ledger=payer.gate.ledger,
            reservation=record,
        )
    )


def _payment_header(
    challenge: Challenge, choice: Choice, authorized: Authorized, record_id: str
) -> tuple[str, str]:
    offer = choice.offer
    inner = choice.scheme.payload(authorized)
    payload: PaymentPayload | PaymentPayloadV1
    if offer.x402_version >= 2:
        assert isinstance(offer.requirement, PaymentRequirements)
        assert isinstance(challenge.required, PaymentRequired)
        payload = PaymentPayload(
            x402_version=2,
            payload=inner,
            accepted=offer.requirement,
            resource=challenge.required.resource,
            # The payment identifier (row id), where the server declared the extension.
            extensions=payment_extensions(challenge.required.extensions, record_id),
        )
        name = PAYMENT_SIGNATURE_HEADER
    else:
        payload = PaymentPayloadV1(
            x402_version=1, scheme=offer.scheme, network=offer.requirement.network, payload=inner
        )
        name = X_PAYMENT_HEADER
    value = encode_payment_signature_header(payload)
    _check_outgoing(value, choice)
    return name, value


def _check_outgoing(header_value: str, choice: Choice) -> None:
    """Decode exactly what will be sent and compare it with the chosen offer, field by field."""
    offer = choice.offer
    sent = decode_payment_signature_header(header_value)
    mismatched = choice.scheme.payload_mismatches(sent.payload, offer)
    if isinstance(sent, PaymentPayload) and (
        sent.accepted.pay_to.lower(),
        sent.accepted.asset.lower(),
        sent.accepted.amount,
    ) != (offer.pay_to.lower(), offer.asset.lower(), str(offer.amount)):
        mismatched.append("accepted")
    if mismatched:
        raise PaymentMismatch(f"outgoing payment differs from the offer in {mismatched}", fields=mismatched)


def _resume(
    payer: Payer, req: FetchRequest, prior: PaymentRecord
) -> Generator[Step, Any, FetchOutcome | None]:
    """Continue an earlier attempt with the same idempotency key; never pay it twice."""
    now = payer.clock()
    ownership = Ownership.MINE
    if prior.state not in (PaymentState.SETTLED, PaymentState.RELEASED):
        # Re-read, and take the row over if the process that made it is gone.
        claim = payer.gate.ledger.claim(prior.id)
        prior, ownership = claim.record, claim.ownership
    resendable = carried_identifier(prior.payment_header) is not None
    if prior.delivered or (prior.state == PaymentState.SETTLED and not resendable):
        return _replayed(payer, prior)
    if prior.state == PaymentState.SETTLED:
        # Settled and its answer lost: the server caches its answer under the payment
        # identifier, and answers the same payload from that cache (it cannot settle twice).
        return (yield from _resend(payer, req, prior))
    if prior.state == PaymentState.RELEASED:
        return None
    if ownership is Ownership.LIVE:
        raise PaymentInFlight(
            "a payment with this idempotency key is in progress in another process", payment_id=prior.id
        )
    if prior.state == PaymentState.RESERVED:
        # Reserved here, or by a previous release's process (no owner recorded) recently:
        # possibly about to be signed. A gone owner's reservation was never sent.
        if ownership is Ownership.MINE or (
            ownership is Ownership.OWNERLESS and now - prior.created_at < STALE_RESERVATION_SECONDS
        ):
            raise PaymentInFlight("a payment with this idempotency key is in progress", payment_id=prior.id)
        payer.gate.ledger.release(prior.id, reason="abandoned_before_sending")
        return None
    # sent or unknown: the signed authorization may be in flight or settled already.
    if ownership is not Ownership.MINE:
        # Taken over from a process that is gone: the chain may show it settled already (a
        # resend would then only be refused), or expired.
        state = yield from reconcile(payer, prior)
        if state != prior.state:
            prior = payer.gate.ledger.get(prior.id) or prior
            if state == PaymentState.RELEASED:
                return None
            return (yield from _resend(payer, req, prior)) if resendable else _replayed(payer, prior)
    assert prior.valid_before is not None
    if prior.valid_before - now > _RESUME_MARGIN_SECONDS:
        # Resending the same authorization cannot pay twice: the token accepts a nonce once.
        return (yield from _resend(payer, req, prior))
    state = yield from reconcile(payer, prior)
    if state == PaymentState.RELEASED:
        return None
    if state == PaymentState.SETTLED and resendable:
        return (yield from _resend(payer, req, prior))
    raise PaidNotDelivered(
        "this idempotency key already paid and the resource was not delivered",
        payment_id=prior.id,
        state=str(state),
    )


def _resend(payer: Payer, req: FetchRequest, prior: PaymentRecord) -> Generator[Step, Any, FetchOutcome]:
    """Send the recorded payment header again, byte for byte (same authorization, same
    payment identifier): never a second payment."""
    assert prior.payment_header is not None
    header = X_PAYMENT_HEADER if prior.x402_version == 1 else PAYMENT_SIGNATURE_HEADER
    scheme = for_record(prior)
    return (
        yield from _deliver(
            payer,
            req,
            prior.url,
            prior,
            scheme,
            scheme.restore(prior, payer.gate.ledger),
            header,
            prior.payment_header,
        )
    )


def _replayed(payer: Payer, prior: PaymentRecord) -> FetchOutcome:
    """What an earlier attempt delivered, from the content store (nothing is sent again)."""
    evidence = json.loads(prior.evidence_json or "{}")
    sha256 = prior.response_body_sha256 or evidence.get("body_sha256")
    stored = payer.content_store.get(sha256) if payer.content_store and sha256 else None
    return FetchOutcome(
        prior.response_status or 0,
        stored.read(0, INLINE_BYTES) if stored is not None else None,
        prior.response_content_type,
        payment=prior,
        replayed=True,
        stored=stored,
        location=evidence.get("location"),
    )


def _lost_in_transit(
    payer: Payer, req: FetchRequest, record: PaymentRecord, exc: UpstreamError
) -> PaidNotDelivered:
    """Record a paid request that failed on its way (connection lost, deadline passed): the
    payment may settle, so it stays counted as unknown with what was seen of the answer."""
    evidence: dict[str, Any] = {"transport_error": exc.reason, "cause": exc.details.get("cause")}
    if not isinstance(exc, DeadlineExceeded):
        payer.gate.ledger.mark_unknown(record.id, evidence=evidence, delivered=False)
        return PaidNotDelivered(
            "the paid request failed in transit; the payment may settle",
            payment_id=record.id,
            cause=exc.reason,
        )
    seen = {key: exc.details.get(key) for key in ("deadline_seconds", "status", "received_bytes")}
    payer.gate.ledger.mark_unknown(
        record.id, evidence={**evidence, **seen}, response_status=seen["status"], delivered=False
    )
    # Resending the recorded authorization can never pay twice (the token accepts its nonce
    # once); without a key a new fetch would sign a new one.
    retry = (
        f"retry with the same idempotency key ({req.idempotency_key}): the same signed "
        "payment is resent, never a second one"
        if req.idempotency_key
        else "a new fetch without an idempotency key would pay again"
    )
    return PaidNotDelivered(
        f"the payment was sent but {exc.details.get('host')} did not finish answering within "
        f"the {exc.details.get('deadline_seconds')} s deadline; payment {record.id} stays "
        f"counted until it is proven settled or expired; {retry}",
        reason=Reason.PAID_DEADLINE_EXCEEDED,
        payment_id=record.id,
        idempotency_key=req.idempotency_key,
        **seen,
    )


def _deliver(
    payer: Payer,
    req: FetchRequest,
    url: str,
    record: PaymentRecord,
    scheme: Scheme,
    authorized: Authorized,
    header_name: str,
    header_value: str,
) -> Generator[Step, Any, FetchOutcome]:
    """Send the paid request, then settle the ledger entry from the evidence."""
    ledger = payer.gate.ledger
    sink = _sink(payer)
    location = None
    try:
        response: HttpAnswer = yield HttpCall(
            _build_request(req, url, {header_name: header_value}), paid=True, sink=sink
        )
        settle_response = read_settlement_header(response.headers, record.x402_version)
        if response.status_code in _REDIRECTS:
            response, location = yield from _follow_after_payment(payer, req, url, response, sink)
    except UpstreamError as exc:
        raise _lost_in_transit(payer, req, record, exc) from exc

    evidence: dict[str, Any] = {
        "status": response.status_code,
        "settlement": settle_response.model_dump(by_alias=True, exclude_none=True)
        if settle_response
        else None,
        "body_sha256": response.stored.sha256 if response.stored else sha256_hex(response.content),
    }
    if response.stored is not None and not response.stored.complete:
        evidence["body_cut_at_bytes"] = response.stored.size  # the policy's cap
    if location is not None:
        evidence["location"] = location
    identifier = carried_identifier(header_value)
    if identifier is not None:
        evidence["payment_identifier"] = identifier
    settled_by_server = _proves_settlement(scheme, settle_response, authorized, record.network)
    if not (200 <= response.status_code < 300 or (location and settled_by_server)):
        evidence["delivered"] = False
        refused = (
            refusal_reason(response.headers, response.content, settle_response)
            if response.status_code == 402
            else None
        )
        if refused is not None:
            evidence["server_reason"] = refused
        ledger.mark_unknown(
            record.id, evidence=evidence, response_status=response.status_code, delivered=False
        )
        # A 402 may correct the scheme's own state (a channel's total), proving what became of
        # this payment; then paying again works.
        corrected = (
            (yield from scheme.corrective(response.headers, authorized, payer.rpc_urls.get(record.network)))
            if response.status_code == 402
            else None
        )
        if corrected is PaymentState.RELEASED:
            ledger.release(record.id, reason="refused_by_server_resynced")
            raise PaymentRejected(
                f"the server refused this payment and stated its own running total, which the "
                f"agent now follows; nothing was taken for this request (receipt {record.id})",
                reason=Reason.CHANNEL_RESYNCED,
                payment_id=record.id,
                server_reason=refused,
            )
        if corrected is PaymentState.SETTLED:
            state = ledger.settle(
                record.id, settlement_tx=None, delivered=False, settled_amount=record.amount
            ).state
        else:
            state = yield from reconcile(payer, ledger.get(record.id) or record)
        if settled_by_server or state == PaymentState.SETTLED:
            raise PaidNotDelivered(
                f"paid, but the server answered {response.status_code}; the payment settled "
                "and the resource was not delivered",
                payment_id=record.id,
                status=response.status_code,
                state=str(state),
            )
        raise _not_settled(record, response.status_code, state, refused, identifier)

    tx: str | None = None
    settled: int | None = None
    defer = None
    confirmed: bool | None = None
    try:
        if settle_response is not None:
            settlement = scheme.settlement(settle_response, authorized, record.network)
            tx, settled = settlement.transaction or None, settlement.amount
        # A settlement of nothing (upto at 0) has no transaction and nothing on chain to prove.
        nothing_moved = settled == 0 and tx is None
        if tx is not None and payer.verify_on_chain and record.network in payer.rpc_urls:
            defer = payer.defer_verification
        if defer is None and not nothing_moved:
            confirmed = yield from _confirm_on_chain(payer, record, scheme, authorized, tx, settled)
    except SettlementMismatch as exc:
        ledger.mark_unknown(
            record.id,
            evidence={**evidence, "mismatch": exc.message},
            response_status=response.status_code,
            delivered=True,
        )
        exc.details["payment_id"] = record.id
        raise
    if confirmed is False or (tx is None and confirmed is None and not nothing_moved):
        # Delivered, but nothing proves the payment settled: it stays counted as unknown.
        record = ledger.mark_unknown(
            record.id, evidence=evidence, response_status=response.status_code, delivered=True
        )
    else:
        record = ledger.settle(
            record.id,
            settlement_tx=tx,
            response_status=response.status_code,
            response_content_type=response.headers.get("content-type"),
            response_body_sha256=evidence["body_sha256"],
            delivered=True,
            evidence=evidence,
            verification=Verification.PENDING if defer else Verification.VERIFIED if confirmed else None,
            settled_amount=settled,
        )
        if defer is not None:
            defer(record)
    return FetchOutcome(
        response.status_code,
        response.content,
        response.headers.get("content-type"),
        payment=record,
        confirmed_on_chain=bool(confirmed),
        stored=response.stored,
        location=location,
    )


def _proves_settlement(
    scheme: Scheme, settle_response: SettleResponse | None, authorized: Authorized, network: str
) -> bool:
    """The server's settlement header states that this very payment moved money."""
    if settle_response is None:
        return False
    try:
        scheme.settlement(settle_response, authorized, network)
    except SettlementMismatch:
        return False
    return True


def _not_settled(
    record: PaymentRecord, status: int, state: PaymentState, refused: str | None, identifier: str | None
) -> PaymentNotSettled:
    """The server did not deliver and nothing shows the payment moved: say what it is."""
    assert record.valid_before is not None
    expires = datetime.fromtimestamp(record.valid_before, UTC).isoformat(timespec="seconds")
    price = f"{format_units(record.amount, record.decimals)} {record.symbol}"
    if state == PaymentState.RELEASED:
        counted = f"the authorization expired unused, so nothing was paid and the {price} no longer counts"
    else:
        counted = (
            f"nothing has settled; the {price} stays counted until the authorization "
            f"expires at {expires} unless the chain shows it settled"
        )
    details: dict[str, Any] = {
        "payment_id": record.id,
        "status": status,
        "state": str(state),
        "expires_at": record.valid_before,
        "expires_at_iso": expires,
    }
    if status == CONFLICT_STATUS and identifier is not None:
        return PaymentIdentifierConflict(
            f"the server says payment identifier {identifier} was used for another payment and "
            f"took nothing from this one; {counted} (receipt {record.id})",
            payment_identifier=identifier,
            **details,
        )
    if status == 402:
        return PaymentRejected(
            f"the server refused the payment: {refused or 'no reason given'}; "
            f"{counted} (receipt {record.id})",
            server_reason=refused,
            **details,
        )
    return PaymentNotSettled(
        f"the server answered {status} and did not take the payment; {counted} (receipt {record.id})",
        **details,
    )


def _confirm_on_chain(
    payer: Payer,
    record: PaymentRecord,
    scheme: Scheme,
    authorized: Authorized,
    tx: str | None,
    settled: int | None,
) -> Generator[Step, Any, bool | None]:
    """True: the chain shows our transfer (of the ``settled`` amount the server stated, when it
    stated one). False: it could not be shown. None: no RPC."""
    rpc = payer.rpc_urls.get(record.network)
    if rpc is None or (tx is not None and not payer.verify_on_chain):
        return None
    try:
        if tx is None:
            settled = yield from scheme.settled_on_chain(rpc, record)
            return settled is not None
        receipt = yield RpcCall(rpc, "eth_getTransactionReceipt", (tx,))
    except ChainError:
        return False
    if receipt is None:
        return False
    check_moved(scheme.check_receipt(receipt, authorized, record.pay_to), settled, tx)
    return True


def reconcile(payer: Payer, record: PaymentRecord) -> Generator[Step, Any, PaymentState]:
    """Resolve a sent/unknown payment from the chain: authorization used = settled; expired and
    unused = released (it can never settle); otherwise it stays unknown and counted."""
    rpc = payer.rpc_urls.get(record.network)
    if rpc is None or record.state not in (PaymentState.SENT, PaymentState.UNKNOWN):
        return record.state
    ledger = payer.gate.ledger
    scheme = for_record(record)
    try:
        settled = yield from scheme.settled_on_chain(rpc, record)
        if settled is not None:
            # The state the row has now: the paying process may have finished it meanwhile.
            return ledger.settle(record.id, settlement_tx=record.settlement_tx, settled_amount=settled).state
        block = yield RpcCall(rpc, "eth_getBlockByNumber", ("latest", False))
    except ChainError:
        return record.state
    assert record.valid_before is not None
    if int(block["timestamp"], 16) >= record.valid_before:
        # Past validBefore the authorization is refused forever; ask the chain again at that
        # block so a settlement in between cannot slip through.
        settled = yield from scheme.settled_on_chain(rpc, record)
        if settled is None:
            return ledger.release(record.id, reason="expired_unused").state
        return ledger.settle(record.id, settlement_tx=record.settlement_tx, settled_amount=settled).state
    return record.state
