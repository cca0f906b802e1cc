"""Hostile input: malformed or malicious 402 challenges, redirects, requests and settlements.

Every refusal must be typed (exact error class and ``reason`` code), must happen before anything
is signed, must never let a payment header leave the client, and must leave nothing counted in
the ledger. Each case runs against a real HTTP server (``hostile_server.HostileServer``) through
both the sync and the async driver.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address
from hostile_server import Canned, HostileServer
from x402.http import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
)
from x402.schemas import (
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
    SettleResponse,
)
from x402.schemas.v1 import PaymentPayloadV1

from x402_agent.challenge import parse_challenge
from x402_agent.client import MAX_RESPONSE_BYTES, AsyncX402Client, X402Client
from x402_agent.content_store import INLINE_BYTES, ContentStore
from x402_agent.errors import (
    ChallengeError,
    InvalidRequest,
    NoAcceptableRequirement,
    PaidNotDelivered,
    PaymentMismatch,
    PaymentNotSettled,
    PaymentRejected,
    PolicyDenied,
    RedirectRefused,
    SettlementMismatch,
    UpstreamError,
    X402AgentError,
)
from x402_agent.flow import FetchOutcome, FetchRequest, Payer, _context
from x402_agent.ledger import COUNTED_STATES, PaymentRecord, PaymentState, SQLiteLedger
from x402_agent.policy import AssetRule, HostLists, Policy, PrivateNetwork
from x402_agent.selection import PriceLimit, choose
from x402_agent.signer import (
    LocalKeySigner,
    SignedAuthorization,
    TokenDomain,
    TransferAuthorization,
)
from x402_agent.spendgate import PolicyGate

# ---- the world these tests live in ---------------------------------------------------------
NETWORK = "eip155:84532"
CHAIN_ID = 84532
V1_NETWORK = "base-sepolia"
TOKEN = to_checksum_address("0x5eed0000000000000000000000000000c0ffee01")  # made up
OTHER_TOKEN = to_checksum_address("0x5eed0000000000000000000000000000c0ffee02")
PAY_TO = to_checksum_address("0x00000000000000000000000000000000000b0b01")
PAY_TO_B = to_checksum_address("0x00000000000000000000000000000000000b0b02")
PAY_TO_C = to_checksum_address("0x00000000000000000000000000000000000b0b03")
EVIL = to_checksum_address("0x00000000000000000000000000000000000e7e11")
ZERO = "0x" + "00" * 20
PRICE = 1000  # atomic, 0.001 USDC
CAP = 100_000
TX = "0x" + "ab" * 32
PATH = "/paid"
DRIVERS = ("sync", "async")
_DROP = object()  # marks a field to leave out of a hand-built challenge

POLICY = Policy(
    version=1,
    assets=(
        AssetRule(
            network=NETWORK,
            address=TOKEN,
            symbol="USDC",
            decimals=6,
            eip712_name="USD Coin",
            eip712_version="2",
            per_request_max=CAP,
        ),
    ),
)


# ---- servers -------------------------------------------------------------------------------
@dataclass
class Servers:
    main: HostileServer
    other: HostileServer  # another port: another origin

    @property
    def url(self) -> str:
        return self.main.url(PATH)

    def all_payment_headers(self) -> list[tuple[str, str, str]]:
        return self.main.payment_headers() + self.other.payment_headers()

    def describe(self) -> str:
        return self.main.describe() + "\n" + self.other.describe()


@pytest.fixture(scope="module")
def _servers() -> Iterator[Servers]:
    with HostileServer("main") as main, HostileServer("other-origin") as other:
        assert main.origin != other.origin
        yield Servers(main, other)


@pytest.fixture
def hostile(_servers: Servers) -> Servers:
    """Both hostile servers, with no programmed answers and no recorded requests."""
    _servers.main.reset()
    _servers.other.reset()
    return _servers


# ---- the payer -----------------------------------------------------------------------------
class CountingSigner:
    """Wraps a real LocalKeySigner; counts signatures, optionally tampers or fails."""

    def __init__(
        self,
        tamper: Callable[[TransferAuthorization], TransferAuthorization] | None = None,
        fail: BaseException | None = None,
    ) -> None:
        self.inner = LocalKeySigner(Account.create())
        self.tamper = tamper
        self.fail = fail
        self.calls: list[TransferAuthorization] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def address(self) -> str:
        return self.inner.address

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization:
        self.calls.append(authorization)
        if self.fail is not None:
            raise self.fail
        if self.tamper is not None:
            authorization = self.tamper(authorization)
        return self.inner.sign_authorization(authorization)


@dataclass
class Env:
    payer: Payer
    signer: CountingSigner
    ledger: SQLiteLedger

    def fetch(self, request: FetchRequest, driver: str = "sync") -> FetchOutcome:
        if driver == "sync":
            with X402Client(self.payer) as client:
                return client.fetch(request)

        async def run() -> FetchOutcome:
            async with AsyncX402Client(self.payer) as client:
                return await client.fetch(request)

        return asyncio.run(run())

    def rows(self) -> list[PaymentRecord]:
        return self.ledger.recent(10_000)

    def counted(self) -> list[PaymentRecord]:
        return [r for r in self.rows() if r.state in COUNTED_STATES]


def opted_in(policy: Policy, servers: Servers) -> Policy:
    """``policy`` with the two test servers' own loopback addresses (and nothing else local)
    opted in to the private-network guard."""
    allow = tuple(s.origin.removeprefix("http://") for s in (servers.main, servers.other))
    return policy.model_copy(update={"private_network": PrivateNetwork(allow=allow)})


def make_env(tmp_path: Path, servers: Servers, signer: CountingSigner | None = None) -> Env:
    ledger = SQLiteLedger(tmp_path / "ledger.sqlite3")
    signer = signer or CountingSigner()
    payer = Payer(gate=PolicyGate(opted_in(POLICY, servers), ledger), signer=signer, rpc_urls={})
    return Env(payer, signer, ledger)


@pytest.fixture
def env(tmp_path: Path, _servers: Servers) -> Iterator[Env]:
    made = make_env(tmp_path, _servers)
    yield made
    made.ledger.close()


# ---- challenge builders ----------------------------------------------------------------------
def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode()
    return base64.b64encode(raw).decode()


def valid_v2_required(url: str, **offer: Any) -> PaymentRequired:
    """The valid v2 template, built with the SDK's own models."""
    fields: dict[str, Any] = dict(
        scheme="exact",
        network=NETWORK,
        amount=str(PRICE),
        asset=TOKEN,
        pay_to=PAY_TO,
        max_timeout_seconds=60,
        extra={"name": "USD Coin", "version": "2"},
    )
    fields.update(offer)
    return PaymentRequired(
        x402_version=2,
        error="payment required",
        resource=ResourceInfo(url=url, description="hostile test resource"),
        accepts=[PaymentRequirements(**fields)],
    )


