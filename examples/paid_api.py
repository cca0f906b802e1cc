"""A small paid API of your own, built only with the official x402 Python SDK.

Three priced routes and two free ones, guarded by the SDK's FastAPI ``payment_middleware``.
Prices are exact atomic amounts (``AssetAmount``) of one USDC-like token, so what the agent's
policy sees is exactly what the server asks, with no dollar-string rounding:

    GET  /api/fortune          250 atomic  = 0.00025 USDC
    GET  /api/forecast/<city>  3000 atomic = 0.003 USDC
    POST /api/wordcount        7500 atomic = 0.0075 USDC  (counts the words of the posted text)
    GET  /                     free: the price list
    GET  /health               free

Against the local world (what this example was run with):

    .venv/bin/x402-agent --home /tmp/x402-home devnet > /tmp/world.json &   # one JSON line
    .venv/bin/python examples/paid_api.py --world /tmp/world.json --port 4402
    # opt 127.0.0.1:4402 in (below), then:
    .venv/bin/x402-agent --home /tmp/x402-home fetch http://127.0.0.1:4402/api/fortune

``--world`` is the JSON line ``x402-agent devnet`` prints when it is ready: this script takes
``rpc_url``, ``network`` and ``tokens.USDC`` from it, reads the token's EIP-712 name, version
and decimals from the chain, and settles with the SDK's own in-process facilitator
(``x402Facilitator`` + ``register_exact_evm_facilitator``) on the local anvil. The facilitator
pays gas from a fresh key that this script funds with anvil's ``anvil_setBalance`` (it works on
anvil only), so it never shares a nonce with the devnet's own facilitator.

A smart-account payer (the devnet's default home, or ``x402-agent wallet create``) pays too: the
USDC token asks the account (ERC-1271) whether the session key's signature is within its
on-chain bounds. Its first top-up user operation deploys the account; should a payment ever
arrive from an account not deployed yet, the SDK facilitator deploys it (ERC-6492) only through
factories it is given: the ready line's ``factory`` (the local world's ``X402AccountFactory``)
when it has one, else each ``--account-factory``.

The agent never fetches from the machine's own or private addresses unless its policy opts them
in, and the devnet's policy opts in only the local world's own APIs. So this server's address
goes into ``private_network.allow``, a change the device approves (the devnet's simulator says
yes by itself): copy ``/tmp/x402-home/policy.json``, raise its ``version``, add
``"private_network": {"allow": [<the world's entries>, "127.0.0.1:4402"]}``, then
``x402-agent --home /tmp/x402-home policy propose FILE`` and ``policy approve``.
The devnet's policy allows any host and any payee (``hosts.allow`` and ``payees.allow`` are null
there); a policy that lists hosts or payees must also list ``127.0.0.1`` (or the host you serve
on) and this server's ``pay_to`` address (printed at start; fix it with ``--pay-to``), and its
``assets`` must name the token this server asks for.

----------------------------------------------------------------------------------------------
Pointing it at Base Sepolia with a hosted facilitator instead
----------------------------------------------------------------------------------------------
Not run against Base Sepolia or a hosted facilitator: this workplace reaches no network beyond
the local world. The ``--facilitator-url`` code path itself was run against the devnet's chain
(also id 84532) with the SDK facilitator served over HTTP on 127.0.0.1, and was paid by
``x402-agent fetch``.

On a real network the resource server does not settle anything itself: it hands each payment
to a facilitator over HTTP, with the SDK's ``HTTPFacilitatorClient``:

    from x402.http import FacilitatorConfig, HTTPFacilitatorClient
    facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=FACILITATOR_URL))
    server = x402ResourceServer(facilitator)
    server.register("eip155:84532", ExactEvmServerScheme())

and each ``AssetAmount`` names Base Sepolia's USDC, 0x036CbD53842c5426634e7929541eC2318f3dCF7e
(6 decimals; its EIP-712 domain is name "USDC", version "2"; Base mainnet, eip155:8453, is
0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913 with name "USD Coin", version "2"). The same script
does that with:

    .venv/bin/python examples/paid_api.py --facilitator-url <URL> --pay-to <your address>

whose defaults are Base Sepolia and its USDC (``--network``, ``--asset``, ``--asset-name``,
``--asset-version``, ``--decimals`` change them). ``<URL>`` is a hosted x402 facilitator that
supports the network; ``x402.http.DEFAULT_FACILITATOR_URL`` is the SDK's default public one,
which serves the testnets. A mainnet facilitator usually wants credentials: pass them through
``FacilitatorConfig(auth_provider=...)``. The payee needs no gas (the facilitator pays it);
the agent paying you needs Base Sepolia USDC from a faucet and a policy whose asset is that
USDC on eip155:84532 (see docs/real-networks.md).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from eth_account import Account
from fastapi import FastAPI, Request, Response
from web3 import Web3
from x402 import AssetAmount, x402Facilitator, x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_facilitator

BASE_SEPOLIA = "eip155:84532"
BASE_SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"

# (method, path pattern, atomic price, description, mime type)
PRICED = (
    ("GET", "/api/fortune", 250, "A fortune cookie", "application/json"),
    ("GET", "/api/forecast/*", 3_000, "Tomorrow's forecast for a city", "application/json"),
    ("POST", "/api/wordcount", 7_500, "Word count of the posted text", "application/json"),
)

_ERC20_METADATA_ABI = [
    {
        "name": name,
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": kind}],
    }
    for name, kind in (("name", "string"), ("version", "string"), ("decimals", "uint8"))
]


@dataclass(frozen=True)
class Token:
    """What a payment requirement says about the asset: address, decimals, EIP-712 domain."""

    network: str
    address: str
    name: str
    version: str
    decimals: int


# ---- where payments settle -----------------------------------------------------------------


def local_world(
    world_file: Path, facilitator_key: str | None, factories: list[str]
) -> tuple[Token, x402Facilitator]:
    """The devnet's main chain and USDC, settled by an in-process SDK facilitator."""
    world = json.loads(world_file.read_text().strip().splitlines()[0])
    rpc_url, network = world["rpc_url"], world["network"]
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(world["tokens"]["USDC"]), abi=_ERC20_METADATA_ABI
    )
    token = Token(
        network=network,
        address=contract.address,
        name=contract.functions.name().call(),
        version=contract.functions.version().call(),
        decimals=contract.functions.decimals().call(),
    )
    if facilitator_key is None:
        # A gas key of our own, so we never race the devnet's facilitator for nonces.
        fresh = Account.create()
        facilitator_key = "0x" + bytes(fresh.key).hex()
        w3.provider.make_request("anvil_setBalance", [fresh.address, hex(10**18)])  # type: ignore[arg-type]
    facilitator = x402Facilitator()

    def fresh_block(_context: object) -> None:
        # anvil mines only when a transaction arrives. After a minute without one its latest
        # block is older than the agent's validAfter (its clock minus 60 s), and the verify
        # simulation at that block refuses the authorization as not yet valid: mine one first.
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    facilitator.on_before_verify(fresh_block)
    # ERC-6492: the facilitator may deploy a not-yet-deployed smart-account payer, but only
    # through the factories named here.
    if not factories and world.get("factory"):
        factories = [world["factory"]]
    register_exact_evm_facilitator(
        facilitator,
        FacilitatorWeb3Signer(facilitator_key, rpc_url),
        network,
        eip6492_allowed_factories=factories,
    )
    return token, facilitator


