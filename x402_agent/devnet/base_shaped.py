"""A chain shaped like Base Sepolia (or Base): what a new user of the smart account finds there.

anvil with the network's chain id, and only what the network itself holds: the deterministic
deployment proxy (anvil ships it), EntryPoint v0.7 at its canonical address (deployed through
that proxy, as on the real network), Multicall3 at its canonical address, and Circle's FiatToken
v2.2 as USDC at the network's USDC address with its EIP-712 name and version. Nothing of this
project: no account factory (``x402-agent wallet deploy-factory`` puts it there).

``BaseShapedWorld`` adds what a provider and a seller run beside it: alto as a separate bundler
service (its own funded keys), and the official x402 SDK's server and facilitator selling one
route for that USDC. The facilitator allowlists no account factory (a hosted one does not know
ours), so a smart account pays it only once deployed.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from types import TracebackType

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ..chain.entrypoint import deploy_entry_point_v07
from .aa import install_multicall3
from .anvil import Anvil, dev_account
from .bundler import AltoBundler
from .info import PriceInfo, RouteInfo
from .served import ServedApp
from .usdc import TokenInfo, TokenSpec, deploy_fiat_tokens


@dataclass(frozen=True)
class BaseShape:
    """A network to imitate: its chain id and its USDC (address, EIP-712 name)."""

    chain_id: int
    usdc: TokenSpec

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"


BASE_SEPOLIA = BaseShape(
    84532, TokenSpec("USDC", "USDC", "USD", address="0x036CbD53842c5426634e7929541eC2318f3dCF7e")
)
BASE = BaseShape(
    8453, TokenSpec("USD Coin", "USDC", "USD", address="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")
)

# What the new user's own wallet (a faucet's worth) holds before the walk-through.
USER_USDC = 100_000_000  # 100 USDC
USER_ETH_WEI = 10**18
BUNDLER_ETH_WEI = 100 * 10**18
PRICE = 1_000  # 0.001 USDC for the one route sold
IDLE_BLOCK_SECONDS = 1

# anvil's public dev keys deploy the network's own contracts and run the facilitator.
_DEPLOYER, _PROXY_ADMIN, _FACILITATOR, _LOST_AND_FOUND = 0, 1, 2, 9


@dataclass(frozen=True)
class BaseShapedInfo:
    """A running Base-shaped chain and, when started, its bundler and paid API."""

    rpc_url: str
    chain_id: int
    network: str
    usdc: TokenInfo
    user_address: str
    user_private_key: str = field(repr=False)  # the new user's funded wallet: never log it
    bundler_url: str | None = None
    bundler_executor: str | None = None  # the address alto sends its bundles from
    api_url: str | None = None
    route: RouteInfo | None = None  # the route sold, when the API runs
    facilitator_address: str | None = None


class BaseShapedWorld:
    """``with BaseShapedWorld() as info: ...``; ``services=False``: the chain alone."""

    def __init__(self, shape: BaseShape = BASE_SEPOLIA, *, services: bool = True) -> None:
        self.shape = shape
        self._services = services
        self._stack: ExitStack | None = None
        self.anvil: Anvil | None = None

    def __enter__(self) -> BaseShapedInfo:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> BaseShapedInfo:
        if self._stack is not None:
            raise RuntimeError("the Base-shaped world is already running")
        with ExitStack() as stack:
            info = self._start_all(stack)
            self._stack = stack.pop_all()
        return info

    def stop(self) -> None:
        """Stop everything that runs, newest first (idempotent)."""
        stack, self._stack, self.anvil = self._stack, None, None
        if stack is not None:
            stack.close()

    def _start_all(self, stack: ExitStack) -> BaseShapedInfo:
        anvil = Anvil.start(self.shape.chain_id, idle_block_seconds=IDLE_BLOCK_SECONDS)
        stack.callback(anvil.stop)
        self.anvil = anvil
        deployer = dev_account(_DEPLOYER)
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        deploy_entry_point_v07(w3, deployer)
        install_multicall3(w3, deployer)
        user: LocalAccount = Account.create()
        (usdc,) = deploy_fiat_tokens(
            anvil.rpc_url,
            deployer=deployer,
            proxy_admin=dev_account(_PROXY_ADMIN).address,
            lost_and_found=dev_account(_LOST_AND_FOUND).address,
            tokens=[self.shape.usdc],
            holder=user.address,
            holder_amount=USER_USDC,
            holder_eth_wei=USER_ETH_WEI,
        )
        info = BaseShapedInfo(
            rpc_url=anvil.rpc_url,
            chain_id=self.shape.chain_id,
            network=self.shape.network,
            usdc=usdc,
            user_address=user.address,
            user_private_key="0x" + bytes(user.key).hex(),
        )
        if not self._services:
            return info
        bundler_url, executor = _start_bundler(stack, anvil)
        api_url, route = _start_paid_api(stack, anvil.rpc_url, self.shape.network, usdc)
        return replace(
            info,
            bundler_url=bundler_url,
            bundler_executor=executor,
            api_url=api_url,
            route=route,
            facilitator_address=dev_account(_FACILITATOR).address,
        )


def _start_bundler(stack: ExitStack, anvil: Anvil) -> tuple[str, str]:
    """alto as a provider runs it: its own process and keys, its executor and utility funded."""
    executor, utility = Account.create(), Account.create()
    for key in (executor, utility):
        anvil.set_balance(key.address, BUNDLER_ETH_WEI)
    bundler = AltoBundler(anvil.rpc_url, executor_key=bytes(executor.key), utility_key=bytes(utility.key))
    stack.callback(bundler.stop)
    return bundler.start().url, executor.address


def _start_paid_api(stack: ExitStack, rpc_url: str, network: str, usdc: TokenInfo) -> tuple[str, RouteInfo]:
    """The SDK's FastAPI middleware and in-process facilitator selling GET /v2/weather."""
    from x402 import x402Facilitator
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator

    from .paid_api import create_app

    served = ServedApp(name="base-shaped-api")
    stack.callback(served.stop)
    payee = Account.create().address
    route = RouteInfo(
        "GET",
        "/v2/weather",
        served.url + "/v2/weather",
        2,
        (PriceInfo(network, usdc, PRICE, payee),),
        "Current weather (JSON)",
    )
    facilitator = x402Facilitator()
    key = "0x" + bytes(dev_account(_FACILITATOR).key).hex()
    register_exact_evm_facilitator(facilitator, FacilitatorWeb3Signer(key, rpc_url), network)
    served.start(create_app([route], [facilitator]))
    return served.url, route


__all__ = ["BASE", "BASE_SEPOLIA", "BaseShape", "BaseShapedInfo", "BaseShapedWorld"]