def valid_v2_402(url: str, **offer: Any) -> Canned:
    header = encode_payment_required_header(valid_v2_required(url, **offer))
    return Canned.make(402, {PAYMENT_REQUIRED_HEADER: header, "content-type": "application/json"}, b"{}")


def v2_offer(**overrides: Any) -> dict[str, Any]:
    """A v2 requirement as raw JSON (camelCase), for the malformed ones the SDK cannot build."""
    offer: dict[str, Any] = {
        "scheme": "exact",
        "network": NETWORK,
        "amount": str(PRICE),
        "asset": TOKEN,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    offer.update(overrides)
    return {k: v for k, v in offer.items() if v is not _DROP}


def v2_doc(url: str, offers: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "x402Version": 2,
        "error": "payment required",
        "resource": {"url": url},
        "accepts": [v2_offer()] if offers is None else offers,
    }
    doc.update(top)
    return {k: v for k, v in doc.items() if v is not _DROP}


def v1_offer(url: str, **overrides: Any) -> dict[str, Any]:
    offer: dict[str, Any] = {
        "scheme": "exact",
        "network": V1_NETWORK,
        "maxAmountRequired": str(PRICE),
        "resource": url,
        "description": "hostile test resource",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 60,
        "asset": TOKEN,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    offer.update(overrides)
    return {k: v for k, v in offer.items() if v is not _DROP}


def v1_doc(url: str, offers: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "x402Version": 1,
        "error": "X-PAYMENT header is required",
        "accepts": [v1_offer(url)] if offers is None else offers,
    }
    doc.update(top)
    return {k: v for k, v in doc.items() if v is not _DROP}


def header_402(value: Any, body: bytes = b"") -> Canned:
    """402 with PAYMENT-REQUIRED: a dict/list is JSON+base64 encoded, a str is sent verbatim."""
    header = value if isinstance(value, str) else b64(value)
    return Canned.make(402, {PAYMENT_REQUIRED_HEADER: header}, body)


def body_402(doc: Any) -> Canned:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return Canned.make(402, {"content-type": "application/json"}, raw)


def settle_header(signer_address: str, **overrides: Any) -> str:
    fields: dict[str, Any] = dict(
        success=True, payer=signer_address, transaction=TX, network=NETWORK, amount=str(PRICE)
    )
    fields.update(overrides)
    return encode_payment_response_header(SettleResponse(**fields))


# ---- assertions ----------------------------------------------------------------------------
def expect_refusal(run: Callable[[], Any]) -> X402AgentError:
    try:
        outcome = run()
    except X402AgentError as exc:
        return exc
    pytest.fail(f"expected a typed refusal, but the fetch returned {outcome!r}")


def assert_error(exc: X402AgentError, cls: type[X402AgentError], reason: str) -> None:
    assert type(exc) is cls and exc.reason == reason, (
        f"expected {cls.__name__}({reason!r}), got {type(exc).__name__}: {exc.to_dict()}"
    )


def assert_nothing_paid(env: Env, srv: Servers) -> None:
    assert env.signer.count == 0, f"signer was called {env.signer.count} time(s)"
    assert srv.all_payment_headers() == [], srv.describe()
    counted = [(r.id, str(r.state)) for r in env.counted()]
    assert counted == [], f"ledger still counts {counted}"


def decode_authorization(
    header_value: str,
) -> tuple[PaymentPayload | PaymentPayloadV1, TransferAuthorization, str]:
    sent = decode_payment_signature_header(header_value)
    auth = sent.payload["authorization"]
    authorization = TransferAuthorization(
        token=TokenDomain("USD Coin", "2", CHAIN_ID, TOKEN),
        from_address=auth["from"],
        to=auth["to"],
        value=int(auth["value"]),
        valid_after=int(auth["validAfter"]),
        valid_before=int(auth["validBefore"]),
        nonce=auth["nonce"],
    )
    return sent, authorization, sent.payload["signature"]


def recovered_signer(authorization: TransferAuthorization, signature: str) -> str:
    return str(Account._recover_hash(authorization.digest(), signature=signature))


# ---- the valid templates (controls) ----------------------------------------------------------
def test_valid_templates_pass_choose(env: Env) -> None:
    """Like ``x402-agent quote``: both templates parse and the policy accepts their offer."""
    url = "http://127.0.0.1:1" + PATH
    req = FetchRequest(url=url)
    header = encode_payment_required_header(valid_v2_required(url))
    for headers, body in (({PAYMENT_REQUIRED_HEADER: header}, b""), ({}, json.dumps(v1_doc(url)).encode())):
        challenge = parse_challenge(headers, body, url)
        choice = choose(challenge, env.payer.gate, _context(req, url), PriceLimit.parse("0.001"))
        assert (choice.offer.network, choice.offer.asset, choice.offer.amount, choice.offer.pay_to) == (
            NETWORK,
            TOKEN,
            PRICE,
            PAY_TO,
        )
        assert choice.asset.symbol == "USDC" and choice.decision.allowed
    assert env.signer.count == 0 and env.rows() == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_positive_control_v2_pays_once_and_settles(env: Env, hostile: Servers, driver: str) -> None:
    hostile.main.program(
        PATH,
        valid_v2_402(hostile.url),
        Canned.make(
            200,
            {PAYMENT_RESPONSE_HEADER: settle_header(env.signer.address), "content-type": "text/plain"},
            "the paid resource",
        ),
    )

    outcome = env.fetch(FetchRequest(url=hostile.url), driver)

    assert (outcome.status, outcome.content) == (200, b"the paid resource"), hostile.describe()
    assert env.signer.count == 1
    first, second = hostile.main.received
    assert first.payment_headers() == []
    assert [k for k, _ in second.payment_headers()] == [PAYMENT_SIGNATURE_HEADER.lower()]
    sent, authorization, signature = decode_authorization(second.header(PAYMENT_SIGNATURE_HEADER) or "")
    assert isinstance(sent, PaymentPayload)
    assert (sent.accepted.pay_to, sent.accepted.amount, sent.accepted.asset) == (PAY_TO, str(PRICE), TOKEN)
    assert (authorization.to, authorization.value) == (PAY_TO, PRICE)
    assert recovered_signer(authorization, signature) == env.signer.address
    assert hostile.other.received == []
    [row] = env.rows()
    assert row.state == PaymentState.SETTLED and row.settlement_tx == TX
    assert outcome.payment is not None and outcome.payment.id == row.id


@pytest.mark.parametrize("driver", DRIVERS)
def test_positive_control_v1_body_challenge_pays_with_x_payment(
    env: Env, hostile: Servers, driver: str
) -> None:
    hostile.main.program(PATH, body_402(v1_doc(hostile.url)), Canned.make(200, body="v1 content"))

    outcome = env.fetch(FetchRequest(url=hostile.url), driver)

    assert outcome.status == 200 and env.signer.count == 1, hostile.describe()
    paid = hostile.main.received[1]
    assert [k for k, _ in paid.payment_headers()] == [X_PAYMENT_HEADER.lower()]
    sent, authorization, signature = decode_authorization(paid.header(X_PAYMENT_HEADER) or "")
    assert isinstance(sent, PaymentPayloadV1) and sent.network == V1_NETWORK
    assert recovered_signer(authorization, signature) == env.signer.address
    [row] = env.rows()
    # Delivered, but with no settlement evidence and no RPC it stays counted as unknown.
    assert row.state == PaymentState.UNKNOWN and row.x402_version == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_same_origin_redirect_is_followed_then_paid(env: Env, hostile: Servers, driver: str) -> None:
    hostile.main.program("/start", Canned.make(302, {"location": PATH}))
    hostile.main.program(PATH, valid_v2_402(hostile.url), Canned.make(200, body="ok"))
    outcome = env.fetch(FetchRequest(url=hostile.main.url("/start")), driver)
    assert outcome.status == 200 and env.signer.count == 1, hostile.describe()
    assert [r.path for r in hostile.main.received] == ["/start", PATH, PATH]
    assert env.rows()[0].url == hostile.url


# ---- the hostile table -----------------------------------------------------------------------
Setup = Callable[[Servers], None]


def on_402(build: Callable[[str], Canned]) -> Setup:
    def setup(srv: Servers) -> None:
        srv.main.program(PATH, build(srv.url))

    return setup


def redirect_to(location: Callable[[Servers], str], status: int = 302) -> Setup:
    def setup(srv: Servers) -> None:
        srv.main.program(PATH, Canned.make(status, {"location": location(srv)}))
        # Were the redirect followed, the other origin would ask for payment.
        srv.other.always(PATH, valid_v2_402(srv.other.url(PATH)))

    return setup


def redirect_loop(srv: Servers) -> None:
    srv.main.always(PATH, Canned.make(302, {"location": PATH + "?again"}))


@dataclass(frozen=True)
class Case:
    setup: Setup | None  # None: the request is refused before any network access
    error: type[X402AgentError]
    reason: str
    request: Callable[[str], FetchRequest] = lambda url: FetchRequest(url=url)
    check: Callable[[X402AgentError, Servers], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def offer_case(error: type[X402AgentError], reason: str, **offer: Any) -> Case:
    return Case(on_402(lambda url: header_402(v2_doc(url, [v2_offer(**offer)]))), error, reason)


def rejected_reasons(expected: list[str]) -> Callable[[X402AgentError, Servers], None]:
    def check(exc: X402AgentError, srv: Servers) -> None:
        got = [(r["index"], r["reason"]) for r in exc.details["rejected"]]
        assert got == list(enumerate(expected)), exc.to_dict()

    return check


def received_nothing(exc: X402AgentError, srv: Servers) -> None:
    assert srv.main.received == [] and srv.other.received == [], srv.describe()


def other_origin_untouched(exc: X402AgentError, srv: Servers) -> None:
    assert srv.other.received == [], srv.describe()
    assert len(srv.main.received) == 1, srv.describe()


def loop_stopped(exc: X402AgentError, srv: Servers) -> None:
    assert len(srv.main.received) == 6, srv.describe()  # first request + max_redirects (5)


CHALLENGE_ERR = ChallengeError
NO_OFFER = NoAcceptableRequirement
SOLANA = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"

HOSTILE_CASES: dict[str, Case] = {
    # -- undecodable or oversized challenges
    "402_no_header_non_json_body": Case(
        on_402(lambda url: Canned.make(402, {"content-type": "text/html"}, "<h1>pay up</h1>")),
        CHALLENGE_ERR,
        "undecodable_challenge",
    ),
    "402_no_header_empty_body": Case(
        on_402(lambda url: Canned.make(402)), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_not_base64": Case(
        on_402(lambda url: header_402("%%%not base64 at all%%%")), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_base64_of_non_json": Case(
        on_402(lambda url: header_402(b64("pay me, not JSON"))), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_base64_of_binary": Case(
        on_402(lambda url: header_402(b64(b"\xff\xfe\x00\x01"))), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_json_array": Case(
        on_402(lambda url: header_402([v2_doc(url)])), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_json_null": Case(
        on_402(lambda url: header_402(b64("null"))), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "header_twice": Case(
        on_402(
            lambda url: Canned.make(
                402,
                [
                    (PAYMENT_REQUIRED_HEADER, b64(v2_doc(url))),
                    (PAYMENT_REQUIRED_HEADER, b64(v2_doc(url, [v2_offer(payTo=EVIL)]))),
                ],
            )
        ),
        CHALLENGE_ERR,
        "undecodable_challenge",
    ),
    "header_over_16KiB": Case(
        on_402(lambda url: header_402(v2_doc(url, error="x" * 17_000))), CHALLENGE_ERR, "oversized_challenge"
    ),
    "body_over_64KiB": Case(
        on_402(lambda url: body_402(v1_doc(url, error="x" * 70_000))), CHALLENGE_ERR, "oversized_challenge"
    ),
    "body_json_array": Case(
        on_402(lambda url: body_402([v1_doc(url)])), CHALLENGE_ERR, "undecodable_challenge"
    ),
    # -- versions
    "header_x402Version_1": Case(
        on_402(lambda url: header_402(v1_doc(url))), CHALLENGE_ERR, "unsupported_x402_version"
    ),
    "header_x402Version_3": Case(
        on_402(lambda url: header_402(v2_doc(url, x402Version=3))), CHALLENGE_ERR, "unsupported_x402_version"
    ),
    "body_x402Version_3": Case(
        on_402(lambda url: body_402(v1_doc(url, x402Version=3))), CHALLENGE_ERR, "unsupported_x402_version"
    ),
    "body_without_x402Version": Case(
        on_402(lambda url: body_402(v1_doc(url, x402Version=_DROP))),
        CHALLENGE_ERR,
        "unsupported_x402_version",
    ),
    "body_x402Version_string": Case(
        on_402(lambda url: body_402(v1_doc(url, x402Version="1"))), CHALLENGE_ERR, "unsupported_x402_version"
    ),
    "body_x402Version_true": Case(
        on_402(lambda url: body_402(v1_doc(url, x402Version=True))), CHALLENGE_ERR, "unsupported_x402_version"
    ),
    "header_without_x402Version": Case(
        on_402(lambda url: header_402(v2_doc(url, x402Version=_DROP))),
        CHALLENGE_ERR,
        "unsupported_x402_version",
    ),
    "header_x402Version_string": Case(
        on_402(lambda url: header_402(v2_doc(url, x402Version="2"))),
        CHALLENGE_ERR,
        "unsupported_x402_version",
    ),
    # -- the accepts list
    "empty_accepts": Case(on_402(lambda url: header_402(v2_doc(url, []))), CHALLENGE_ERR, "empty_challenge"),
    "empty_accepts_v1_body": Case(
        on_402(lambda url: body_402(v1_doc(url, []))), CHALLENGE_ERR, "empty_challenge"
    ),
    "33_offers": Case(
        on_402(lambda url: header_402(v2_doc(url, [v2_offer()] * 33))), CHALLENGE_ERR, "oversized_challenge"
    ),
    "accepts_not_a_list": Case(
        on_402(lambda url: header_402(v2_doc(url, accepts=v2_offer()))),
        CHALLENGE_ERR,
        "undecodable_challenge",
    ),
    "accepts_missing": Case(
        on_402(lambda url: header_402(v2_doc(url, accepts=_DROP))), CHALLENGE_ERR, "undecodable_challenge"
    ),
    "offer_without_payTo": offer_case(CHALLENGE_ERR, "undecodable_challenge", payTo=_DROP),
    "extra_not_an_object": offer_case(CHALLENGE_ERR, "undecodable_challenge", extra="USD Coin"),
    # -- amounts
    "amount_negative": offer_case(CHALLENGE_ERR, "invalid_amount", amount="-1000"),
    "amount_fraction": offer_case(CHALLENGE_ERR, "invalid_amount", amount="1.5"),
    "amount_exponent": offer_case(CHALLENGE_ERR, "invalid_amount", amount="1e3"),
    "amount_hex": offer_case(CHALLENGE_ERR, "invalid_amount", amount="0x10"),
    "amount_leading_space": offer_case(CHALLENGE_ERR, "invalid_amount", amount=" 1000"),
    "amount_trailing_newline": offer_case(CHALLENGE_ERR, "invalid_amount", amount="1000\n"),
    "amount_underscore": offer_case(CHALLENGE_ERR, "invalid_amount", amount="1_000"),
    "amount_fullwidth_digits": offer_case(CHALLENGE_ERR, "invalid_amount", amount="\uff11\uff10\uff10\uff10"),
    "amount_empty": offer_case(CHALLENGE_ERR, "invalid_amount", amount=""),
    "amount_zero": offer_case(CHALLENGE_ERR, "invalid_amount", amount="0"),
    "amount_2^256_overflow": offer_case(CHALLENGE_ERR, "amount_overflow", amount=str(2**256)),
    # Longer than any uint256 (79+ digits): refused by the digit-count check before the
    # overflow check, hence invalid_amount rather than amount_overflow.
    "amount_100_digits": offer_case(CHALLENGE_ERR, "amount_overflow", amount="9" * 100),
    "amount_json_number": offer_case(CHALLENGE_ERR, "undecodable_challenge", amount=PRICE),
    "amount_2^255_above_cap": offer_case(PolicyDenied, "per_request_cap_exceeded", amount=str(2**255)),
    "amount_just_above_cap": offer_case(PolicyDenied, "per_request_cap_exceeded", amount=str(CAP + 1)),
    "v1_amount_negative": Case(
        on_402(lambda url: body_402(v1_doc(url, [v1_offer(url, maxAmountRequired="-1")]))),
        CHALLENGE_ERR,
        "invalid_amount",
    ),
    # -- what is offered
    "unknown_network_solana": offer_case(
        NO_OFFER,
        "unknown_network",
        network=SOLANA,
        asset="EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
        payTo="9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
    ),
    "network_uppercase_prefix": offer_case(NO_OFFER, "unknown_network", network="EIP155:84532"),
    "network_leading_zero": offer_case(NO_OFFER, "unknown_network", network="eip155:084532"),
    "network_mainnet_not_in_policy": offer_case(NO_OFFER, "unknown_asset", network="eip155:1"),
    "v1_network_base_mainnet": Case(
        on_402(lambda url: body_402(v1_doc(url, [v1_offer(url, network="base")]))), NO_OFFER, "unknown_asset"
    ),
    # upto is a scheme we pay, but only where the policy's asset lists it (default: exact only)
    "scheme_upto_not_in_policy": offer_case(PolicyDenied, "scheme_not_allowed", scheme="upto"),
    "scheme_uppercase": offer_case(NO_OFFER, "unsupported_scheme", scheme="EXACT"),
    "transfer_method_unknown": offer_case(
        NO_OFFER,
        "unsupported_scheme",
        extra={"name": "USD Coin", "version": "2", "assetTransferMethod": "eip2612"},
    ),
    "unknown_asset": offer_case(NO_OFFER, "unknown_asset", asset=OTHER_TOKEN),
    "token_name_mismatch": offer_case(
        NO_OFFER, "asset_domain_mismatch", extra={"name": "Fake USD", "version": "2"}
    ),
    "token_version_mismatch": offer_case(
        NO_OFFER, "asset_domain_mismatch", extra={"name": "USD Coin", "version": "1"}
    ),
    "token_name_not_a_string": offer_case(
        NO_OFFER, "asset_domain_mismatch", extra={"name": 1, "version": "2"}
    ),
    "payTo_not_an_address": offer_case(CHALLENGE_ERR, "invalid_address", payTo="alice.eth"),
    "payTo_zero_address": offer_case(CHALLENGE_ERR, "invalid_address", payTo=ZERO),
    "payTo_19_bytes": offer_case(CHALLENGE_ERR, "invalid_address", payTo="0x" + "11" * 19),
    "asset_zero_address": offer_case(CHALLENGE_ERR, "invalid_address", asset=ZERO),
    "maxTimeoutSeconds_0": offer_case(CHALLENGE_ERR, "invalid_timeout", maxTimeoutSeconds=0),
    "maxTimeoutSeconds_negative": offer_case(CHALLENGE_ERR, "invalid_timeout", maxTimeoutSeconds=-60),
    "maxTimeoutSeconds_over_a_day": offer_case(CHALLENGE_ERR, "invalid_timeout", maxTimeoutSeconds=86_401),
    "maxTimeoutSeconds_text": offer_case(CHALLENGE_ERR, "undecodable_challenge", maxTimeoutSeconds="soon"),
    # A single malformed offer poisons the whole challenge, even next to a valid one.
    "one_malformed_offer_among_valid": Case(
        on_402(lambda url: header_402(v2_doc(url, [v2_offer(), v2_offer(amount="1.5")]))),
        CHALLENGE_ERR,
        "invalid_amount",
    ),
    # -- whose resource is this?
    "resource_url_other_host": Case(
        on_402(lambda url: header_402(v2_doc(url, resource={"url": "https://api.victim.example" + PATH}))),
        CHALLENGE_ERR,
        "resource_mismatch",
    ),
    "resource_url_relative": Case(
        on_402(lambda url: header_402(v2_doc(url, resource={"url": PATH}))),
        CHALLENGE_ERR,
        "resource_mismatch",
    ),
    "v1_resource_other_host": Case(
        on_402(lambda url: body_402(v1_doc(url, [v1_offer("https://api.victim.example" + PATH)]))),
        CHALLENGE_ERR,
        "resource_mismatch",
    ),
    # Two offers naming two foreign resources must not switch the resource check off.
    "v1_two_foreign_resources": Case(
        on_402(
            lambda url: body_402(
                v1_doc(url, [v1_offer("https://a.victim.example/x"), v1_offer("https://b.victim.example/y")])
            )
        ),
        CHALLENGE_ERR,
        "resource_mismatch",
    ),
    # -- redirects before the 402
    "redirect_302_other_origin": Case(
        redirect_to(lambda s: s.other.url(PATH)),
        RedirectRefused,
        "cross_origin_redirect",
        check=other_origin_untouched,
    ),
    "redirect_307_other_origin": Case(
        redirect_to(lambda s: s.other.url(PATH), 307),
        RedirectRefused,
        "cross_origin_redirect",
        check=other_origin_untouched,
    ),
    "redirect_scheme_relative": Case(
        redirect_to(lambda s: "//" + s.other.origin.split("//")[1] + PATH),
        RedirectRefused,
        "cross_origin_redirect",
        check=other_origin_untouched,
    ),
    "redirect_userinfo_trick": Case(
        redirect_to(lambda s: f"http://127.0.0.1:{s.main.port}@localhost:{s.other.port}{PATH}"),
        RedirectRefused,
        "cross_origin_redirect",
        check=other_origin_untouched,
    ),
    "redirect_same_port_other_hostname": Case(
        redirect_to(lambda s: f"http://localhost:{s.main.port}{PATH}"),
        RedirectRefused,
        "cross_origin_redirect",
    ),
    "redirect_to_file_url": Case(
        redirect_to(lambda s: "file:///etc/passwd"), RedirectRefused, "cross_origin_redirect"
    ),
    "redirect_loop": Case(redirect_loop, RedirectRefused, "too_many_redirects", check=loop_stopped),
    # -- the caller's max price
    "price_above_max_price": Case(
        on_402(valid_v2_402),
        PolicyDenied,
        "price_above_max",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("0.0005")),
    ),
    "max_price_other_symbol": Case(
        on_402(valid_v2_402),
        PolicyDenied,
        "max_price_asset_mismatch",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("0.01 EURC")),
    ),
    # A ceiling finer than the token's 6 decimals rounds down to 0 atomic units: refused.
    "max_price_finer_than_token": Case(
        on_402(valid_v2_402),
        PolicyDenied,
        "price_above_max",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("0.0009999")),
    ),
    "max_price_invalid_text": Case(
        None,
        InvalidRequest,
        "invalid_max_price",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("abc")),
    ),
    "max_price_exponent": Case(
        None,
        InvalidRequest,
        "invalid_max_price",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("1e3")),
    ),
    "max_price_negative": Case(
        None,
        InvalidRequest,
        "invalid_max_price",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("-1")),
    ),
    # -- the request itself (refused before any network access)
    "url_file": Case(
        None, InvalidRequest, "unsupported_url", request=lambda url: FetchRequest(url="file:///etc/passwd")
    ),
    "url_ftp": Case(
        None, InvalidRequest, "unsupported_url", request=lambda url: FetchRequest(url="ftp://127.0.0.1/paid")
    ),
    "url_without_host": Case(
        None, InvalidRequest, "unsupported_url", request=lambda url: FetchRequest(url="http:///paid")
    ),
    "url_javascript": Case(
        None, InvalidRequest, "unsupported_url", request=lambda url: FetchRequest(url="javascript:alert(1)")
    ),
    "header_value_crlf_injection": Case(
        None,
        InvalidRequest,
        "header_injection",
        request=lambda url: FetchRequest(url=url, headers={"X-Note": "a\r\nPAYMENT-SIGNATURE: stolen"}),
    ),
    "header_name_newline": Case(
        None,
        InvalidRequest,
        "header_injection",
        request=lambda url: FetchRequest(url=url, headers={"X-A\nX-B": "v"}),
    ),
    "header_value_nul": Case(
        None,
        InvalidRequest,
        "header_injection",
        request=lambda url: FetchRequest(url=url, headers={"X-A": "a\0b"}),
    ),
    "header_value_non_ascii": Case(
        None,
        InvalidRequest,
        "invalid_header",
        request=lambda url: FetchRequest(url=url, headers={"X-Name": "Zo\u00eb"}),
    ),
    "header_name_with_colon": Case(
        None,
        InvalidRequest,
        "invalid_header",
        request=lambda url: FetchRequest(url=url, headers={"X-A:B": "v"}),
    ),
    "caller_payment_signature": Case(
        None,
        InvalidRequest,
        "reserved_header",
        request=lambda url: FetchRequest(url=url, headers={"PAYMENT-SIGNATURE": "eyJ4NDAyVmVyc2lvbiI6Mn0="}),
    ),
    "caller_x_payment_lowercase": Case(
        None,
        InvalidRequest,
        "reserved_header",
        request=lambda url: FetchRequest(url=url, headers={"x-payment": "eyJ4NDAyVmVyc2lvbiI6MX0="}),
    ),
    "method_trace": Case(
        None, InvalidRequest, "invalid_method", request=lambda url: FetchRequest(url=url, method="TRACE")
    ),
    "method_connect": Case(
        None, InvalidRequest, "invalid_method", request=lambda url: FetchRequest(url=url, method="CONNECT")
    ),
    # -- several offers, none acceptable
    "all_offers_unpayable": Case(
        on_402(
            lambda url: header_402(
                v2_doc(
                    url,
                    [
                        v2_offer(scheme="deferred"),
                        v2_offer(network=SOLANA, asset="So1", payTo="So1"),
                        v2_offer(asset=OTHER_TOKEN),
                        v2_offer(extra={"name": "Fake USD", "version": "2"}),
                        v2_offer(
                            extra={"name": "USD Coin", "version": "2", "assetTransferMethod": "eip2612"}
                        ),
                    ],
                )
            )
        ),
        NO_OFFER,
        "no_acceptable_requirement",
        check=rejected_reasons(
            [
                "unsupported_scheme",
                "unknown_network",
                "unknown_asset",
                "asset_domain_mismatch",
                "unsupported_scheme",
            ]
        ),
    ),
    "all_offers_refused_one_by_policy": Case(
        on_402(
            lambda url: header_402(
                v2_doc(
                    url,
                    [
                        v2_offer(scheme="deferred"),
                        v2_offer(amount=str(CAP + 1)),
                        v2_offer(asset=OTHER_TOKEN),
                    ],
                )
            )
        ),
        PolicyDenied,
        "per_request_cap_exceeded",
        check=rejected_reasons(["unsupported_scheme", "per_request_cap_exceeded", "unknown_asset"]),
    ),
    "all_offers_above_cap": Case(
        on_402(
            lambda url: header_402(
                v2_doc(
                    url,
                    [
                        v2_offer(amount=str(CAP + 1)),
                        v2_offer(amount=str(CAP * 10), payTo=PAY_TO_B),
                    ],
                )
            )
        ),
        PolicyDenied,
        "per_request_cap_exceeded",
        check=rejected_reasons(["per_request_cap_exceeded", "per_request_cap_exceeded"]),
    ),
    "cheap_offer_above_max_price_other_unpayable": Case(
        on_402(
            lambda url: header_402(
                v2_doc(url, [v2_offer(amount="600"), v2_offer(amount="1", scheme="deferred")])
            )
        ),
        PolicyDenied,
        "price_above_max",
        request=lambda url: FetchRequest(url=url, max_price=PriceLimit.parse("0.0005 USDC")),
        check=rejected_reasons(["price_above_max", "unsupported_scheme"]),
    ),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", list(HOSTILE_CASES.values()), ids=list(HOSTILE_CASES))
