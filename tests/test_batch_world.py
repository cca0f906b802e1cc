"""The batch-settlement world: our contracts at the canonical addresses, driven by the official
SDK's own batch-settlement client, server, facilitator and channel manager (no part of ours pays).

A world of its own for this module: the withdrawal test moves the chain's clock past the withdraw
delay (15 minutes), which would expire every authorization the session world's other tests sign.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError
from x402 import x402Client
from x402.http import decode_payment_required_header, decode_payment_response_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
    compute_channel_id,
)
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentRequired

from x402_agent.chain.account import send_transaction
from x402_agent.devnet import LocalWorld, RouteInfo, WorldInfo, token_balance
from x402_agent.devnet.batch import BATCH_PATH, BatchServer, batch_artifact

REQUESTS = 12


@pytest.fixture(scope="module")
def batch_world() -> Iterator[LocalWorld]:
    local = LocalWorld()
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def world(batch_world: LocalWorld) -> WorldInfo:
    return batch_world.info


@pytest.fixture(scope="module")
def server(batch_world: LocalWorld) -> BatchServer:
    assert batch_world.batch_server is not None
    return batch_world.batch_server


@pytest.fixture(scope="module")
def settlement(world: WorldInfo) -> Any:
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    # Our artifact's ABI: the SDK's subset plus the events (Deposited, Claimed, Refunded, ...).
    return w3.eth.contract(address=BATCH_SETTLEMENT_ADDRESS, abi=batch_artifact("X402BatchSettlement")["abi"])


def sdk_batch_client(world: WorldInfo, salt: str) -> tuple[x402Client, BatchSettlementEvmScheme]:
    """The SDK's batch-settlement client for the world's payer (a plain key); our USDC is not an
    SDK default asset, so the spend controls list it."""
    signer = EthAccountSigner(Account.from_key(world.payer_private_key))
    scheme = BatchSettlementEvmScheme(signer, BatchSettlementEvmSchemeOptions(salt=salt))
    client = x402Client()
    client.register(world.network, scheme)
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": world.usdc.address}]})
    return client, scheme


def pay_many(client: x402Client, url: str, count: int) -> list[httpx.Response]:
    """``count`` sequential GETs through the SDK's httpx client (it pays each 402 and retries)."""

    async def run() -> list[httpx.Response]:
        responses = []
        async with x402HttpxClient(client, timeout=30) as http:
            for _ in range(count):
                response = await http.get(url)
                await response.aread()
                responses.append(response)
        return responses

    return asyncio.run(run())


def channel_config(route: RouteInfo, scheme: BatchSettlementEvmScheme) -> ChannelConfig:
    """The channel the SDK client opens for ``route`` (from the route's own 402)."""
    required = decode_payment_required_header(httpx.get(route.url).headers["PAYMENT-REQUIRED"])
    assert isinstance(required, PaymentRequired)
    return scheme.build_channel_config(required.accepts[0])


def test_the_contracts_sit_at_the_sdk_canonical_addresses(world: WorldInfo, settlement: Any) -> None:
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    assert route.accepts[0].scheme == "batch-settlement" and route.price_atomic == 1_000
    w3 = settlement.w3
    assert w3.eth.get_code(world.batch.settlement) and w3.eth.get_code(world.batch.erc3009_collector)
    # The contract's channel id is the SDK's (the ChannelConfig EIP-712 hash under the batch domain).
    _, scheme = sdk_batch_client(world, "0x" + "ab" * 32)
    config = channel_config(route, scheme)
    onchain = settlement.functions.getChannelId(to_contract_channel_config(config)).call()
    assert "0x" + onchain.hex() == compute_channel_id(config, world.network)


