"""The local x402 world, exercised with real parts only: anvil, FiatToken v2.2, the
official Python SDK server/facilitator/client (v2 and v1) and npm x402-express (v1)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import Web3
from x402 import SpendControlAsset, x402Client
from x402.http import decode_payment_required_header, decode_payment_response_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.v1.client import ExactEvmSchemeV1
from x402.schemas import PaymentRequired
from x402.schemas.v1 import PaymentRequiredV1

from x402_agent.devnet import LocalWorld, RouteInfo, WorldInfo, token_balance, v1_server
from x402_agent.devnet.anvil import DEV_ACCOUNT_COUNT, dev_account
from x402_agent.devnet.paid_api import PNG_IMAGE

V2_PAID = ["/v2/weather", "/v2/report", "/v2/summarize", "/v2/premium", "/v2/image", "/v2/multi"]


# ---------------------------------------------------------------- helpers


def sdk_client(world: WorldInfo, allowed: list[SpendControlAsset]) -> x402Client:
    """The official SDK client for the world's payer. Our tokens are not SDK
    "default assets", so spend controls must list them or the SDK refuses to pay."""
    signer = EthAccountSigner(Account.from_key(world.payer_private_key))
    client = x402Client()
    client.register(world.network, ExactEvmScheme(signer=signer))
    client.register(world.alt_network, ExactEvmScheme(signer=signer))
    client.register_v1(world.v1_network, ExactEvmSchemeV1(signer))
    client.set_spend_controls({"allowed_assets": allowed})
    return client


def pay(client: x402Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request through the SDK's httpx client (it pays a 402 and retries)."""

    async def run() -> httpx.Response:
        async with x402HttpxClient(client, timeout=30) as http:
            response = await http.request(method, url, **kwargs)
            await response.aread()
            return response

    return asyncio.run(run())


@contextmanager
def balance_changes(rpc_url: str, token: str, *addresses: str) -> Iterator[dict[str, int]]:
    """Yields a dict that, after the block, maps each address to its balance change."""
    before = {a: token_balance(rpc_url, token, a) for a in addresses}
    changes: dict[str, int] = {}
    yield changes
    changes.update({a: token_balance(rpc_url, token, a) - before[a] for a in addresses})


def payment_required(route: RouteInfo) -> PaymentRequired:
    response = httpx.request(route.method, route.url, content=b"{}" if route.method == "POST" else None)
    assert response.status_code == 402
    decoded = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired)
    return decoded