def test_hostile_input_is_refused_before_signing(case: Case, driver: str, env: Env, hostile: Servers) -> None:
    if case.setup is not None:
        case.setup(hostile)

    exc = expect_refusal(lambda: env.fetch(case.request(hostile.url), driver))

    assert_error(exc, case.error, case.reason)
    assert_nothing_paid(env, hostile)
    if case.setup is None:
        received_nothing(exc, hostile)
    if case.check is not None:
        case.check(exc, hostile)
    elif isinstance(exc, NoAcceptableRequirement | PolicyDenied):
        assert [r["reason"] for r in exc.details["rejected"]] == [case.reason], exc.to_dict()


def test_there_are_enough_hostile_cases() -> None:
    assert len(HOSTILE_CASES) >= 30


# ---- signer misbehaviour ---------------------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_signer_that_changes_payee_is_caught_before_sending(
    tmp_path: Path, hostile: Servers, driver: str
) -> None:
    env = make_env(tmp_path, hostile, CountingSigner(tamper=lambda a: dataclasses.replace(a, to=EVIL)))
    hostile.main.program(PATH, valid_v2_402(hostile.url), Canned.make(200, body="never"))

    exc = expect_refusal(lambda: env.fetch(FetchRequest(url=hostile.url), driver))

    assert_error(exc, PaymentMismatch, "signed_payment_mismatch")
    assert env.signer.count == 1  # it signed, but the signature never left
    assert hostile.all_payment_headers() == [], hostile.describe()
    assert len(hostile.main.received) == 1
    [row] = env.rows()
    assert row.state == PaymentState.RELEASED and row.payment_header is None
    assert json.loads(row.evidence_json or "{}") == {"released": "not_sent"}