def test_sdk_client_pays_many_requests_through_one_channel_then_refund(
    world: WorldInfo, server: BatchServer, settlement: Any
) -> None:
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price, deposit, receiver = route.price_atomic, world.batch.min_deposit, world.batch.receiver
    token = world.usdc.address
    client, scheme = sdk_batch_client(world, "0x" + "01" * 32)
    channel_id = compute_channel_id(channel_config(route, scheme), world.network)
    payer_before = token_balance(world.rpc_url, token, world.payer_address)
    receiver_before = token_balance(world.rpc_url, token, receiver)

    responses = pay_many(client, route.url, REQUESTS)

    assert [r.status_code for r in responses] == [200] * REQUESTS
    settled = [decode_payment_response_header(r.headers["PAYMENT-RESPONSE"]) for r in responses]
    assert all(s.success for s in settled)
    # One deposit transaction (the first request); every later request is a voucher only.
    assert settled[0].transaction and settled[0].amount == str(deposit)
    assert [s.transaction for s in settled[1:]] == [""] * (REQUESTS - 1)
    assert [s.extra["chargedAmount"] for s in settled] == [str(price)] * REQUESTS  # type: ignore[index]
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - deposit
    deposits = settlement.events.Deposited().get_logs(
        from_block=0, argument_filters={"channelId": bytes.fromhex(channel_id[2:])}
    )
    assert len(deposits) == 1

    # The SDK's channel manager claims the last voucher and settles: exactly the running total.
    total = REQUESTS * price
    assert server.wait_for(
        lambda: tuple(settlement.functions.receivers(receiver, token).call()) == (total, total)
    ), server.errors
    assert settlement.functions.channels(bytes.fromhex(channel_id[2:])).call() == [deposit, total]
    assert token_balance(world.rpc_url, token, receiver) == receiver_before + total

    # The SDK client asks for the unused deposit back; the server's refund returns exactly it.
    refunded = scheme.refund(route.url)
    assert refunded.success and refunded.amount == str(deposit - total), refunded
    assert settlement.functions.channels(bytes.fromhex(channel_id[2:])).call() == [total, total]
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - total
    assert token_balance(world.rpc_url, token, receiver) == receiver_before + total
    assert server.errors == []


def test_payer_withdraws_after_the_delay_what_the_server_did_not_claim(
    world: WorldInfo, server: BatchServer, settlement: Any
) -> None:
    """The timed withdrawal (the escape hatch when the server stops cooperating): the server may
    still claim its vouchers during the delay; after it, the payer takes back the rest."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price, deposit, token = route.price_atomic, world.batch.min_deposit, world.usdc.address
    client, scheme = sdk_batch_client(world, "0x" + "02" * 32)
    config = to_contract_channel_config(channel_config(route, scheme))
    channel_id = bytes.fromhex(compute_channel_id(channel_config(route, scheme), world.network)[2:])
    payer_before = token_balance(world.rpc_url, token, world.payer_address)
    paid = 3
    assert [r.status_code for r in pay_many(client, route.url, paid)] == [200] * paid
    assert server.wait_for(
        lambda: settlement.functions.channels(channel_id).call() == [deposit, paid * price]
    )

    w3 = settlement.w3
    payer = Account.from_key(world.payer_private_key)
    unclaimed = deposit - paid * price

    def call(function: str, *args: Any) -> Any:
        data = settlement.encode_abi(function, args=list(args))
        return send_transaction(w3, payer, {"to": BATCH_SETTLEMENT_ADDRESS, "data": data})

    call("initiateWithdraw", config, unclaimed)
    amount, initiated_at = settlement.functions.pendingWithdrawals(channel_id).call()
    assert amount == unclaimed and initiated_at > 0
    with pytest.raises(ContractLogicError):  # the delay has not elapsed
        settlement.functions.finalizeWithdraw(config).call({"from": payer.address})

    w3.provider.make_request("evm_increaseTime", [world.batch.withdraw_delay])
    w3.provider.make_request("evm_mine", [])
    call("finalizeWithdraw", config)

    assert settlement.functions.channels(channel_id).call() == [paid * price, paid * price]
    assert settlement.functions.pendingWithdrawals(channel_id).call() == [0, 0]
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - paid * price
    assert server.errors == []
