"""Plain, immutable descriptions of a running local world.

Kept apart from the code that starts things so callers (tests, examples, the
payment client's own fixtures) can pass a world around without importing the
servers, and so the servers can share the route vocabulary without cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..addresses import allow_entry_for
from .usdc import TokenInfo


@dataclass(frozen=True)
class PriceInfo:
    """One way a route accepts payment: ``amount`` atomic units of ``token`` to ``pay_to``."""

    network: str
    token: TokenInfo
    amount: int
    pay_to: str
    scheme: str = "exact"
    # ``extra.assetTransferMethod`` when not the scheme's default (``permit2`` for an exact
    # option offered only over Permit2; the SDK's upto server always sets permit2 itself).
    transfer_method: str | None = None

    @property
    def asset(self) -> str:
        """The token contract address, as x402 requirements name it."""
        return self.token.address

    @property
    def extra(self) -> dict[str, str]:
        """The ``extra`` this option is offered with: the token's EIP-712 domain, the method."""
        method = {"assetTransferMethod": self.transfer_method} if self.transfer_method else {}
        return self.token.eip712_extra | method


@dataclass(frozen=True)
class RouteInfo:
    """A route of one of the world's servers and what it charges.

    ``version`` is the x402 protocol version the server speaks (1 or 2), or
    ``None`` for a free route; ``accepts`` lists the payment options in the
    order the server offers them (empty when free).
    """

    method: str
    path: str
    url: str
    version: int | None
    accepts: tuple[PriceInfo, ...] = ()
    description: str = ""
    # The server declares the payment-identifier extension and answers a repeated id from cache.
    payment_identifier: bool = False
    # The server declares sign-in-with-x: a payer who paid signs in instead of paying again.
    sign_in: bool = False

    @property
    def paid(self) -> bool:
        """True when the route answers 402 without payment."""
        return bool(self.accepts)

    @property
    def price_atomic(self) -> int:
        """The first option's amount in atomic units (0 for a free route)."""
        return self.accepts[0].amount if self.accepts else 0

    @property
    def asset(self) -> str | None:
        """The first option's token address (None for a free route)."""
        return self.accepts[0].asset if self.accepts else None

    @property
    def pay_to(self) -> str | None:
        """The first option's payee (None for a free route)."""
        return self.accepts[0].pay_to if self.accepts else None


@dataclass(frozen=True)
class BatchInfo:
    """Where the batch-settlement parts of a running world are (``devnet/batch.py``)."""

    api_url: str  # the server of the /v2/batch and /v2/batch-permit2 routes
    settlement: str  # X402BatchSettlement, at its canonical address
    erc3009_collector: str  # ERC3009DepositCollector, at its canonical address
    permit2_collector: str  # Permit2DepositCollector, at its canonical address
    receiver: str
    receiver_authorizer: str  # the server's own key (the facilitator advertises none)
    facilitator_address: str
    withdraw_delay: int
    min_deposit: int


@dataclass(frozen=True)
class WorldInfo:
    """Everything a client needs to talk to a running local x402 world.

    The main chain is anvil with chain id 84532, so it is ``eip155:84532`` to
    x402 v2 and ``base-sepolia`` to v1 (v1 only knows named networks). The
    ``alt_*`` chain is a second anvil (chain id 31337) that only the v2
    ``/v2/multi`` route offers, to exercise a real cross-network choice.

    ``payer_private_key`` exists only so a test can provision a wallet (e.g.
    encrypt it into a keystore); it is excluded from ``repr`` and must never be
    logged.
    """

    rpc_url: str
    chain_id: int
    network: str
    v1_network: str
    usdc: TokenInfo
    eurc: TokenInfo
    alt_rpc_url: str
    alt_chain_id: int
    alt_network: str
    alt_usdc: TokenInfo
    api_url: str
    v1_api_url: str
    payer_address: str
    payer_private_key: str = field(repr=False)
    payees: dict[str, str] = field(hash=False)
    facilitator_address: str
    v1_facilitator_address: str
    routes: tuple[RouteInfo, ...]
    device_path: str  # HWI path of the device simulator that approves policies
    factory_address: str  # X402AccountFactory on the main chain (ERC-6492 allowlisted)
    bundler_url: str | None = None  # alto on the main chain, when the world runs one
    # The v2 facilitator's HTTP face: /supported and its Bazaar listing (/discovery/resources).
    facilitator_url: str | None = None
    # The batch-settlement contracts and the /v2/batch server, when the world runs them.
    batch: BatchInfo | None = None

    def route(self, method: str, path: str) -> RouteInfo:
        """The route served at ``method path`` (e.g. ``("GET", "/v2/weather")``)."""
        for candidate in self.routes:
            if candidate.method == method.upper() and candidate.path == path:
                return candidate
        raise KeyError(f"no route {method.upper()} {path} in this world")

    def own_apis(self) -> list[str]:
        """``private_network.allow`` entries for the world's own paid APIs (v2 and v1) and its
        facilitator (the Bazaar listing), each at its loopback address and port only: its chain
        RPC and all else local stay refused."""
        own = [self.api_url, self.v1_api_url, *([self.facilitator_url] if self.facilitator_url else [])]
        own += [self.batch.api_url] if self.batch else []
        return [allow_entry_for(url) for url in own]
