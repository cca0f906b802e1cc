"""``LocalWorld``: a complete offline x402 economy, started and stopped as one unit.

Two anvil chains (84532 = "base-sepolia"/``eip155:84532``, and 31337 as a second
network), Circle's FiatToken v2.2 deployed as USDC and EURC, Permit2 and the x402
Permit2 proxies on the main chain, a funded payer with a fresh random key, the
official Python SDK v2 paid API with its in-process facilitator (exact over
EIP-3009 and Permit2, upto), and the official npm x402-express v1 server with its own
facilitator key (separate keys: the two settle concurrently and must not race
for nonces). Unless told otherwise (``batch=None``), the batch-settlement contracts at
their canonical addresses and the SDK's batch-settlement server, facilitator (a third
key) and channel manager behind ``/v2/batch`` and ``/v2/batch-permit2`` (``devnet/batch.py``).

Whatever starts is registered on an ``ExitStack`` at once, so a failure halfway
through ``start`` (or any ``stop``) tears down exactly what was running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from types import TracebackType
from typing import Protocol, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ..chain.factory import factory_address
from ..device.simulator import DeviceSimulator
from .aa import install_account_abstraction
from .anvil import Anvil, dev_account
from .batch import BatchServer, BatchSettings, batch_server
from .bazaar import BazaarCatalog, catalogue_routes, create_facilitator_app
from .bundler import AltoBundler
from .info import WorldInfo
from .paid_api import ChainSettlement, build_facilitators, create_app, v2_routes
from .permit2 import install_permit2
from .served import ServedApp
from .usdc import TokenInfo, TokenSpec, deploy_fiat_tokens
from .v1_server import V1Server

CHAIN_ID = 84532
NETWORK = f"eip155:{CHAIN_ID}"
V1_NETWORK = "base-sepolia"
ALT_CHAIN_ID = 31337
ALT_NETWORK = f"eip155:{ALT_CHAIN_ID}"
IDLE_BLOCK_SECONDS = 1

USDC_SPEC = TokenSpec(name="USD Coin", symbol="USDC", currency="USD")
EURC_SPEC = TokenSpec(name="Euro Coin", symbol="EURC", currency="EUR")
PAYER_TOKEN_ATOMIC = 1_000_000_000  # 1,000 tokens at 6 decimals, of each token
PAYER_ETH_WEI = 10 * 10**18

# Roles of anvil's dev accounts (all public test keys, never the payer).
_DEPLOYER, _PROXY_ADMIN, _FACILITATOR, _V1_FACILITATOR, _LOST_AND_FOUND = 0, 1, 2, 3, 9
_PAYEES = {"api": 4, "premium": 5, "multi": 6, "multi_alt": 7, "v1": 8}
_FRESH_PAYEES = ("permit2", "metered", "idempotent", "siwx")


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)


def key_hex(account: LocalAccount) -> str:
    """0x-prefixed private key of ``account`` (for child processes and signers)."""
    return "0x" + bytes(account.key).hex()


class LocalWorld:
    """Start/stop the local x402 world; use as ``with LocalWorld() as world: ...``.

    ``start()`` returns the ``WorldInfo``; ``startup_seconds`` records how long it took.
    """

    def __init__(
        self,
        device: DeviceSimulator | None = None,
        *,
        bundler: bool = False,
        batch: BatchSettings | None = BatchSettings(),  # noqa: B008 (frozen, shared safely)
    ) -> None:
        # The device simulator approves policies through HWI. It takes a free port pair, so
        # worlds (devnets, demos, test sessions) run side by side; HWI's scan looks only at
        # 21324, so homes provisioned here record the path (``HomeConfig.device``).
        self._given_device = device
        # The alto bundler takes ~3 s to start: only worlds that send user operations want it.
        self._with_bundler = bundler
        # The batch-settlement route and its channel manager (None: the world runs without them).
        self._batch_settings = batch
        self.batch_server: BatchServer | None = None
        self.device: DeviceSimulator | None = device
        self._stack: ExitStack | None = None
        self._info: WorldInfo | None = None
        self.startup_seconds: float | None = None

    @property
    def info(self) -> WorldInfo:
        """The running world's description."""
        if self._info is None:
            raise RuntimeError("the local world is not running")
        return self._info

    def __enter__(self) -> WorldInfo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> WorldInfo:
        """Bring every part up (about a second); on any failure, stop what started."""
        if self._stack is not None:
            raise RuntimeError("the local world is already running")
        began = time.perf_counter()
        with ExitStack() as stack:
            self._info = self._start_all(stack)
            self._stack = stack.pop_all()
        self.startup_seconds = time.perf_counter() - began
        return self._info

    def stop(self) -> None:
        """Stop everything that runs, newest first (idempotent)."""
        stack, self._stack, self._info = self._stack, None, None
        if stack is not None:
            stack.close()

    def _start_all(self, stack: ExitStack) -> WorldInfo:
        device = self._given_device or _started(stack, DeviceSimulator(confirm="auto", port=0)).start()
        self.device = device
        payer: LocalAccount = Account.create()
        payees: dict[str, str] = {role: dev_account(index).address for role, index in _PAYEES.items()}
        # The Permit2 routes' payees are fresh addresses (anvil's ten dev accounts all have roles).
        payees |= {role: Account.create().address for role in _FRESH_PAYEES}

        def main_chain() -> tuple[Anvil, list[TokenInfo]]:
            anvil, tokens = _chain_with_tokens(stack, CHAIN_ID, [USDC_SPEC, EURC_SPEC], payer.address)
            install_account_abstraction(anvil.rpc_url, dev_account(_DEPLOYER))
            install_permit2(anvil.rpc_url, dev_account(_DEPLOYER))
            return anvil, tokens

        def alt_chain() -> tuple[Anvil, list[TokenInfo]]:
            return _chain_with_tokens(stack, ALT_CHAIN_ID, [USDC_SPEC], payer.address)

        (anvil, (usdc, eurc)), (alt_anvil, (alt_usdc,)) = _in_parallel(main_chain, alt_chain)
        bundler_url = _start_bundler(stack, anvil) if self._with_bundler else None
        batch = self._start_batch(stack, anvil, usdc)

        api = _started(stack, ServedApp(name="x402-paid-api"))
        routes = v2_routes(
            api.url,
            network=NETWORK,
            usdc=usdc,
            eurc=eurc,
            alt_network=ALT_NETWORK,
            alt_usdc=alt_usdc,
            payees=payees,
        )
        facilitator_key = key_hex(dev_account(_FACILITATOR))

        def start_v1() -> V1Server:
            v1 = V1Server.start(
                rpc_url=anvil.rpc_url,
                network=V1_NETWORK,
                token=usdc,
                pay_to=payees["v1"],
                facilitator_key=key_hex(dev_account(_V1_FACILITATOR)),
            )
            return _started(stack, v1)

        facilitator_api = _started(stack, ServedApp(name="x402-facilitator"))

        def start_v2() -> None:
            facilitators = build_facilitators(
                ChainSettlement(NETWORK, anvil.rpc_url, facilitator_key, (factory_address(),)),
                ChainSettlement(ALT_NETWORK, alt_anvil.rpc_url, facilitator_key),
            )
            catalog = BazaarCatalog()
            for facilitator in facilitators:
                catalog.attach(facilitator)
            api.start(create_app(routes, facilitators, rpc_url=anvil.rpc_url))
            facilitator_api.start(create_facilitator_app(catalog, facilitators))
            catalogue_routes(catalog, routes + (batch.routes if batch else ()))

        # node's start-up (mostly module loading) overlaps the Python server's.
        v1, _ = _in_parallel(start_v1, start_v2)

        return WorldInfo(
            rpc_url=anvil.rpc_url,
            chain_id=CHAIN_ID,
            network=NETWORK,
            v1_network=V1_NETWORK,
            usdc=usdc,
            eurc=eurc,
            alt_rpc_url=alt_anvil.rpc_url,
            alt_chain_id=ALT_CHAIN_ID,
            alt_network=ALT_NETWORK,
            alt_usdc=alt_usdc,
            api_url=api.url,
            v1_api_url=v1.url,
            payer_address=payer.address,
            payer_private_key=key_hex(payer),
            payees=payees,
            facilitator_address=dev_account(_FACILITATOR).address,
            v1_facilitator_address=v1.facilitator_address,
            routes=routes + v1.routes + (batch.routes if batch else ()),
            device_path=device.path,
            factory_address=factory_address(),
            bundler_url=bundler_url,
            batch=batch.info if batch else None,
            facilitator_url=facilitator_api.url,
        )

    def _start_batch(self, stack: ExitStack, anvil: Anvil, usdc: TokenInfo) -> BatchServer | None:
        """The batch-settlement contracts and the /v2/batch server on the main chain."""
        if self._batch_settings is None:
            return None
        server = batch_server(anvil.rpc_url, NETWORK, usdc, anvil.set_balance, self._batch_settings)
        self.batch_server = _started(stack, server).start()
        return self.batch_server