@pytest.mark.parametrize("driver", DRIVERS)
def test_signer_failure_releases_the_reservation(tmp_path: Path, hostile: Servers, driver: str) -> None:
    env = make_env(tmp_path, hostile, CountingSigner(fail=RuntimeError("device unplugged")))
    hostile.main.program(PATH, valid_v2_402(hostile.url))

    with pytest.raises(RuntimeError, match="device unplugged"):
        env.fetch(FetchRequest(url=hostile.url), driver)

    assert hostile.all_payment_headers() == [], hostile.describe()
    assert [r.state for r in env.rows()] == [PaymentState.RELEASED]


# ---- several offers, one acceptable ----------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_only_acceptable_offer_is_chosen(env: Env, hostile: Servers, driver: str) -> None:
    offers = [
        v2_offer(scheme="upto", amount="1"),
        v2_offer(network=SOLANA, asset="So1", payTo="So1", amount="1"),
        v2_offer(asset=OTHER_TOKEN, amount="1"),
        v2_offer(amount=str(CAP + 1)),
        v2_offer(extra={"name": "Fake USD", "version": "2"}, amount="1"),
        v2_offer(payTo=PAY_TO_B, amount="2000"),  # the only acceptable one
    ]
    hostile.main.program(PATH, header_402(v2_doc(hostile.url, offers)), Canned.make(200, body="ok"))

    outcome = env.fetch(FetchRequest(url=hostile.url), driver)

    assert outcome.status == 200 and env.signer.count == 1, hostile.describe()
    [(_, name, value)] = hostile.main.payment_headers()
    assert name == PAYMENT_SIGNATURE_HEADER.lower()
    sent, authorization, _ = decode_authorization(value)
    assert isinstance(sent, PaymentPayload)
    assert (sent.accepted.pay_to, sent.accepted.amount) == (PAY_TO_B, "2000")
    assert (authorization.to, authorization.value) == (PAY_TO_B, 2000)
    [row] = env.rows()
    assert (row.pay_to, row.amount) == (PAY_TO_B, 2000)


