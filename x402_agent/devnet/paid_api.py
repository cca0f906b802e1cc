"""The x402 v2 paid HTTP API, built only from the official x402 Python SDK.

FastAPI + the SDK's ``payment_middleware``; the resource server is handed the
SDK's own ``x402Facilitator`` object directly (it satisfies the SDK's
``FacilitatorClient`` protocol: ``verify``/``settle``/``get_supported``), so
verification and settlement happen in-process against anvil without a
facilitator HTTP hop. Prices are ``AssetAmount`` values: exact atomic integers
of our locally deployed tokens, with their EIP-712 domain in ``extra``.

The server runs in a uvicorn thread on a socket we bind to port 0 ourselves,
so the port is known before start and nothing else can grab it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request, Response
from x402 import AssetAmount, x402Facilitator, x402ResourceServer
from x402.extensions.bazaar import OutputConfig, declare_discovery_extension
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER, declare_payment_identifier_extension
from x402.extensions.sign_in_with_x import (
    CreateSIWxResourceServerExtensionOptions,
    DeclareSIWxOptions,
    SIWxStorage,
    SIWxVerifyOptions,
    create_siwx_resource_server_extension,
    declare_siwx_extension,
)
from x402.http.middleware.fastapi import payment_middleware, set_settlement_overrides
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import (
    ExactEvmFacilitatorScheme,
    ExactEvmSchemeConfig,
    ExactEvmServerScheme,
    register_exact_evm_facilitator,
)
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme, UptoEvmServerScheme

from .info import PriceInfo, RouteInfo
from .payment_id_cache import PaymentIdCache
from .siwx_storage import ExpiringSIWxStorage
from .usdc import TokenInfo

# The most the metered (upto) route may charge for one request: what the payer signs for.
METERED_MAXIMUM = 10_000
# How long one payment for a sign-in-with-x route entitles its payer to sign in instead.
SIWX_ENTITLEMENT_SECONDS = 3600
# How long a sign-in message the server offers stays valid (the SDK's expirationTime).
SIWX_MESSAGE_SECONDS = 300
SIWX_STATEMENT = "Sign in to the x402 local world to use what you paid for"


@dataclass(frozen=True)
class ChainSettlement:
    """A chain the in-process facilitator settles on, with the key that pays its gas."""

    network: str
    rpc_url: str
    facilitator_key: str
    # Factories the facilitator may call to deploy a counterfactual payer (ERC-6492).
    account_factories: tuple[str, ...] = ()


def v2_routes(
    base_url: str,
    *,
    network: str,
    usdc: TokenInfo,
    eurc: TokenInfo,
    alt_network: str,
    alt_usdc: TokenInfo,
    payees: dict[str, str],
) -> tuple[RouteInfo, ...]:
    """The v2 server's catalogue: which route costs what, paid to whom."""

    def route(method: str, path: str, description: str, *accepts: PriceInfo) -> RouteInfo:
        return RouteInfo(method, path, base_url + path, 2 if accepts else None, accepts, description)

    def usdc_price(amount: int, payee: str = "api") -> PriceInfo:
        return PriceInfo(network, usdc, amount, payees[payee])

    return (
        route("GET", "/v2/weather", "Current weather (JSON)", usdc_price(1_000)),
        route("GET", "/v2/report", "Market report (JSON)", usdc_price(10_000)),
        route("POST", "/v2/summarize", "Summary of the posted body", usdc_price(5_000)),
        route("GET", "/v2/premium", "Premium data", usdc_price(250_000, "premium")),
        route("GET", "/v2/image", "A PNG image", usdc_price(2_000)),
        route(
            "GET",
            "/v2/multi",
            "Several ways to pay",
            PriceInfo(network, eurc, 1_500, payees["multi"]),
            PriceInfo(network, usdc, 2_000, payees["multi"]),
            PriceInfo(network, usdc, 3_000, payees["multi_alt"]),
            PriceInfo(alt_network, alt_usdc, 2_500, payees["multi"]),
        ),
        route(
            "GET",
            "/v2/permit2",
            "Weather, paid with exact over Permit2 only",
            PriceInfo(network, usdc, 1_000, payees["permit2"], transfer_method="permit2"),
        ),
        route(
            "GET",
            "/v2/metered",
            "Metered data: charges ?used= atomic units (the maximum when absent), up to the maximum",
            PriceInfo(network, usdc, METERED_MAXIMUM, payees["metered"], scheme="upto"),
        ),
        RouteInfo(
            "GET",
            "/v2/idempotent",
            base_url + "/v2/idempotent",
            2,
            (usdc_price(1_000, "idempotent"),),
            "Weather, with the payment-identifier extension: a repeated id gets the cached answer",
            payment_identifier=True,
        ),
        RouteInfo(
            "GET",
            "/v2/siwx",
            base_url + "/v2/siwx",
            2,
            (usdc_price(1_000, "siwx"),),
            "Weather, with sign-in-with-x: who paid signs in for an hour instead of paying again",
            sign_in=True,
        ),
        route("GET", "/free", "Free, no payment"),
    )