def _start_bundler(stack: ExitStack, anvil: Anvil) -> str:
    """alto on the main chain, its executor and utility keys fresh and funded."""
    executor, utility = Account.create(), Account.create()
    for key in (executor, utility):
        anvil.set_balance(key.address, 100 * 10**18)
    return (
        _started(
            stack,
            AltoBundler(anvil.rpc_url, executor_key=bytes(executor.key), utility_key=bytes(utility.key)),
        )
        .start()
        .url
    )


def _chain_with_tokens(
    stack: ExitStack, chain_id: int, specs: list[TokenSpec], payer: str
) -> tuple[Anvil, list[TokenInfo]]:
    # A block every second even when idle: the chain's time never lags the clock by more, as on
    # a live network, so time-bound checks (authorization windows) hold an hour later too.
    anvil = _started(stack, Anvil.start(chain_id, idle_block_seconds=IDLE_BLOCK_SECONDS))
    tokens = deploy_fiat_tokens(
        anvil.rpc_url,
        deployer=dev_account(_DEPLOYER),
        proxy_admin=dev_account(_PROXY_ADMIN).address,
        lost_and_found=dev_account(_LOST_AND_FOUND).address,
        tokens=specs,
        holder=payer,
        holder_amount=PAYER_TOKEN_ATOMIC,
        holder_eth_wei=PAYER_ETH_WEI,
    )
    return anvil, tokens


def _started(stack: ExitStack, part: _S) -> _S:
    """Register ``part.stop`` for teardown the moment ``part`` exists."""
    stack.callback(part.stop)
    return part


_A = TypeVar("_A")
_B = TypeVar("_B")


def _in_parallel(first: Callable[[], _A], second: Callable[[], _B]) -> tuple[_A, _B]:
    """Run two start-up steps at once; wait for both even if one fails, then re-raise."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="localworld") as pool:
        first_future, second_future = pool.submit(first), pool.submit(second)
        # Leaving the pool waits for both, so a failure in one never abandons
        # the other half-started: each registered its own teardown already.
    return first_future.result(), second_future.result()
