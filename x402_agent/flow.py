"""The pay-and-fetch flow, written once as a generator and driven by sync or async HTTP.

The generator yields ``HttpCall`` and ``RpcCall`` steps and receives their answers, so the steps
read top to bottom: request, parse the challenge, choose an offer, reserve, sign, record, retry
with payment, verify the settlement, commit. It never does I/O itself (besides the ledger, which
must record a reservation before anything is signed).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from x402.http import (
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    decode_payment_signature_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1

from .challenge import Challenge, Offer, parse_challenge
from .decision import PaymentContext, host_refusal
from .errors import (
    ChainError,
    IdempotencyConflict,
    InvalidRequest,
    PaidNotDelivered,
    PaymentInFlight,
    PaymentMismatch,
    PolicyDenied,
    RedirectRefused,
    SettlementMismatch,
    UpstreamError,
)
from .ledger import PaymentRecord, PaymentState
from .money import format_units
from .policy import AssetRule
from .selection import Choice, PriceLimit, rank
from .settlement import check_settlement, check_transaction_receipt, read_settlement_header
from .signer import (
    OnChainGuard,
    PaymentSigner,
    SignedAuthorization,
    TokenDomain,
    TransferAuthorization,
)
from .spendgate import SpendGate

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_RESERVED_HEADERS = frozenset({PAYMENT_SIGNATURE_HEADER.lower(), X_PAYMENT_HEADER.lower()})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# RFC 9110 field-name token; values: printable ASCII, space and tab (httpx encodes ASCII only).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# An authorization this close to expiry is not worth resending: it may expire in flight.
_RESUME_MARGIN_SECONDS = 10
# A reservation older than this without being sent belongs to a crashed attempt: nothing signed
# ever left it (the ledger records the signed payment before sending it).
STALE_RESERVATION_SECONDS = 60


@dataclass(frozen=True)
class HttpCall:
    request: httpx.Request


@dataclass(frozen=True)
class HttpAnswer:
    """A fully read HTTP response (bodies are size-limited by the driver)."""

    status_code: int
    headers: httpx.Headers
    content: bytes


@dataclass(frozen=True)
class RpcCall:
    url: str
    method: str
    params: tuple[Any, ...]


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
        return (f"Approve paying {self.price} on {self.network} to {self.pay_to} "
                f"for {self.method} {self.url}?")


@dataclass(frozen=True)
class ApprovalCall:
    """Ask the driver's approver; the answer is True (approved), False (rejected) or None
    (nobody can be asked)."""

    request: ApprovalRequest


@dataclass(frozen=True)
class WalletCall:
    """A blocking call into a smart-account payer (its on-chain bound check, a top-up); the
    async driver runs it in a worker thread."""

    name: str
    run: Callable[[], Any]


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


@dataclass(frozen=True)
class FetchOutcome:
    status: int
    content: bytes | None
    content_type: str | None
    payment: PaymentRecord | None = None
    replayed: bool = False  # an idempotent repeat answered from the ledger, nothing re-sent
    confirmed_on_chain: bool = False


@dataclass
class Payer:
    """Everything a payment needs: the gate (policy + ledger), the signer, chain access."""

    gate: SpendGate
    signer: PaymentSigner
    rpc_urls: Mapping[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    max_redirects: int = 5
    # Check each settlement's transaction receipt before committing (needs an RPC); without it
    # the server's settlement header is trusted and the RPC serves only reconciliation.
    verify_on_chain: bool = True


def sha256_hex(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def validate_request(req: FetchRequest) -> None:
    """Refuse what must never reach the network: odd schemes, injected or reserved headers."""
    parts = urlsplit(req.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("only http and https URLs with a host can be fetched",
                             reason="unsupported_url")
    if req.method.upper() not in ALLOWED_METHODS:
        raise InvalidRequest(f"method {req.method!r} is not allowed", reason="invalid_method")
    for name, value in req.headers.items():
        if any(c in name + value for c in "\r\n\0") or not name.strip():
            raise InvalidRequest("header names and values may not contain line breaks",
                                 reason="header_injection")
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise InvalidRequest(f"header {name[:40]!r} is not a valid HTTP header (token name, "
                                 "printable ASCII value)", reason="invalid_header")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidRequest(f"header {name} is set by the payment flow",
                                 reason="reserved_header")


def _context(req: FetchRequest, url: str) -> PaymentContext:
    body_hash = sha256_hex(req.body)
    fingerprint = sha256_hex(f"{req.method.upper()} {req.url} {body_hash}".encode())
    return PaymentContext(method=req.method.upper(), url=url,
                          host=(urlsplit(url).hostname or "").lower(),
                          request_body_sha256=body_hash, request_fingerprint=fingerprint,
                          idempotency_key=req.idempotency_key, session=req.session,
                          session_profile=req.session_profile)


def _build_request(req: FetchRequest, url: str, extra: Mapping[str, str] | None = None
                   ) -> httpx.Request:
    headers = {**req.headers, **(extra or {})}
    return httpx.Request(req.method.upper(), url, headers=headers, content=req.body)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def check_host(payer: Payer, url: str) -> None:
    refusal = host_refusal(payer.gate.policy, (urlsplit(url).hostname or "").lower())
    if refusal is not None:
        raise PolicyDenied(refusal[1], reason=refusal[0])


def fetch_flow(payer: Payer, req: FetchRequest) -> Generator[Step, Any, FetchOutcome]:
    """Fetch ``req``; pay for it if the server answers 402 and everything allows it."""
    validate_request(req)
    check_host(payer, req.url)
    context = _context(req, req.url)
    prior = None
    if req.idempotency_key:
        prior = payer.gate.ledger.find_by_idempotency_key(req.idempotency_key)
        if prior is not None and prior.request_fingerprint != context.request_fingerprint:
            raise IdempotencyConflict("idempotency key was used for a different request",
                                      payment_id=prior.id)
        if prior is not None:
            resumed = yield from _resume(payer, req, prior)
            if resumed is not None:
                return resumed

    url, response = yield from _send_following_redirects(payer, req)
    if response.status_code != 402:
        return FetchOutcome(response.status_code, response.content,
                            response.headers.get("content-type"))

    challenge = parse_challenge(response.headers, response.content, url)
    context = _context(req, url)
    choice, record = yield from _reserve_cheapest(payer, req, url, challenge, context)
    try:
        if isinstance(payer.signer, OnChainGuard):
            yield WalletCall("top-up", partial(payer.signer.ensure_funds,
                                               _in_flight(payer, choice.offer.asset)))
        signed = _sign(payer, choice.offer, choice.asset.eip712_name,
                       choice.asset.eip712_version, record)
        header_name, header_value = _payment_header(challenge, choice.offer, signed)
        record = payer.gate.ledger.mark_sent(
            record.id, payer=signed.authorization.from_address, nonce=signed.authorization.nonce,
            valid_after=signed.authorization.valid_after,
            valid_before=signed.authorization.valid_before, payment_header=header_value)
    except BaseException:
        payer.gate.ledger.release(record.id, reason="not_sent")
        raise
    return (yield from _deliver(payer, req, url, record, signed, header_name, header_value))


def _reserve_cheapest(payer: Payer, req: FetchRequest, url: str, challenge: Challenge,
                      context: PaymentContext
                      ) -> Generator[Step, Any, tuple[Choice, PaymentRecord]]:
    """Reserve the cheapest offer the policy allows. What the ledger already counts is checked
    by the reservation itself, atomically; if that refuses the cheapest, try the next."""
    refusals: list[PolicyDenied] = []
    guard = payer.signer if isinstance(payer.signer, OnChainGuard) else None
    for choice in rank(challenge, payer.gate, context, req.max_price, with_usage=False):
        if guard is not None:
            offer = choice.offer
            try:
                yield WalletCall("bound check", partial(guard.check_payment, offer.asset, offer.pay_to,
                                                        offer.amount, _window(payer, offer)))
            except PolicyDenied as refused:
                refusals.append(refused)
                continue
        approved = False
        if choice.decision.needs_approval:
            approved = yield from _ask_approval(payer, req, url, choice.offer, choice.asset)
        try:
            return choice, payer.gate.reserve(choice.offer, context, approved=approved)
        except PolicyDenied as refused:
            refusals.append(refused)
    raise refusals[0]


def _ask_approval(payer: Payer, req: FetchRequest, url: str, offer: Offer, asset: AssetRule
                  ) -> Generator[Step, Any, bool]:
    answer = yield ApprovalCall(ApprovalRequest(
        method=req.method.upper(), url=url, amount=offer.amount, symbol=asset.symbol,
        decimals=asset.decimals, network=offer.network, pay_to=offer.pay_to,
        policy_version=payer.gate.policy.version))
    if answer is None:
        raise PolicyDenied(f"paying {format_units(offer.amount, asset.decimals)} {asset.symbol} "
                           "needs a human approval and no one can be asked here",
                           reason="approval_required", offer=offer.describe())
    if not answer:
        raise PolicyDenied("the payment was rejected by the approver", reason="approval_denied",
                           offer=offer.describe())
    return True


def _send_following_redirects(payer: Payer, req: FetchRequest
                              ) -> Generator[Step, Any, tuple[str, HttpAnswer]]:
    url = req.url
    for _ in range(payer.max_redirects + 1):
        try:
            response: HttpAnswer = yield HttpCall(_build_request(req, url))
        except UpstreamError as exc:
            # A pooled connection the server closed as we used it: nothing was paid, and a
            # safe method may be sent again, once.
            if exc.details.get("cause") != "RemoteProtocolError" or req.method.upper() not in (
                    "GET", "HEAD", "OPTIONS"):
                raise
            response = yield HttpCall(_build_request(req, url))
        if response.status_code not in _REDIRECTS or "location" not in response.headers:
            return url, response
        target = urljoin(url, response.headers["location"])
        if _origin(target) != _origin(url):
            raise RedirectRefused("refusing a redirect to another origin",
                                  location=target[:200], origin=url[:200])
        url = target
    raise RedirectRefused("too many redirects", reason="too_many_redirects")


def _window(payer: Payer, offer: Offer) -> int:
    """How long a signed authorization for ``offer`` stays valid, from now."""
    return min(offer.max_timeout_seconds, payer.gate.policy.max_authorization_seconds)


def _in_flight(payer: Payer, asset: str) -> int:
    """What the payer owes in ``asset`` for payments not yet settled, this one included."""
    return sum(r.amount for r in payer.gate.ledger.unresolved() if r.asset.lower() == asset.lower())


def _sign(payer: Payer, offer: Offer, token_name: str, token_version: str,
          record: PaymentRecord) -> SignedAuthorization:
    assert offer.chain_id is not None
    now = int(payer.clock())
    window = _window(payer, offer)
    wanted = TransferAuthorization(
        token=TokenDomain(token_name, token_version, offer.chain_id, offer.asset),
        from_address=payer.signer.address, to=offer.pay_to, value=offer.amount,
        # Valid at once, as the SDK's own client signs it: a bound in the past only breaks when
        # the chain's latest block is older than it (an idle chain); validBefore bounds the life.
        valid_after=0,
        valid_before=now + window, nonce="0x" + secrets.token_hex(32),
    )
    if (record.amount, record.pay_to, record.asset) != (offer.amount, offer.pay_to, offer.asset):
        raise PaymentMismatch("the reservation does not match the chosen offer")
    signed = payer.signer.sign_authorization(wanted)
    if signed.authorization != wanted:
        raise PaymentMismatch("the signer signed something other than the chosen offer",
                              reason="signed_payment_mismatch")
    return signed


def _payment_header(challenge: Challenge, offer: Offer, signed: SignedAuthorization
                    ) -> tuple[str, str]:
    auth = signed.authorization
    inner = {
        "signature": signed.signature,
        "authorization": {
            "from": auth.from_address, "to": auth.to, "value": str(auth.value),
            "validAfter": str(auth.valid_after), "validBefore": str(auth.valid_before),
            "nonce": auth.nonce,
        },
    }
    payload: PaymentPayload | PaymentPayloadV1
    if offer.x402_version >= 2:
        assert isinstance(offer.requirement, PaymentRequirements)
        assert isinstance(challenge.required, PaymentRequired)
        payload = PaymentPayload(x402_version=2, payload=inner, accepted=offer.requirement,
                                 resource=challenge.required.resource)
        name = PAYMENT_SIGNATURE_HEADER
    else:
        payload = PaymentPayloadV1(x402_version=1, scheme=offer.scheme,
                                   network=offer.requirement.network, payload=inner)
        name = X_PAYMENT_HEADER
    value = encode_payment_signature_header(payload)
    _check_outgoing(value, offer)
    return name, value


def _check_outgoing(header_value: str, offer: Offer) -> None:
    """Decode exactly what will be sent and compare it with the chosen offer, field by field."""
    sent = decode_payment_signature_header(header_value)
    auth = sent.payload.get("authorization", {})
    mismatched = [name for name, got, want in (
        ("to", str(auth.get("to", "")).lower(), offer.pay_to.lower()),
        ("value", auth.get("value"), str(offer.amount)),
    ) if got != want]
    if isinstance(sent, PaymentPayload) and (
        sent.accepted.pay_to.lower(), sent.accepted.asset.lower(), sent.accepted.amount
    ) != (offer.pay_to.lower(), offer.asset.lower(), str(offer.amount)):
        mismatched.append("accepted")
    if mismatched:
        raise PaymentMismatch(f"outgoing payment differs from the offer in {mismatched}",
                              fields=mismatched)


def _resume(payer: Payer, req: FetchRequest, prior: PaymentRecord
            ) -> Generator[Step, Any, FetchOutcome | None]:
    """Continue an earlier attempt with the same idempotency key; never pay it twice."""
    now = payer.clock()
    if prior.state == PaymentState.SETTLED:
        return FetchOutcome(prior.response_status or 0, None, prior.response_content_type,
                            payment=prior, replayed=True)
    if prior.state == PaymentState.RELEASED:
        return None
    if prior.state == PaymentState.RESERVED:
        if now - prior.created_at < STALE_RESERVATION_SECONDS:
            raise PaymentInFlight("a payment with this idempotency key is in progress",
                                  payment_id=prior.id)
        payer.gate.ledger.release(prior.id, reason="stale_reservation")
        return None
    # sent or unknown: the signed authorization may be in flight or settled already.
    assert prior.valid_before is not None and prior.payment_header is not None
    if prior.valid_before - now > _RESUME_MARGIN_SECONDS:
        # Resending the same authorization cannot pay twice: the token accepts a nonce once.
        header = X_PAYMENT_HEADER if prior.x402_version == 1 else PAYMENT_SIGNATURE_HEADER
        signed = _signed_from_record(prior)
        return (yield from _deliver(payer, req, prior.url, prior, signed, header,
                                    prior.payment_header))
    state = yield from reconcile(payer, prior)
    if state == PaymentState.RELEASED:
        return None
    raise PaidNotDelivered("this idempotency key already paid and the resource was not delivered",
                           payment_id=prior.id, state=str(state))


def _signed_from_record(record: PaymentRecord) -> SignedAuthorization:
    assert record.payment_header is not None
    payload = decode_payment_signature_header(record.payment_header).payload
    auth = payload["authorization"]
    # The domain's name and version are not needed after signing (the settlement checks use
    # the token address, payer, value and nonce); the recorded requirement still names them.
    extra = json.loads(record.requirement_json).get("extra") or {}
    return SignedAuthorization(TransferAuthorization(
        token=TokenDomain(str(extra.get("name", "")), str(extra.get("version", "")),
                          int(record.network.split(":")[1]), record.asset),
        from_address=auth["from"], to=auth["to"], value=int(auth["value"]),
        valid_after=int(auth["validAfter"]), valid_before=int(auth["validBefore"]),
        nonce=auth["nonce"]), payload["signature"])


def _deliver(payer: Payer, req: FetchRequest, url: str, record: PaymentRecord,
             signed: SignedAuthorization, header_name: str, header_value: str
             ) -> Generator[Step, Any, FetchOutcome]:
    """Send the paid request, then settle the ledger entry from the evidence."""
    ledger = payer.gate.ledger
    try:
        response: HttpAnswer = yield HttpCall(_build_request(req, url,
                                                                 {header_name: header_value}))
    except UpstreamError as exc:
        ledger.mark_unknown(record.id, evidence={"transport_error": exc.reason,
                                                 "cause": exc.details.get("cause")},
                            delivered=False)
        raise PaidNotDelivered("the paid request failed in transit; the payment may settle",
                               payment_id=record.id, cause=exc.reason) from exc

    settle_response = read_settlement_header(response.headers, record.x402_version)
    evidence: dict[str, Any] = {
        "status": response.status_code,
        "settlement": settle_response.model_dump(by_alias=True, exclude_none=True)
        if settle_response else None,
        "body_sha256": sha256_hex(response.content),
    }
    delivered = 200 <= response.status_code < 300
    if not delivered:
        evidence["delivered"] = False
        ledger.mark_unknown(record.id, evidence=evidence, response_status=response.status_code,
                            delivered=False)
        state = yield from reconcile(payer, ledger.get(record.id) or record)
        raise PaidNotDelivered(
            f"paid, but the server answered {response.status_code}; the amount stays counted "
            "until the payment is proven settled or expired",
            payment_id=record.id, status=response.status_code, state=str(state))

    auth = signed.authorization
    tx: str | None = None
    try:
        if settle_response is not None:
            tx = check_settlement(settle_response, auth, record.network).transaction
        confirmed = yield from _confirm_on_chain(payer, record, auth, tx)
    except SettlementMismatch as exc:
        ledger.mark_unknown(record.id, evidence={**evidence, "mismatch": exc.message},
                            response_status=response.status_code, delivered=True)
        exc.details["payment_id"] = record.id
        raise
    if confirmed is False or (tx is None and confirmed is None):
        # Delivered, but nothing proves the payment settled: it stays counted as unknown.
        record = ledger.mark_unknown(record.id, evidence=evidence,
                                     response_status=response.status_code, delivered=True)
    else:
        record = ledger.settle(record.id, settlement_tx=tx, response_status=response.status_code,
                               response_content_type=response.headers.get("content-type"),
                               response_body_sha256=evidence["body_sha256"], delivered=True,
                               evidence=evidence)
    return FetchOutcome(response.status_code, response.content,
                        response.headers.get("content-type"), payment=record,
                        confirmed_on_chain=bool(confirmed))


def _confirm_on_chain(payer: Payer, record: PaymentRecord, auth: TransferAuthorization,
                      tx: str | None) -> Generator[Step, Any, bool | None]:
    """True: the chain shows our transfer. False: it could not be shown. None: no RPC."""
    rpc = payer.rpc_urls.get(record.network)
    if rpc is None or (tx is not None and not payer.verify_on_chain):
        return None
    try:
        if tx is None:
            used: bool = yield from nonce_used(rpc, record)
            return used
        receipt = yield RpcCall(rpc, "eth_getTransactionReceipt", (tx,))
    except ChainError:
        return False
    if receipt is None:
        return False
    check_transaction_receipt(receipt, auth, record.pay_to)
    return True


_AUTHORIZATION_STATE_SELECTOR = "0xe94a0102"  # authorizationState(address,bytes32)


def nonce_used(rpc: str, record: PaymentRecord) -> Generator[Step, Any, bool]:
    assert record.payer is not None and record.nonce is not None
    data = (_AUTHORIZATION_STATE_SELECTOR + record.payer.lower().removeprefix("0x").rjust(64, "0")
            + record.nonce.lower().removeprefix("0x"))
    result = yield RpcCall(rpc, "eth_call", ({"to": record.asset, "data": data}, "latest"))
    return int(result, 16) != 0


def reconcile(payer: Payer, record: PaymentRecord) -> Generator[Step, Any, PaymentState]:
    """Resolve a sent/unknown payment from the chain: used nonce = settled; expired and unused =
    released (it can never settle); otherwise it stays unknown and counted."""
    rpc = payer.rpc_urls.get(record.network)
    if rpc is None or record.state not in (PaymentState.SENT, PaymentState.UNKNOWN):
        return record.state
    ledger = payer.gate.ledger
    try:
        if (yield from nonce_used(rpc, record)):
            ledger.settle(record.id, settlement_tx=record.settlement_tx)
            return PaymentState.SETTLED
        block = yield RpcCall(rpc, "eth_getBlockByNumber", ("latest", False))
    except ChainError:
        return record.state
    assert record.valid_before is not None
    if int(block["timestamp"], 16) >= record.valid_before:
        # Past validBefore the token rejects the authorization forever; check the nonce again
        # at that block so a settlement in between cannot slip through.
        if not (yield from nonce_used(rpc, record)):
            ledger.release(record.id, reason="expired_unused")
            return PaymentState.RELEASED
        ledger.settle(record.id, settlement_tx=record.settlement_tx)
        return PaymentState.SETTLED
    return record.state
