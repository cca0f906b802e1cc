"""The local world's Permit2 rails (issue 13 item 7), paid by the official SDK's own client.

Real parts only: the session's anvil, Permit2 compiled from npm ``@uniswap/v4-periphery`` at its
canonical address, our x402 exact/upto Permit2 proxies at theirs, the SDK's v2 server and
facilitator, and the SDK's x402 client (its exact Permit2 and upto client schemes) with a plain
eth_account key. The payer is a fresh key funded from the world's payer, so its balance changes
are this module's alone; it approves Permit2 itself (the SDK client approves only through the
gas-sponsoring extensions, which the world does not offer).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint
from x402 import x402Client
from x402.http import decode_payment_required_header, decode_payment_response_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    PERMIT2_WITNESS_TYPES,
    UPTO_PERMIT2_WITNESS_TYPES,
    X402_EXACT_PERMIT2_PROXY_ABI,
    X402_EXACT_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ABI,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.upto import UptoEvmClientScheme
from x402.schemas import PaymentRequired

from x402_agent.chain.account import send_transaction
from x402_agent.devnet import WorldInfo, token_balance
from x402_agent.devnet.paid_api import METERED_MAXIMUM
from x402_agent.devnet.permit2 import permit2_artifact, permit2_domain_separator
from x402_agent.paths import PROJECT_ROOT

PAYER_FUNDS = 1_000_000  # 1 USDC moved to this module's payer
PERMIT2_APPROVAL = 500_000  # a bounded approval, as the agent will give
_ERC20_ABI = [
    {
        "type": "function",
        "name": name,
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
    for name in ("transfer", "approve")
]


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


# Permit2's and our proxies' custom errors, by selector.
INVALID_SIGNER = _selector("InvalidSigner()")
INVALID_NONCE = _selector("InvalidNonce()")
AMOUNT_EXCEEDS_PERMITTED = _selector("AmountExceedsPermitted()")
UNAUTHORIZED_FACILITATOR = _selector("UnauthorizedFacilitator()")
PAYMENT_TOO_EARLY = _selector("PaymentTooEarly()")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def w3(world: WorldInfo) -> Web3:
    return Web3(Web3.HTTPProvider(world.rpc_url))


def _token(w3: Web3, world: WorldInfo) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(world.usdc.address), abi=_ERC20_ABI)


def _fund(w3: Web3, world: WorldInfo, to: str, usdc: int) -> None:
    """ETH for gas (anvil) and ``usdc`` atomic USDC from the world's payer."""
    w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [to, hex(10**18)])
    if usdc:
        data = _token(w3, world).encode_abi("transfer", args=[to, usdc])
        send_transaction(w3, world.payer_private_key, {"to": world.usdc.address, "data": data})


def _approve_permit2(w3: Web3, world: WorldInfo, owner: LocalAccount, amount: int) -> None:
    data = _token(w3, world).encode_abi("approve", args=[PERMIT2_ADDRESS, amount])
    send_transaction(w3, owner, {"to": world.usdc.address, "data": data})


@pytest.fixture(scope="module")
def payer(world: WorldInfo, w3: Web3) -> LocalAccount:
    """A fresh plain key holding 1 USDC that has approved Permit2 for 0.5 USDC."""
    account: LocalAccount = Account.create()
    _fund(w3, world, account.address, PAYER_FUNDS)
    _approve_permit2(w3, world, account, PERMIT2_APPROVAL)
    return account


def sdk_client(world: WorldInfo, account: LocalAccount) -> x402Client:
    """The SDK's own client: exact (it signs Permit2 when the offer says so) and upto."""
    signer = EthAccountSigner(account)
    client = x402Client()
    client.register(world.network, ExactEvmScheme(signer=signer))
    client.register(world.network, UptoEvmClientScheme(signer))
    # Our token is not an SDK default asset: without this the client refuses to pay.
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": world.usdc.address}]})
    return client