def build_facilitators(main: ChainSettlement, alt: ChainSettlement) -> list[x402Facilitator]:
    """One SDK facilitator per chain: exact EVM (EIP-3009 and Permit2) and upto on the main chain
    (exact also under the v1 names), exact on the alt chain.

    Not one facilitator with two schemes: the SDK derives the wildcard pattern
    ``eip155:*`` from any single-namespace network list and matches schemes in
    registration order, so the first EVM scheme would claim both chains and
    settle alt-chain payments on the wrong RPC. The resource server, by contrast,
    maps each facilitator's exact ``/supported`` networks, so a list routes right.
    """
    main_facilitator = x402Facilitator()
    # One signer for both schemes: it hands out the facilitator key's transaction nonces.
    main_signer = FacilitatorWeb3Signer(main.facilitator_key, main.rpc_url)
    register_exact_evm_facilitator(
        main_facilitator,
        main_signer,
        main.network,
        eip6492_allowed_factories=list(main.account_factories),
    )
    main_facilitator.register([main.network], UptoEvmFacilitatorScheme(main_signer))
    alt_facilitator = x402Facilitator()
    alt_signer = FacilitatorWeb3Signer(alt.facilitator_key, alt.rpc_url)
    # register() rather than the helper, which would also claim every v1 name for this RPC.
    alt_facilitator.register([alt.network], ExactEvmFacilitatorScheme(alt_signer, ExactEvmSchemeConfig()))
    return [main_facilitator, alt_facilitator]