def hosted(args: argparse.Namespace) -> tuple[Token, HTTPFacilitatorClient]:
    """A real network: the token named on the command line, a facilitator reached over HTTP."""
    token = Token(
        network=args.network,
        address=Web3.to_checksum_address(args.asset),
        name=args.asset_name,
        version=args.asset_version,
        decimals=args.decimals,
    )
    return token, HTTPFacilitatorClient(FacilitatorConfig(url=args.facilitator_url))


# ---- the app ---------------------------------------------------------------------------------


def route_config(price: int, description: str, mime_type: str, token: Token, pay_to: str) -> RouteConfig:
    return RouteConfig(
        accepts=[
            PaymentOption(
                scheme="exact",
                network=token.network,
                pay_to=pay_to,
                price=AssetAmount(
                    amount=str(price),
                    asset=token.address,
                    extra={"name": token.name, "version": token.version},
                ),
            )
        ],
        description=description,
        mime_type=mime_type,
    )


def create_app(token: Token, facilitator: Any, pay_to: str) -> FastAPI:
    server = x402ResourceServer(facilitator)
    # The SDK's scheme class is untyped and its payment_flows dict does not match the
    # protocol's declared Mapping type; the pairing is the SDK's own.
    server.register(token.network, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
    routes = {
        f"{method} {path}": route_config(price, description, mime, token, pay_to)
        for method, path, price, description, mime in PRICED
    }
    guard = payment_middleware(routes, server)  # asks the facilitator what it supports, now

    app = FastAPI(title="x402-agent example paid API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def x402(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await guard(request, call_next)

    @app.get("/")
    async def price_list() -> dict[str, object]:
        scale = 10**token.decimals
        return {
            "network": token.network,
            "asset": token.address,
            "pay_to": pay_to,
            "routes": [
                {
                    "method": m,
                    "path": p,
                    "price_atomic": str(price),
                    "price": f"{price / scale:.{token.decimals}f}",
                    "description": d,
                }
                for m, p, price, d, _ in PRICED
            ],
        }

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/fortune")
    async def fortune() -> dict[str, str]:
        return {"fortune": "A bounded budget is a happy budget."}

    @app.get("/api/forecast/{city}")
    async def forecast(city: str) -> dict[str, object]:
        # Deterministic, so repeated paid calls are easy to compare.
        seed = sum(city.encode())
        return {"city": city, "tomorrow": ("sunny", "cloudy", "rain")[seed % 3], "high_c": 10 + seed % 20}

    @app.post("/api/wordcount")
    async def wordcount(request: Request) -> dict[str, int]:
        text = (await request.body()).decode("utf-8", errors="replace")
        return {"words": len(text.split()), "characters": len(text)}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--world", type=Path, help="the ready line of `x402-agent devnet`, saved to a file")
    where.add_argument("--facilitator-url", help="a hosted x402 facilitator (real networks)")
    parser.add_argument(
        "--facilitator-key", help="devnet only: key paying settlement gas (default: a fresh funded one)"
    )
    parser.add_argument(
        "--account-factory",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="devnet only: a smart-account factory the facilitator may call to "
        "deploy a counterfactual payer (ERC-6492; default: the ready line's "
        "factory); repeatable",
    )
    parser.add_argument("--pay-to", help="payee address (default: a new random address)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--network", default=BASE_SEPOLIA, help="with --facilitator-url")
    parser.add_argument("--asset", default=BASE_SEPOLIA_USDC, help="with --facilitator-url")
    parser.add_argument("--asset-name", default="USDC", help="the token's EIP-712 name")
    parser.add_argument("--asset-version", default="2", help="the token's EIP-712 version")
    parser.add_argument("--decimals", type=int, default=6)
    args = parser.parse_args(argv)

    token, facilitator = (
        local_world(args.world, args.facilitator_key, args.account_factory) if args.world else hosted(args)
    )
    pay_to = Web3.to_checksum_address(args.pay_to or Account.create().address)
    app = create_app(token, facilitator, pay_to)

    # Bind first, so the URL (and a port picked by the OS) is known before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(
        json.dumps(
            {
                "ready": True,
                "url": url,
                "network": token.network,
                "asset": token.address,
                "pay_to": pay_to,
                "routes": [
                    {"method": m, "url": url + p.replace("*", "lisbon"), "price_atomic": str(price)}
                    for m, p, price, _, _ in PRICED
                ],
            }
        ),
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
