"""A paid HTTP server built only from the official x402 SDK, for what the world's API lacks.

The SDK's FastAPI ``payment_middleware`` and ``x402ResourceServer`` with an in-process SDK
facilitator settling on the local world's chain (its own freshly funded gas key, so it never
races the world's facilitator for a nonce). Routes: a large body, a redirect after payment (same
origin and another origin), a small document, a handler that waits until the test releases it,
and a route whose token domain version differs from the token's, so the facilitator finds the
signature invalid and refuses it. Every request is logged with whether it carried a payment.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from chain_reads import rpc
from eth_account import Account
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from x402 import AssetAmount, x402Facilitator, x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.served import ServedApp

PRICE = 1_000  # 0.001 USDC
WRONG_VERSION = "99"  # the token's EIP-712 version is not this: signatures for it are invalid
PAYMENT_HEADERS = ("payment-signature", "x-payment")


@dataclass
class ContentServer:
    world: WorldInfo
    big: bytes
    pay_to: str = field(default_factory=lambda: Account.create().address)
    slow_entered: threading.Event = field(default_factory=threading.Event)
    slow_release: threading.Event = field(default_factory=threading.Event)
    slow_settled: threading.Event = field(default_factory=threading.Event)  # answer ready
    log: list[tuple[str, bool]] = field(default_factory=list)  # (path, carried a payment)
    served: ServedApp | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    @property
    def port(self) -> int:
        assert self.served is not None
        return self.served.port

    def start(self) -> ContentServer:
        self.served = ServedApp(name="paid-content").start(self._app())
        return self

    def stop(self) -> None:
        self.slow_release.set()
        if self.served is not None:
            self.served.stop()

    def _app(self) -> FastAPI:
        facilitator_key = Account.create()
        rpc(self.world.rpc_url, "anvil_setBalance", facilitator_key.address, hex(10**19))
        facilitator = x402Facilitator()
        register_exact_evm_facilitator(
            facilitator,
            FacilitatorWeb3Signer("0x" + bytes(facilitator_key.key).hex(), self.world.rpc_url),
            self.world.network,
        )
        server = x402ResourceServer([facilitator])
        server.register(self.world.network, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
        token = self.world.usdc

        def paid(extra: dict[str, str], mime: str = "application/json") -> RouteConfig:
            return RouteConfig(
                accepts=[
                    PaymentOption(
                        scheme="exact",
                        pay_to=self.pay_to,
                        network=self.world.network,
                        price=AssetAmount(amount=str(PRICE), asset=token.address, extra=extra),
                    )
                ],
                description="paid content",
                mime_type=mime,
            )

        config = {
            f"GET /{name}": paid(token.eip712_extra) for name in ("big", "moved", "away", "doc", "slow")
        }
        config["GET /refused"] = paid({**token.eip712_extra, "version": WRONG_VERSION})
        guard = payment_middleware(config, server)
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.middleware("http")
        async def x402_guard(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            paid = any(h in request.headers for h in PAYMENT_HEADERS)
            self.log.append((request.url.path, paid))
            response = await guard(request, call_next)
            if paid and request.url.path == "/slow":
                self.slow_settled.set()  # the middleware settled before answering
            return response

        @app.get("/big")
        async def big() -> Response:
            return Response(self.big, media_type="application/octet-stream")

        @app.get("/moved")
        async def moved() -> Response:
            return RedirectResponse("/landing", status_code=302)

        @app.get("/landing")
        async def landing() -> dict[str, object]:
            return {"landed": True, "text": "the paid content, after a redirect"}

        @app.get("/away")
        async def away() -> Response:
            return RedirectResponse("http://elsewhere.example/content", status_code=302)

        @app.get("/doc")
        async def doc() -> dict[str, object]:
            return {"doc": "a small paid document"}

        @app.get("/slow")
        async def slow() -> dict[str, object]:
            self.slow_entered.set()
            await anyio.to_thread.run_sync(self.slow_release.wait)
            return {"slow": True, "text": "paid content the caller stopped waiting for"}

        @app.get("/refused")
        async def refused() -> dict[str, object]:
            return {"never": "served"}

        return app

    def paid_requests(self, path: str) -> int:
        return sum(1 for p, paid in self.log if p == path and paid)