def create_app(
    routes: Sequence[RouteInfo],
    facilitators: list[x402Facilitator],
    *,
    siwx_storage: SIWxStorage | None = None,
    rpc_url: str | None = None,
) -> FastAPI:
    """FastAPI app whose paid routes are guarded by the SDK's payment middleware.

    Routes marked ``sign_in`` get the SDK's sign-in-with-x server extension: its settle hook
    records each payer in ``siwx_storage`` (default: an hour per payment), its request hook
    lets a recorded payer in on a signed message. ``rpc_url`` lets it check smart-account
    signatures (ERC-1271) on the chain; without it only plain keys sign in."""
    server = x402ResourceServer(list(facilitators))
    _serve_sign_in(server, routes, siwx_storage, rpc_url)
    for network in sorted({price.network for r in routes for price in r.accepts}):
        # The SDK's scheme class is untyped and its payment_flows dict does not
        # match the protocol's declared Mapping type; it is the SDK's own pairing.
        server.register(network, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
    for network in sorted({p.network for r in routes for p in r.accepts if p.scheme == "upto"}):
        server.register(network, UptoEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
    config = {f"{r.method} {r.path}": _route_config(r) for r in routes if r.paid}

    app = FastAPI(title="x402 local world (v2)", docs_url=None, redoc_url=None, openapi_url=None)
    guard = payment_middleware(config, server)

    @app.middleware("http")
    async def x402_guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await guard(request, call_next)

    # Added after the guard, so it runs before it: a repeated payment identifier is answered
    # (or refused as a conflict) without reaching verification and settlement.
    app.middleware("http")(PaymentIdCache(frozenset(r.path for r in routes if r.payment_identifier)))

    _add_handlers(app)
    return app


def _serve_sign_in(
    server: x402ResourceServer,
    routes: Sequence[RouteInfo],
    storage: SIWxStorage | None,
    rpc_url: str | None,
) -> None:
    origins = {urlsplit(r.url)._replace(path="", query="", fragment="").geturl() for r in routes if r.sign_in}
    if not origins:
        return
    (origin,) = origins  # one server, one origin: the domain its sign-in messages name
    provider = None
    if rpc_url is not None:
        from web3 import HTTPProvider

        provider = HTTPProvider(rpc_url)
    options = CreateSIWxResourceServerExtensionOptions(
        origin=origin,
        storage=storage if storage is not None else ExpiringSIWxStorage(SIWX_ENTITLEMENT_SECONDS),
        verify_options=SIWxVerifyOptions(provider=provider),
    )
    server.register_extension(create_siwx_resource_server_extension(options))


def _route_config(route: RouteInfo) -> RouteConfig:
    return RouteConfig(
        accepts=[
            PaymentOption(
                scheme=price.scheme,
                pay_to=price.pay_to,
                price=AssetAmount(amount=str(price.amount), asset=price.asset, extra=price.extra),
                network=price.network,
            )
            for price in route.accepts
        ],
        description=route.description,
        mime_type="image/png" if route.path == "/v2/image" else "application/json",
        extensions=_extensions(route),
    )


# What each paid route tells the Bazaar about how to call it (the SDK's declaration; the HTTP
# method is added per request by the SDK's bazaar server extension).
_DISCOVERY: dict[str, dict[str, Any]] = {
    "/v2/weather": {"output": OutputConfig(example={"city": "Lisbon", "temperature_c": 21.5})},
    "/v2/report": {"output": OutputConfig(example={"title": "Local market report", "items": []})},
    "/v2/summarize": {"input": {"text": "what to summarise"}, "body_type": "text"},
    "/v2/metered": {
        "input": {"used": "1000"},
        "input_schema": {"properties": {"used": {"type": "string", "pattern": "^[0-9]+$"}}},
    },
}


def _extensions(route: RouteInfo) -> dict[str, Any]:
    extensions = declare_discovery_extension(**_DISCOVERY.get(route.path, {}))
    if route.payment_identifier:
        extensions[PAYMENT_IDENTIFIER] = declare_payment_identifier_extension()
    if route.sign_in:
        options = DeclareSIWxOptions(
            statement=SIWX_STATEMENT,
            network=route.accepts[0].network,
            expiration_seconds=SIWX_MESSAGE_SECONDS,
        )
        extensions.update(declare_siwx_extension(options))
    return extensions


def _add_handlers(app: FastAPI) -> None:
    @app.get("/v2/weather")
    async def weather() -> dict[str, object]:
        return {"city": "Lisbon", "temperature_c": 21.5, "conditions": "sunny"}

    @app.get("/v2/report")
    async def report() -> dict[str, object]:
        return {"title": "Local market report", "items": [{"symbol": "USDC", "price": "1.00"}]}

    @app.post("/v2/summarize")
    async def summarize(request: Request) -> dict[str, object]:
        body = await request.body()
        text = body.decode("utf-8", errors="replace")
        return {
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
            "summary": text[:80],
        }

    @app.get("/v2/premium")
    async def premium() -> dict[str, object]:
        return {"tier": "premium", "signal": "buy low, sell high"}

    @app.get("/v2/image")
    async def image() -> Response:
        return Response(content=PNG_IMAGE, media_type="image/png")

    @app.get("/v2/multi")
    async def multi() -> dict[str, object]:
        return {"ok": True, "paid_with": "one of several options"}

    @app.get("/v2/permit2")
    async def permit2_weather() -> dict[str, object]:
        return {"city": "Porto", "temperature_c": 18.0, "paid_with": "permit2"}

    @app.get("/v2/metered")
    async def metered(response: Response, used: int | None = Query(default=None, ge=0)) -> dict[str, object]:
        # The seller reports what was used through the SDK's settlement override; the facilitator
        # settles that (0: nothing on chain) and refuses more than the signed maximum. A bad
        # ``used`` answers 422, and the SDK settles nothing for a failed handler.
        if used is not None:
            set_settlement_overrides(response, {"amount": str(used)})
        return {"metered": True, "used": used}

    @app.get("/v2/idempotent")
    async def idempotent_weather() -> dict[str, object]:
        return {"city": "Faro", "temperature_c": 23.0, "paid_with": "payment-identifier"}

    @app.get("/v2/siwx")
    async def siwx_weather() -> dict[str, object]:
        return {"city": "Braga", "temperature_c": 16.0, "paid_with": "a payment or a sign-in"}

    @app.get("/free")
    async def free() -> dict[str, object]:
        return {"free": True}


def _png(width: int, height: int) -> bytes:
    """A small valid RGB PNG (a gradient), so clients get real binary image bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 32, y * 32, 128)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG_IMAGE = _png(8, 8)
