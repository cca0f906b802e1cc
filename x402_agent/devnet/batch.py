"""The batch-settlement part of the local world: the escrow contracts at their canonical
addresses and two routes served by the official SDK's batch-settlement server and facilitator.

Usage (tests, clients):

    route = world.route("GET", "/v2/batch")      # url; accepts[0]: scheme "batch-settlement",
                                                  # amount (per request), pay_to (the receiver), token
    world.route("GET", "/v2/batch-permit2")       # the same, deposits through Permit2 (needs the
                                                  # payer's token allowance for Permit2 first)
    batch = world.batch                           # BatchInfo (None when the world runs without it)
    batch.settlement, batch.erc3009_collector     # X402BatchSettlement, ERC3009DepositCollector,
    batch.permit2_collector                       # Permit2DepositCollector
    batch.receiver_authorizer, batch.withdraw_delay, batch.min_deposit, batch.api_url
    local_world.batch_server.wait_for(predicate)  # wake on each claim/settle/refund of the server

The contracts (``contracts/batch/src``) are written by this project from the x402 specification's
interface: no package ships the originals. On public chains the SDK uses the deployed originals.
They have no constructor and no immutables, so their runtime code is placed with
``anvil_setCode`` at the addresses the SDK hard-codes.

The route's server is the SDK's ``BatchSettlementEvmScheme`` (it owns the receiver-authorizer key,
so the facilitator advertises none), its facilitator the SDK's ``BatchSettlementEvmFacilitator``
with its own funded key (it sends the deposit, claim, settle and refund transactions; a separate
key from the exact facilitator's, so their nonces never race). The SDK's channel manager claims
and settles on short intervals (``BatchSettings``) and, when configured, refunds idle channels.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request, Response
from web3 import Web3
from x402 import AssetAmount, x402Facilitator, x402FacilitatorSync, x402ResourceServer
from x402.extensions.bazaar import OutputConfig, declare_discovery_extension
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MIN_WITHDRAW_DELAY,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
    SCHEME_BATCH_SETTLEMENT,
)
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.batch_settlement.server import (
    AutoSettlementConfig,
    AutoSettlementContext,
    BatchSettlementChannelManagerSync,
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeServerConfig,
    Channel,
    ChannelManagerConfigSync,
)
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import get_idle_channels_for_refund

from ..paths import PROJECT_ROOT
from .info import BatchInfo, PriceInfo, RouteInfo
from .served import ServedApp
from .usdc import TokenInfo

BATCH_PATH = "/v2/batch"
BATCH_PERMIT2_PATH = "/v2/batch-permit2"
CONTRACTS = (
    ("X402BatchSettlement", BATCH_SETTLEMENT_ADDRESS),
    ("ERC3009DepositCollector", ERC3009_DEPOSIT_COLLECTOR_ADDRESS),
    ("Permit2DepositCollector", PERMIT2_DEPOSIT_COLLECTOR_ADDRESS),
)
_ANSWER = {"city": "Braga", "temperature_c": 19.0, "paid_with": SCHEME_BATCH_SETTLEMENT}
_BUILD = PROJECT_ROOT / "contracts" / "batch" / "build"
_FACILITATOR_ETH_WEI = 100 * 10**18


@dataclass(frozen=True)
class BatchSettings:
    """How the batch route charges and how often its channel manager works (whole seconds:
    the SDK's timers take ints). ``refund_idle_s`` None: the server never refunds on its own."""

    price: int = 1_000  # 0.001 USDC per request
    min_deposit: int = 100_000  # the deposit the server asks for: 100 requests
    withdraw_delay: int = MIN_WITHDRAW_DELAY  # the shortest the SDK's facilitator accepts
    claim_interval_s: int = 1
    settle_interval_s: int = 1
    refund_idle_s: int | None = None


@cache
def batch_artifact(name: str) -> dict[str, Any]:
    """``X402BatchSettlement``, ``ERC3009DepositCollector`` or ``Permit2DepositCollector`` (abi,
    bytecode, deployedBytecode)."""
    built: dict[str, Any] = json.loads((_BUILD / f"{name}.json").read_text())
    return built


def install_batch_settlement(rpc_url: str) -> None:
    """The three contracts at their canonical addresses (anvil only: ``anvil_setCode``). The
    Permit2 collector calls Permit2 at its canonical address (``devnet/permit2.py`` places it)."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    for name, address in CONTRACTS:
        code = batch_artifact(name)["deployedBytecode"]
        w3.provider.make_request("anvil_setCode", [address, code])  # type: ignore[arg-type]
        if bytes(w3.eth.get_code(address)).hex() != code.removeprefix("0x"):
            raise RuntimeError(f"{name} did not land at {address} (is {rpc_url} an anvil node?)")


def batch_routes(
    base_url: str, network: str, usdc: TokenInfo, receiver: str, settings: BatchSettings
) -> tuple[RouteInfo, RouteInfo]:
    """What ``/v2/batch`` (deposits by EIP-3009) and ``/v2/batch-permit2`` (deposits through
    Permit2) charge per request, to whom."""

    def route(path: str, transfer_method: str | None, how: str) -> RouteInfo:
        price = PriceInfo(
            network, usdc, settings.price, receiver, SCHEME_BATCH_SETTLEMENT, transfer_method=transfer_method
        )
        description = f"Weather by the request, paid from a batch-settlement channel ({how}, then vouchers)"
        return RouteInfo("GET", path, base_url + path, 2, (price,), description)

    return (
        route(BATCH_PATH, None, "one deposit"),
        route(BATCH_PERMIT2_PATH, "permit2", "one deposit through Permit2"),
    )


class BatchServer:
    """The SDK's batch-settlement server and facilitator behind ``/v2/batch`` on its own port,
    with the SDK's channel manager claiming, settling (and refunding idle channels) meanwhile."""

    def __init__(
        self,
        *,
        rpc_url: str,
        network: str,
        usdc: TokenInfo,
        facilitator: LocalAccount,
        settings: BatchSettings | None = None,
    ) -> None:
        self.settings = settings or BatchSettings()
        self._rpc_url = rpc_url
        self._network = network
        self._usdc = usdc
        self._facilitator = facilitator
        self._authorizer: LocalAccount = Account.create()
        self.receiver: str = Account.create().address
        self._served = ServedApp(name="x402-batch")
        # ``route``: deposits by EIP-3009 (the SDK's default); ``routes`` adds the Permit2 one.
        self.routes = batch_routes(self._served.url, network, usdc, self.receiver, self.settings)
        self.route = self.routes[0]
        self._manager: BatchSettlementChannelManagerSync | None = None
        # Woken after each claim, settle or refund of the channel manager (and each error).
        self._changed = threading.Condition()
        self.errors: list[BaseException] = []

    @property
    def info(self) -> BatchInfo:
        return BatchInfo(
            api_url=self._served.url,
            settlement=BATCH_SETTLEMENT_ADDRESS,
            erc3009_collector=ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            permit2_collector=PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
            receiver=self.receiver,
            receiver_authorizer=self._authorizer.address,
            facilitator_address=self._facilitator.address,
            withdraw_delay=self.settings.withdraw_delay,
            min_deposit=self.settings.min_deposit,
        )

    @property
    def authorizer(self) -> LocalAccount:
        """The receiver-authorizer key (fresh, devnet only), for tests that act as the receiver's
        side on chain (signing claim batches or refunds) beside the SDK's server."""
        return self._authorizer

    @property
    def manager(self) -> BatchSettlementChannelManagerSync:
        """The SDK's channel manager (tests may also claim, settle or refund on demand)."""
        if self._manager is None:
            raise RuntimeError("the batch server is not running")
        return self._manager

    def start(self) -> BatchServer:
        signer = FacilitatorWeb3Signer("0x" + bytes(self._facilitator.key).hex(), self._rpc_url)
        facilitator_scheme = BatchSettlementEvmFacilitator(signer)
        # The resource server awaits its facilitator; the channel manager's timer threads call a
        # sync one. Both wrap the same scheme and signer (one nonce counter for the key).
        http_facilitator = x402Facilitator().register([self._network], facilitator_scheme)
        manager_facilitator = x402FacilitatorSync().register([self._network], facilitator_scheme)
        scheme = BatchSettlementEvmScheme(
            self.receiver,
            BatchSettlementEvmSchemeServerConfig(
                receiver_authorizer_signer=LocalAuthorizerSigner(self._authorizer),
                withdraw_delay=self.settings.withdraw_delay,
            ),
        )
        server = x402ResourceServer([http_facilitator])  # type: ignore[list-item]
        server.register(self._network, scheme)  # type: ignore[arg-type]
        self._served.start(_create_app(server, self._route_config()))
        self._manager = BatchSettlementChannelManagerSync(
            ChannelManagerConfigSync(
                scheme=scheme,
                facilitator=manager_facilitator,  # type: ignore[arg-type]
                receiver=self.receiver,
                token=self._usdc.address,
                network=self._network,
            )
        )
        self._manager.start(self._auto_settlement())
        return self

    def stop(self) -> None:
        """Stop the channel manager's timers, then the HTTP server (idempotent)."""
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.stop()
        self._served.stop()

    def wait_for(self, done: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until ``done()`` holds, re-checking after each claim, settle, refund or error of
        the channel manager (and at least every second, for changes it did not make)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 1.0))
            return True

    def _notify(self, _result: object = None) -> None:
        with self._changed:
            self._changed.notify_all()

    def _record_error(self, error: BaseException) -> None:
        self.errors.append(error)
        self._notify()

    def _auto_settlement(self) -> AutoSettlementConfig:
        idle = self.settings.refund_idle_s

        def idle_channels(channels: list[Channel], _context: AutoSettlementContext) -> list[Channel]:
            # The SDK's own choice: funded, no request in flight, idle for ``idle`` seconds.
            assert idle is not None
            return get_idle_channels_for_refund(channels, idle)

        return AutoSettlementConfig(
            claim_interval_secs=self.settings.claim_interval_s,
            settle_interval_secs=self.settings.settle_interval_s,
            refund_interval_secs=idle,
            select_refund_channels=idle_channels if idle is not None else None,
            on_claim=self._notify,
            on_settle=self._notify,
            on_refund=self._notify,
            on_error=self._record_error,
        )

    def _route_config(self) -> dict[str, RouteConfig]:
        def config(route: RouteInfo) -> RouteConfig:
            price = route.accepts[0]
            extra = price.extra | {"minDeposit": str(self.settings.min_deposit)}
            option = PaymentOption(
                scheme=SCHEME_BATCH_SETTLEMENT,
                pay_to=price.pay_to,
                price=AssetAmount(amount=str(price.amount), asset=price.asset, extra=extra),
                network=price.network,
            )
            return RouteConfig(
                accepts=[option],
                description=route.description,
                mime_type="application/json",
                # Listed in the world facilitator's Bazaar like the other paid routes.
                extensions=declare_discovery_extension(output=OutputConfig(example=_ANSWER)),
            )

        return {f"{route.method} {route.path}": config(route) for route in self.routes}


def _create_app(server: x402ResourceServer, config: dict[str, RouteConfig]) -> FastAPI:
    app = FastAPI(
        title="x402 local world (batch-settlement)", docs_url=None, redoc_url=None, openapi_url=None
    )
    guard = payment_middleware(config, server)

    @app.middleware("http")
    async def x402_guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await guard(request, call_next)

    @app.get(BATCH_PATH)
    async def batch_weather() -> dict[str, object]:
        return _ANSWER

    @app.get(BATCH_PERMIT2_PATH)
    async def batch_permit2_weather() -> dict[str, object]:
        return _ANSWER

    return app


def batch_server(
    rpc_url: str,
    network: str,
    usdc: TokenInfo,
    fund: Callable[[str, int], None],
    settings: BatchSettings | None = None,
) -> BatchServer:
    """Place the contracts and fund a fresh facilitator key (``fund(address, wei)``); the server
    is returned unstarted, so the caller can register its ``stop`` before ``start``."""
    install_batch_settlement(rpc_url)
    facilitator: LocalAccount = Account.create()
    fund(facilitator.address, _FACILITATOR_ETH_WEI)
    return BatchServer(
        rpc_url=rpc_url, network=network, usdc=usdc, facilitator=facilitator, settings=settings
    )