def test_the_cheapest_acceptable_offer_is_chosen_ties_in_server_order(env: Env, hostile: Servers) -> None:
    offers = [
        v2_offer(amount="5000"),
        v2_offer(amount="2000", payTo=PAY_TO_B),
        v2_offer(amount="2000", payTo=PAY_TO_C),
    ]
    hostile.main.program(PATH, header_402(v2_doc(hostile.url, offers)), Canned.make(200, body="ok"))
    env.fetch(FetchRequest(url=hostile.url))
    [row] = env.rows()
    assert (row.pay_to, row.amount) == (PAY_TO_B, 2000)


# ---- paid, not delivered ---------------------------------------------------------------------
def _again_402(srv: Servers) -> Canned:
    return valid_v2_402(srv.url)


# What each answer to a paid request is called: nothing here proves money moved (no
# settlement header, no chain), so a refusal or a failure is not "paid_not_delivered"; a lost
# connection may still settle.
PAID_NOT_DELIVERED: dict[str, tuple[Callable[[Servers], Canned], int | None, type[X402AgentError], str]] = {
    "402_again_after_payment": (_again_402, 402, PaymentRejected, "payment_rejected"),
    "500_after_payment": (
        lambda srv: Canned.make(500, body="oops"),
        500,
        PaymentNotSettled,
        "payment_not_settled",
    ),
    "redirect_after_payment": (
        lambda srv: Canned.make(302, {"location": srv.other.url(PATH)}),
        302,
        PaymentNotSettled,
        "payment_not_settled",
    ),
    "connection_dropped_mid_body": (
        lambda srv: Canned.make(200, abort_after_first_chunk=True),
        None,
        PaidNotDelivered,
        "paid_not_delivered",
    ),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", list(PAID_NOT_DELIVERED))
def test_paid_but_not_delivered_stays_counted(name: str, driver: str, env: Env, hostile: Servers) -> None:
    build, status, error, reason = PAID_NOT_DELIVERED[name]
    hostile.main.program(PATH, valid_v2_402(hostile.url), build(hostile))

    exc = expect_refusal(lambda: env.fetch(FetchRequest(url=hostile.url), driver))

    assert_error(exc, error, reason)
    assert env.signer.count == 1
    sent = hostile.main.payment_headers()
    assert [k for _, k, _ in sent] == [PAYMENT_SIGNATURE_HEADER.lower()], hostile.describe()
    assert hostile.other.received == [], "the paid request must never follow a redirect"
    [row] = env.rows()
    assert row.state == PaymentState.UNKNOWN and row.state in COUNTED_STATES
    assert exc.details["payment_id"] == row.id
    assert row.payment_header == sent[0][2]
    evidence = json.loads(row.evidence_json or "{}")
    if status is None:
        assert set(evidence) == {"transport_error", "cause"}, evidence
    else:
        assert (evidence["status"], evidence["delivered"], row.response_status) == (status, False, status), (
            evidence
        )
        assert exc.details["status"] == status


REFUSALS: dict[str, tuple[Callable[[Servers], tuple[Canned, Canned]], str]] = {
    "v2_header_error": (
        lambda srv: (
            valid_v2_402(srv.url),
            header_402(v2_doc(srv.url, error="invalid_exact_evm_payload_signature\r\n\x07")),
        ),
        "invalid_exact_evm_payload_signature",
    ),
    "v1_body_error": (
        lambda srv: (body_402(v1_doc(srv.url)), body_402(v1_doc(srv.url, error="insufficient_funds"))),
        "insufficient_funds",
    ),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", list(REFUSALS))
def test_a_402_to_the_paid_request_reports_the_servers_reason(
    name: str, driver: str, env: Env, hostile: Servers
) -> None:
    build, stated = REFUSALS[name]
    hostile.main.program(PATH, *build(hostile))

    exc = expect_refusal(lambda: env.fetch(FetchRequest(url=hostile.url), driver))

    assert_error(exc, PaymentRejected, "payment_rejected")
    # The server's words, printable and short; nothing was paid: no "paid" claim.
    assert exc.details["server_reason"] == stated
    assert f"the server refused the payment: {stated};" in exc.message
    assert "paid," not in exc.message
    [row] = env.rows()
    assert row.state == PaymentState.UNKNOWN and exc.details["expires_at"] == row.valid_before
    assert json.loads(row.evidence_json or "{}")["server_reason"] == stated


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_paid_body_over_the_memory_limit_is_kept_in_the_store(
    driver: str, env: Env, hostile: Servers, tmp_path: Path
) -> None:
    env.payer.content_store = ContentStore(tmp_path / "content")
    size = MAX_RESPONSE_BYTES + 1
    hostile.main.program(
        PATH,
        valid_v2_402(hostile.url),
        Canned.make(200, {"content-type": "application/octet-stream"}, stream_bytes=size),
    )

    outcome = env.fetch(FetchRequest(url=hostile.url), driver)

    assert outcome.status == 200 and outcome.stored is not None
    assert outcome.stored.size == size and outcome.stored.complete and not outcome.complete
    assert len(outcome.content or b"") == INLINE_BYTES
    [row] = env.rows()  # delivered; no settlement header: unknown, still counted
    assert row.state == PaymentState.UNKNOWN and row.delivered
    assert json.loads(row.evidence_json or "{}")["body_sha256"] == outcome.stored.sha256
    with outcome.open_body() as body:
        assert hashlib.sha256(body.read()).hexdigest() == outcome.stored.sha256


def test_a_paid_body_past_the_policy_cap_keeps_its_first_part(
    env: Env, hostile: Servers, tmp_path: Path, _servers: Servers
) -> None:
    cap = 3 * 1024 * 1024 + 5
    capped = opted_in(POLICY, _servers).model_copy(update={"max_paid_body_bytes": cap})
    env.payer.gate = PolicyGate(capped, env.ledger)
    env.payer.content_store = ContentStore(tmp_path / "content")
    hostile.main.program(
        PATH,
        valid_v2_402(hostile.url),
        Canned.make(200, {"content-type": "application/octet-stream"}, stream_bytes=8 * 1024 * 1024),
    )

    outcome = env.fetch(FetchRequest(url=hostile.url))

    stored = outcome.stored
    assert stored is not None and stored.size == cap and not stored.complete
    [row] = env.rows()  # what was paid for is kept, and the receipt says it was cut
    evidence = json.loads(row.evidence_json or "{}")
    assert evidence["body_cut_at_bytes"] == cap and evidence["body_sha256"] == stored.sha256
    assert hashlib.sha256(stored.read()).hexdigest() == stored.sha256


# ---- settlement that is not ours -------------------------------------------------------------
SETTLEMENT_LIES: dict[str, dict[str, Any]] = {
    "payer_differs": {"payer": EVIL},
    "amount_differs": {"amount": str(PRICE + 1)},
    "network_differs": {"network": "eip155:8453"},
    "all_three_differ": {"payer": EVIL, "amount": "1", "network": "eip155:1"},
    "settlement_failed": {"success": False, "error_reason": "insufficient_funds"},
    "no_transaction_hash": {"transaction": "pending"},
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("lie", list(SETTLEMENT_LIES))
def test_settlement_mismatch_stays_counted(lie: str, driver: str, env: Env, hostile: Servers) -> None:
    header = settle_header(env.signer.address, **SETTLEMENT_LIES[lie])
    hostile.main.program(
        PATH, valid_v2_402(hostile.url), Canned.make(200, {PAYMENT_RESPONSE_HEADER: header}, "content")
    )

    exc = expect_refusal(lambda: env.fetch(FetchRequest(url=hostile.url), driver))

    assert_error(exc, SettlementMismatch, "settlement_mismatch")
    assert env.signer.count == 1 and len(hostile.main.payment_headers()) == 1
    [row] = env.rows()
    assert row.state == PaymentState.UNKNOWN, row
    assert exc.details["payment_id"] == row.id
    evidence = json.loads(row.evidence_json or "{}")
    assert evidence["status"] == 200 and evidence["mismatch"], evidence


@pytest.mark.parametrize("value", ["not base64 !!", b64("{}"), b64([1, 2]), "A" * 9000])
def test_unreadable_settlement_header_is_no_evidence(value: str, env: Env, hostile: Servers) -> None:
    hostile.main.program(
        PATH, valid_v2_402(hostile.url), Canned.make(200, {PAYMENT_RESPONSE_HEADER: value}, "content")
    )
    outcome = env.fetch(FetchRequest(url=hostile.url))
    assert outcome.status == 200 and outcome.payment is not None
    # Delivered, but nothing proves settlement: counted as unknown, never settled.
    assert outcome.payment.state == PaymentState.UNKNOWN and outcome.payment.settlement_tx is None
    assert json.loads(outcome.payment.evidence_json or "{}")["settlement"] is None


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_dropped_unpaid_get_is_sent_once_more(env: Env, hostile: Servers, driver: str) -> None:
    """The server drops the connection before the 402: nothing was paid, a GET is sent again
    once; a POST is not (it may have had an effect)."""
    main = hostile.main
    main.program(
        "/drop",
        Canned.make(200, abort_after_first_chunk=True),
        Canned.make(200, {"content-type": "text/plain"}, b"second try"),
    )
    outcome = env.fetch(FetchRequest(url=main.url("/drop")), driver)
    assert outcome.status == 200 and outcome.content == b"second try"
    main.program(
        "/drop-post", Canned.make(200, abort_after_first_chunk=True), Canned.make(200, body=b"never")
    )
    with pytest.raises(UpstreamError):
        env.fetch(FetchRequest(url=main.url("/drop-post"), method="POST", body=b"x"), driver)
    assert env.signer.count == 0 and env.counted() == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_denied_host_is_never_contacted(tmp_path: Path, hostile: Servers, driver: str) -> None:
    """Host lists are checked before the first request: an agent cannot use the payment tool
    to reach a host the policy refuses (loopback here), not even for a free resource."""
    env = make_env(tmp_path, hostile)
    denying = opted_in(POLICY, hostile).model_copy(update={"hosts": HostLists(deny=("127.0.0.1",))})
    env.payer.gate = PolicyGate(denying, env.ledger)
    hostile.main.program("/free", Canned.make(200, body=b"internal"))
    with pytest.raises(PolicyDenied) as refused:
        env.fetch(FetchRequest(url=hostile.main.url("/free")), driver)
    assert refused.value.reason == "host_denied"
    assert hostile.main.received == []
    env.ledger.close()