def pay(client: x402Client, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        async with x402HttpxClient(client, timeout=30) as http:
            response = await http.get(url)
            await response.aread()
            return response

    return asyncio.run(run())


@contextmanager
def balance_changes(world: WorldInfo, *addresses: str) -> Iterator[dict[str, int]]:
    before = {a: token_balance(world.rpc_url, world.usdc.address, a) for a in addresses}
    changes: dict[str, int] = {}
    yield changes
    changes.update({a: token_balance(world.rpc_url, world.usdc.address, a) - before[a] for a in addresses})


def offer(world: WorldInfo, path: str) -> PaymentRequired:
    response = httpx.get(world.route("GET", path).url)
    assert response.status_code == 402
    decoded = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert isinstance(decoded, PaymentRequired)
    return decoded


def sign_permit(
    w3: Web3,
    owner: LocalAccount,
    token: str,
    amount: int,
    spender: str,
    witness: dict[str, Any],
    *,
    upto: bool,
) -> tuple[tuple[Any, ...], bytes]:
    """A PermitWitnessTransferFrom signed as the SDK's clients sign it: the permit tuple the
    proxies take and the 65-byte signature."""
    nonce, deadline = secrets.randbits(256), w3.eth.get_block("latest")["timestamp"] + 600
    typed: dict[str, Any] = {
        "types": UPTO_PERMIT2_WITNESS_TYPES if upto else PERMIT2_WITNESS_TYPES,
        "primaryType": "PermitWitnessTransferFrom",
        "domain": {"name": "Permit2", "chainId": w3.eth.chain_id, "verifyingContract": PERMIT2_ADDRESS},
        "message": {
            "permitted": {"token": token, "amount": amount},
            "spender": spender,
            "nonce": nonce,
            "deadline": deadline,
            "witness": witness,
        },
    }
    signed = owner.sign_message(encode_typed_data(full_message=typed))
    return ((Web3.to_checksum_address(token), amount), nonce, deadline), bytes(signed.signature)


def revert_selector(w3: Web3, sender: str, to: str, data: str) -> bytes:
    """The custom error ``data`` reverts with when ``sender`` calls ``to`` (eth_call)."""
    answer = w3.provider.make_request(
        RPCEndpoint("eth_call"), [{"from": sender, "to": to, "data": data}, "latest"]
    )
    error = answer.get("error")
    assert error is not None, f"the call succeeded: {answer}"
    return bytes.fromhex(str(error["data"]).removeprefix("0x"))[:4]


def sent_status(w3: Web3, sender: LocalAccount, to: str, data: str) -> int:
    """Send the call as a real transaction (fixed gas, no estimation) and return its status."""
    tx: dict[str, Any] = {
        "chainId": w3.eth.chain_id,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "to": to,
        "data": data,
        "gas": 300_000,
        "maxFeePerGas": 2 * w3.eth.gas_price + 1,
        "maxPriorityFeePerGas": 1,
    }
    signed = sender.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    return int(receipt["status"])


# ---------------------------------------------------------------- the contracts in place


def test_permit2_domain_separator_is_the_one_the_sdk_signs_under(world: WorldInfo, w3: Web3) -> None:
    permit2 = w3.eth.contract(
        address=Web3.to_checksum_address(PERMIT2_ADDRESS), abi=permit2_artifact("Permit2")["abi"]
    )
    domain = {"name": "Permit2", "chainId": world.chain_id, "verifyingContract": PERMIT2_ADDRESS}
    typed = {"types": {"Empty": []}, "primaryType": "Empty", "domain": domain, "message": {}}
    # A SignableMessage's header is the EIP-712 domain separator.
    assert permit2.functions.DOMAIN_SEPARATOR().call() == encode_typed_data(full_message=typed).header
    # The code at the canonical address is our build with its two immutables filled in (the
    # compiler leaves them zero): the cached chain id and the canonical address's separator.
    runtime = bytes(w3.eth.get_code(Web3.to_checksum_address(PERMIT2_ADDRESS)))
    separator, chain_id, zero = (
        permit2_domain_separator(world.chain_id),
        world.chain_id.to_bytes(32, "big"),
        bytes(32),
    )
    assert separator in runtime and chain_id in runtime
    built = bytes.fromhex(permit2_artifact("Permit2")["deployedBytecode"].removeprefix("0x"))
    assert runtime.replace(separator, zero).replace(chain_id, zero) == built


def test_proxies_at_canonical_addresses_are_our_build_and_it_is_reproducible(
    w3: Web3, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location(
        "build_permit2", PROJECT_ROOT / "contracts" / "build_permit2.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    # The proxies only (seconds); Permit2's IR build takes over a minute and is checked above.
    written = builder.project_build.build(tmp_path, builder.SRC_DIR)
    for path in written:
        assert path.read_bytes() == (builder.DEFAULT_OUT / path.name).read_bytes(), path.name
    for name, address in (
        ("X402ExactPermit2Proxy", X402_EXACT_PERMIT2_PROXY_ADDRESS),
        ("X402UptoPermit2Proxy", X402_UPTO_PERMIT2_PROXY_ADDRESS),
    ):
        built = json.loads((tmp_path / f"{name}.json").read_text())["deployedBytecode"]
        assert "0x" + bytes(w3.eth.get_code(Web3.to_checksum_address(address))).hex() == built


# ---------------------------------------------------------------- paid through the SDK


def test_exact_permit2_route_offers_only_permit2_and_moves_exactly_the_price(
    world: WorldInfo, payer: LocalAccount
) -> None:
    route = world.route("GET", "/v2/permit2")
    (accepted,) = offer(world, "/v2/permit2").accepts
    assert (accepted.scheme, accepted.extra["assetTransferMethod"], int(accepted.amount)) == (
        "exact",
        "permit2",
        1_000,
    )
    with balance_changes(world, payer.address, route.pay_to or "") as moved:
        response = pay(sdk_client(world, payer), route.url)
    assert response.status_code == 200 and response.json()["paid_with"] == "permit2"
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction and settled.payer == payer.address
    assert moved == {payer.address: -1_000, route.pay_to: 1_000}


def test_upto_route_settles_the_metered_amount_below_the_maximum(
    world: WorldInfo, payer: LocalAccount
) -> None:
    route = world.route("GET", "/v2/metered")
    (accepted,) = offer(world, "/v2/metered").accepts
    assert (accepted.scheme, int(accepted.amount)) == ("upto", METERED_MAXIMUM)
    assert accepted.extra["facilitatorAddress"] == world.facilitator_address
    with balance_changes(world, payer.address, route.pay_to or "") as moved:
        response = pay(sdk_client(world, payer), route.url + "?used=2345")
    assert response.status_code == 200 and response.json()["used"] == 2345
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction and settled.amount == "2345"
    assert moved == {payer.address: -2345, route.pay_to: 2345}


def test_upto_route_without_a_metered_amount_settles_the_maximum(
    world: WorldInfo, payer: LocalAccount
) -> None:
    route = world.route("GET", "/v2/metered")
    with balance_changes(world, payer.address, route.pay_to or "") as moved:
        response = pay(sdk_client(world, payer), route.url)
    assert response.status_code == 200
    assert moved == {payer.address: -METERED_MAXIMUM, route.pay_to: METERED_MAXIMUM}


def test_upto_settling_zero_succeeds_with_an_empty_transaction(world: WorldInfo, payer: LocalAccount) -> None:
    route = world.route("GET", "/v2/metered")
    with balance_changes(world, payer.address, route.pay_to or "") as moved:
        response = pay(sdk_client(world, payer), route.url + "?used=0")
    assert response.status_code == 200
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction == "" and settled.amount == "0"
    assert moved == {payer.address: 0, route.pay_to: 0}


def test_upto_seller_reporting_more_than_the_maximum_is_refused(
    world: WorldInfo, payer: LocalAccount
) -> None:
    route = world.route("GET", "/v2/metered")
    with balance_changes(world, payer.address, route.pay_to or "") as moved:
        response = pay(sdk_client(world, payer), route.url + f"?used={METERED_MAXIMUM + 1}")
    assert response.status_code == 402
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert (
        not settled.success and settled.error_reason == "invalid_upto_evm_payload_settlement_exceeds_amount"
    )
    assert moved == {payer.address: 0, route.pay_to: 0}


def test_payer_without_permit2_allowance_is_told_so_and_pays_nothing(world: WorldInfo, w3: Web3) -> None:
    unapproved: LocalAccount = Account.create()
    _fund(w3, world, unapproved.address, 10_000)
    route = world.route("GET", "/v2/permit2")
    with balance_changes(world, unapproved.address) as moved:
        response = pay(sdk_client(world, unapproved), route.url)
    assert response.status_code == 402
    required = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert required.error == "permit2_allowance_required"
    assert moved == {unapproved.address: 0}


# ---------------------------------------------------------------- the proxies refuse on chain


def test_exact_proxy_refuses_a_witness_with_another_payee_or_a_raised_amount(
    world: WorldInfo, w3: Web3, payer: LocalAccount
) -> None:
    payee, thief = Account.create().address, Account.create()
    _fund(w3, world, thief.address, 0)
    proxy = w3.eth.contract(
        address=Web3.to_checksum_address(X402_EXACT_PERMIT2_PROXY_ADDRESS), abi=X402_EXACT_PERMIT2_PROXY_ABI
    )
    witness = {"to": payee, "validAfter": 0}
    permit, signature = sign_permit(
        w3, payer, world.usdc.address, 700, X402_EXACT_PERMIT2_PROXY_ADDRESS, witness, upto=False
    )

    def settle(permit: tuple[Any, ...], to: str) -> str:
        return str(proxy.encode_abi("settle", args=[permit, payer.address, (to, 0), signature]))

    raised = ((permit[0][0], 701), permit[1], permit[2])
    with balance_changes(world, payer.address, payee, thief.address) as moved:
        for data in (settle(permit, thief.address), settle(raised, payee)):
            assert (
                revert_selector(w3, thief.address, X402_EXACT_PERMIT2_PROXY_ADDRESS, data) == INVALID_SIGNER
            )
            assert sent_status(w3, thief, X402_EXACT_PERMIT2_PROXY_ADDRESS, data) == 0
    assert moved == {payer.address: 0, payee: 0, thief.address: 0}
    # The signed witness, as signed, goes through once (anyone may submit an exact permit).
    with balance_changes(world, payer.address, payee) as moved:
        assert sent_status(w3, thief, X402_EXACT_PERMIT2_PROXY_ADDRESS, settle(permit, payee)) == 1
    assert moved == {payer.address: -700, payee: 700}
    assert (
        revert_selector(w3, thief.address, X402_EXACT_PERMIT2_PROXY_ADDRESS, settle(permit, payee))
        == INVALID_NONCE
    )


def test_upto_proxy_refuses_over_the_permit_another_payee_or_another_facilitator(
    world: WorldInfo, w3: Web3, payer: LocalAccount
) -> None:
    payee, facilitator, other = Account.create().address, Account.create(), Account.create()
    for account in (facilitator, other):
        _fund(w3, world, account.address, 0)
    proxy = w3.eth.contract(
        address=Web3.to_checksum_address(X402_UPTO_PERMIT2_PROXY_ADDRESS), abi=X402_UPTO_PERMIT2_PROXY_ABI
    )
    latest = w3.eth.get_block("latest")["timestamp"]
    witness = {"to": payee, "facilitator": facilitator.address, "validAfter": 0}
    permit, signature = sign_permit(
        w3, payer, world.usdc.address, 900, X402_UPTO_PERMIT2_PROXY_ADDRESS, witness, upto=True
    )
    late_witness = {**witness, "validAfter": latest + 3600}
    late_permit, late_signature = sign_permit(
        w3, payer, world.usdc.address, 900, X402_UPTO_PERMIT2_PROXY_ADDRESS, late_witness, upto=True
    )

    def settle(amount: int, to: str = payee, *, late: bool = False) -> str:
        signed, sig, after = (late_permit, late_signature, latest + 3600) if late else (permit, signature, 0)
        return str(
            proxy.encode_abi(
                "settle", args=[signed, amount, payer.address, (to, facilitator.address, after), sig]
            )
        )

    refused = [
        (facilitator, settle(901), AMOUNT_EXCEEDS_PERMITTED),
        (facilitator, settle(500, other.address), INVALID_SIGNER),
        (other, settle(500), UNAUTHORIZED_FACILITATOR),
        (facilitator, settle(500, late=True), PAYMENT_TOO_EARLY),
    ]
    with balance_changes(world, payer.address, payee, other.address) as moved:
        for sender, data, error in refused:
            assert revert_selector(w3, sender.address, X402_UPTO_PERMIT2_PROXY_ADDRESS, data) == error
            assert sent_status(w3, sender, X402_UPTO_PERMIT2_PROXY_ADDRESS, data) == 0
    assert moved == {payer.address: 0, payee: 0, other.address: 0}
    # The named facilitator settles less than the maximum, once.
    with balance_changes(world, payer.address, payee) as moved:
        assert sent_status(w3, facilitator, X402_UPTO_PERMIT2_PROXY_ADDRESS, settle(450)) == 1
    assert moved == {payer.address: -450, payee: 450}
    assert (
        revert_selector(w3, facilitator.address, X402_UPTO_PERMIT2_PROXY_ADDRESS, settle(450))
        == INVALID_NONCE
    )