def child_pids() -> set[int]:
    """Live child processes of this test process (from /proc, Linux)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            children.add(int(entry))
    return children


def eth_call(rpc_url: str, to: str, signature: str) -> bytes:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    return bytes(w3.eth.call({"to": Web3.to_checksum_address(to), "data": keccak(text=signature)[:4]}))


# ---------------------------------------------------------------- the world itself


def test_world_starts_quickly_on_the_expected_chain(local_world: LocalWorld, world: WorldInfo) -> None:
    assert local_world.startup_seconds is not None and local_world.startup_seconds < 10
    assert Web3(Web3.HTTPProvider(world.rpc_url)).eth.chain_id == world.chain_id == 84532
    assert Web3(Web3.HTTPProvider(world.alt_rpc_url)).eth.chain_id == world.alt_chain_id == 31337
    assert (world.network, world.v1_network, world.alt_network) == (
        "eip155:84532",
        "base-sepolia",
        "eip155:31337",
    )


@pytest.mark.parametrize("which", ["usdc", "eurc", "alt_usdc"])
def test_tokens_are_fiat_token_v2_2_with_the_advertised_eip712_domain(world: WorldInfo, which: str) -> None:
    token = getattr(world, which)
    rpc_url, chain_id = (
        (world.alt_rpc_url, world.alt_chain_id) if which == "alt_usdc" else (world.rpc_url, world.chain_id)
    )
    type_hash = keccak(
        text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    domain = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [type_hash, keccak(text=token.name), keccak(text=token.version), chain_id, token.address],
        )
    )
    assert eth_call(rpc_url, token.address, "DOMAIN_SEPARATOR()") == domain
    assert int.from_bytes(eth_call(rpc_url, token.address, "decimals()"), "big") == 6
    assert token_balance(rpc_url, token.address, world.payer_address) > 0


def test_payer_is_a_fresh_key_not_a_dev_account(world: WorldInfo) -> None:
    assert Account.from_key(world.payer_private_key).address == world.payer_address
    dev_addresses = {dev_account(i).address for i in range(DEV_ACCOUNT_COUNT)}
    assert world.payer_address not in dev_addresses
    assert world.payer_private_key not in repr(world)
    assert (
        Web3(Web3.HTTPProvider(world.rpc_url)).eth.get_balance(Web3.to_checksum_address(world.payer_address))
        > 0
    )


def test_free_route_needs_no_payment(world: WorldInfo) -> None:
    route = world.route("GET", "/free")
    assert not route.paid
    response = httpx.get(route.url)
    assert response.status_code == 200 and response.json() == {"free": True}


# ---------------------------------------------------------------- x402 v2 (Python SDK server)


@pytest.mark.parametrize("path", V2_PAID)
def test_v2_route_without_payment_answers_402_with_its_requirements(world: WorldInfo, path: str) -> None:
    route = next(r for r in world.routes if r.path == path)
    required = payment_required(route)
    assert required.x402_version == 2
    offered = [(a.network, a.asset, int(a.amount), a.pay_to, a.extra) for a in required.accepts]
    assert offered == [(p.network, p.asset, p.amount, p.pay_to, p.token.eip712_extra) for p in route.accepts]


def test_v2_multi_offers_several_assets_payees_and_networks(world: WorldInfo) -> None:
    required = payment_required(world.route("GET", "/v2/multi"))
    offered = {(a.network, a.asset, a.amount, a.pay_to) for a in required.accepts}
    assert offered == {
        (world.network, world.eurc.address, "1500", world.payees["multi"]),
        (world.network, world.usdc.address, "2000", world.payees["multi"]),
        (world.network, world.usdc.address, "3000", world.payees["multi_alt"]),
        (world.alt_network, world.alt_usdc.address, "2500", world.payees["multi"]),
    }


def test_v2_sdk_client_pays_and_exactly_the_price_moves(world: WorldInfo) -> None:
    route = world.route("GET", "/v2/weather")
    client = sdk_client(world, [{"network": world.network, "asset": world.usdc.address}])
    with balance_changes(world.rpc_url, world.usdc.address, world.payer_address, route.pay_to or "") as moved:
        response = pay(client, "GET", route.url)
    assert response.status_code == 200
    assert response.json()["city"]
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.network == world.network and settled.transaction
    assert moved == {world.payer_address: -1_000, route.pay_to: 1_000}


def test_v2_post_is_paid_and_the_handler_sees_the_body(world: WorldInfo) -> None:
    route = world.route("POST", "/v2/summarize")
    body = b"The quick brown fox pays for the lazy dog's API call."
    client = sdk_client(world, [{"network": world.network, "asset": world.usdc.address}])
    with balance_changes(world.rpc_url, world.usdc.address, world.payer_address) as moved:
        response = pay(client, "POST", route.url, content=body)
    assert response.status_code == 200
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert moved == {world.payer_address: -route.price_atomic} and route.price_atomic == 5_000


def test_v2_image_is_binary_png(world: WorldInfo) -> None:
    route = world.route("GET", "/v2/image")
    client = sdk_client(world, [{"network": world.network, "asset": world.usdc.address}])
    response = pay(client, "GET", route.url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == PNG_IMAGE and response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_v2_multi_can_be_paid_on_the_second_network(world: WorldInfo) -> None:
    route = world.route("GET", "/v2/multi")
    # Allow only the alt-chain USDC, so the SDK must pick that option.
    client = sdk_client(world, [{"network": world.alt_network, "asset": world.alt_usdc.address}])
    payee = world.payees["multi"]
    with balance_changes(world.alt_rpc_url, world.alt_usdc.address, world.payer_address, payee) as moved:
        response = pay(client, "GET", route.url)
    assert response.status_code == 200
    assert decode_payment_response_header(response.headers["PAYMENT-RESPONSE"]).network == world.alt_network
    assert moved == {world.payer_address: -2_500, payee: 2_500}


# ---------------------------------------------------------------- x402 v1 (npm x402-express)


def test_v1_route_without_payment_answers_402_json_body(world: WorldInfo) -> None:
    route = world.route("GET", "/v1/weather")
    response = httpx.get(route.url)
    assert response.status_code == 402
    required = PaymentRequiredV1.model_validate(response.json())
    assert required.x402_version == 1
    (accept,) = required.accepts
    assert (accept.network, accept.asset, accept.max_amount_required, accept.pay_to) == (
        "base-sepolia",
        world.usdc.address,
        "1000",
        world.payees["v1"],
    )
    assert accept.extra == {"name": "USD Coin", "version": "2"}


@pytest.mark.parametrize(
    ("method", "path", "body"), [("GET", "/v1/weather", None), ("POST", "/v1/echo", b"ping")]
)
def test_v1_sdk_client_pays_and_exactly_the_price_moves(
    world: WorldInfo, method: str, path: str, body: bytes | None
) -> None:
    route = world.route(method, path)
    client = sdk_client(world, [{"network": world.v1_network, "asset": world.usdc.address}])
    payee = world.payees["v1"]
    with balance_changes(world.rpc_url, world.usdc.address, world.payer_address, payee) as moved:
        response = pay(client, method, route.url, content=body)
    assert response.status_code == 200
    receipt = json.loads(base64.b64decode(response.headers["X-PAYMENT-RESPONSE"]))
    assert receipt["success"] is True and receipt["network"] == "base-sepolia"
    assert receipt["payer"] == world.payer_address
    assert moved == {world.payer_address: -route.price_atomic, payee: route.price_atomic}
    if body is not None:
        assert response.json()["echo"] == body.decode()


# ---------------------------------------------------------------- lifecycle


def test_stop_leaves_no_processes_threads_or_ports() -> None:
    before, threads_before = child_pids(), set(threading.enumerate())
    local = LocalWorld()
    with local as info:
        started = child_pids() - before
        assert len(started) == 3  # two anvils and node
    assert not child_pids() & started
    assert set(threading.enumerate()) <= threads_before
    for url in (info.api_url, info.v1_api_url, info.rpc_url):
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)


def test_failed_start_stops_what_had_started(monkeypatch: pytest.MonkeyPatch) -> None:
    before, threads_before = child_pids(), set(threading.enumerate())
    monkeypatch.setattr(v1_server, "V1_SCRIPT", Path("/nonexistent/v1-server.mjs"))
    local = LocalWorld()
    with pytest.raises(RuntimeError, match="before it was ready"):
        local.start()
    assert child_pids() <= before
    assert set(threading.enumerate()) <= threads_before
