"""The batch-settlement world: our contracts at the canonical addresses, driven by the official
SDK's own batch-settlement client, server, facilitator and channel manager (no part of ours pays).

A world of its own for this module (batch_fixtures): the withdrawal test moves the chain's clock
past the withdraw delay (15 minutes), which would expire every authorization other tests sign.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import batch_fixtures
import httpx
import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError
from x402 import x402Client
from x402.http import decode_payment_required_header, decode_payment_response_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
    sign_refund,
)
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
    compute_channel_id,
    sign_voucher,
)
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS
from x402.mechanisms.evm.batch_settlement.facilitator.claim import build_voucher_claim_args
from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.mechanisms.evm.constants import ERC20_APPROVE_ABI, PERMIT2_ADDRESS
from x402.schemas import PaymentRequired

from x402_agent.chain.account import send_transaction
from x402_agent.devnet import RouteInfo, WorldInfo, token_balance
from x402_agent.devnet.batch import (
    BATCH_PATH,
    BATCH_PERMIT2_PATH,
    CONTRACTS,
    BatchServer,
    BatchSettings,
    batch_artifact,
    batch_server,
)
from x402_agent.paths import PROJECT_ROOT

# The module's own world, its batch server and the settlement contract (module-scoped fixtures).
batch_world, world = batch_fixtures.batch_world, batch_fixtures.world
server, settlement = batch_fixtures.server, batch_fixtures.settlement

REQUESTS = 12


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


def _load_build_script() -> ModuleType:
    """contracts/build.py, loaded by path (the name ``build`` alone may be PyPA's package)."""
    spec = importlib.util.spec_from_file_location(
        "x402_contracts_build", PROJECT_ROOT / "contracts" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# ------------------------------------------------------------------ the contract's own rules


def reverts_with(settlement: Any, error: str, function: str, *args: Any, sender: str) -> None:
    """``function(*args)`` from ``sender`` (an eth_call) reverts with our custom ``error``."""
    selector = Web3.keccak(text=f"{error}()")[:4].hex()
    with pytest.raises(ContractCustomError) as raised:
        getattr(settlement.functions, function)(*args).call({"from": sender})
    assert str(raised.value.data).removeprefix("0x").startswith(selector.removeprefix("0x")), raised.value


def test_contracts_are_the_reproducible_build_of_our_sources(tmp_path: Path, settlement: Any) -> None:
    builder = _load_build_script()
    for path in builder.build(tmp_path, builder.BATCH_SRC_DIR):
        assert path.read_text() == (builder.BATCH_OUT / path.name).read_text(), path.name
    w3 = settlement.w3
    for name, address in CONTRACTS:
        assert "0x" + bytes(w3.eth.get_code(address)).hex() == batch_artifact(name)["deployedBytecode"]


def test_the_contract_refuses_what_the_scheme_forbids(
    world: WorldInfo, server: BatchServer, settlement: Any
) -> None:
    """Claims above the voucher or the balance, vouchers or batches signed by the wrong key,
    strangers on the receiver's or the payer's side, stale refund nonces, and direct calls to the
    collector are all refused on chain; a repeated or older claim changes nothing."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price, deposit, token = route.price_atomic, world.batch.min_deposit, world.usdc.address
    client, scheme = sdk_batch_client(world, "0x" + "03" * 32)
    config = channel_config(route, scheme)
    channel_id = compute_channel_id(config, world.network)
    raw_id = bytes.fromhex(channel_id[2:])
    onchain_config = to_contract_channel_config(config)
    assert [r.status_code for r in pay_many(client, route.url, 2)] == [200, 200]
    assert server.wait_for(lambda: settlement.functions.channels(raw_id).call() == [deposit, 2 * price])

    payer = EthAccountSigner(Account.from_key(world.payer_private_key))
    stranger = Account.create()
    authorizer = LocalAuthorizerSigner(server.authorizer)

    def row(ceiling: int, claimed: int, signer: Any = payer) -> VoucherClaim:
        voucher = sign_voucher(signer, channel_id, ceiling, world.network)
        return VoucherClaim(config, voucher.max_claimable_amount, voucher.signature, str(claimed))

    def claim_args(*rows: VoucherClaim, by: Any = authorizer) -> tuple[Any, bytes]:
        signature = sign_claim_batch(by, list(rows), world.network)
        return build_voucher_claim_args(list(rows)), bytes.fromhex(signature.removeprefix("0x"))

    anyone = stranger.address
    reverts_with(
        settlement, "ClaimAboveVoucher", "claimWithSignature", *claim_args(row(5_000, 6_000)), sender=anyone
    )
    reverts_with(
        settlement,
        "ClaimAboveBalance",
        "claimWithSignature",
        *claim_args(row(deposit + 1, deposit + 1)),
        sender=anyone,
    )
    stranger_voucher = row(5_000, 5_000, EthAccountSigner(stranger))
    reverts_with(
        settlement,
        "InvalidVoucherSignature",
        "claimWithSignature",
        *claim_args(stranger_voucher),
        sender=anyone,
    )
    stranger_batch = claim_args(row(5_000, 5_000), by=LocalAuthorizerSigner(stranger))
    reverts_with(
        settlement, "InvalidAuthorizerSignature", "claimWithSignature", *stranger_batch, sender=anyone
    )
    reverts_with(
        settlement, "NotReceiverSide", "claim", build_voucher_claim_args([row(5_000, 5_000)]), sender=anyone
    )
    reverts_with(settlement, "NotReceiverSide", "refund", onchain_config, 1, sender=anyone)
    nonce = settlement.functions.refundNonce(raw_id).call()
    refund_sig = bytes.fromhex(
        sign_refund(authorizer, channel_id, 1, nonce + 1, world.network).removeprefix("0x")
    )
    reverts_with(
        settlement,
        "WrongRefundNonce",
        "refundWithSignature",
        onchain_config,
        1,
        nonce + 1,
        refund_sig,
        sender=anyone,
    )
    forged = bytes.fromhex(
        sign_refund(LocalAuthorizerSigner(stranger), channel_id, 1, nonce, world.network)[2:]
    )
    reverts_with(
        settlement,
        "InvalidAuthorizerSignature",
        "refundWithSignature",
        onchain_config,
        1,
        nonce,
        forged,
        sender=anyone,
    )
    reverts_with(settlement, "NotPayerSide", "initiateWithdraw", onchain_config, 1, sender=anyone)
    unclaimed = deposit - 2 * price
    reverts_with(
        settlement,
        "WithdrawAboveAvailable",
        "initiateWithdraw",
        onchain_config,
        unclaimed + 1,
        sender=config.payer,
    )
    reverts_with(settlement, "NoPendingWithdrawal", "finalizeWithdraw", onchain_config, sender=config.payer)
    for name, address in CONTRACTS[1:]:  # the collectors
        collector = settlement.w3.eth.contract(address=address, abi=batch_artifact(name)["abi"])
        reverts_with(
            collector, "OnlyBatchSettlement", "collect", config.payer, token, 1, raw_id, b"", sender=anyone
        )

    # Cumulative: re-claiming the same total or an older voucher moves nothing (eth_call: the
    # claim goes through and the receiver's claimed total stays what the SDK's server claimed).
    before = settlement.functions.receivers(world.batch.receiver, token).call()
    settlement.functions.claimWithSignature(*claim_args(row(2 * price, 2 * price), row(price, price))).call(
        {"from": anyone}
    )
    assert settlement.functions.receivers(world.batch.receiver, token).call() == before


def test_sdk_client_deposits_through_permit2(world: WorldInfo, server: BatchServer, settlement: Any) -> None:
    """/v2/batch-permit2: the deposit goes through Permit2 and our Permit2DepositCollector (the
    payer approved Permit2 once); vouchers, claims and the refund as on the EIP-3009 route."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PERMIT2_PATH)
    price, deposit, token = route.price_atomic, world.batch.min_deposit, world.usdc.address
    assert route.accepts[0].extra["assetTransferMethod"] == "permit2"
    w3 = settlement.w3
    payer = Account.from_key(world.payer_private_key)
    usdc = w3.eth.contract(address=token, abi=ERC20_APPROVE_ABI)
    send_transaction(
        w3, payer, {"to": token, "data": usdc.encode_abi("approve", args=[PERMIT2_ADDRESS, deposit])}
    )
    client, scheme = sdk_batch_client(world, "0x" + "05" * 32)
    raw_id = bytes.fromhex(compute_channel_id(channel_config(route, scheme), world.network)[2:])
    payer_before = token_balance(world.rpc_url, token, world.payer_address)

    responses = pay_many(client, route.url, 3)

    assert [r.status_code for r in responses] == [200] * 3
    (deposited,) = settlement.events.Deposited().get_logs(
        from_block=0, argument_filters={"channelId": raw_id}
    )
    assert deposited["args"]["amount"] == deposit
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - deposit
    assert server.wait_for(lambda: settlement.functions.channels(raw_id).call() == [deposit, 3 * price])
    refunded = scheme.refund(route.url)
    assert refunded.success and refunded.amount == str(deposit - 3 * price), refunded
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - 3 * price
    assert server.errors == []


ZERO = "0x" + "00" * 20


@pytest.mark.parametrize("voucher_key", ["payer-itself", "separate-key"])
def test_vouchers_signed_by_the_payer_or_a_separate_authorizer(
    world: WorldInfo, server: BatchServer, settlement: Any, voucher_key: str
) -> None:
    """``payerAuthorizer`` zero: vouchers are checked against the payer itself (SignatureChecker:
    ECDSA for a plain key, ERC-1271 for a contract); a separate EOA authorizer (a session key's
    shape): the payer signs only the deposit, that key every voucher. Both are claimed on chain."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price = route.price_atomic
    signer = EthAccountSigner(Account.from_key(world.payer_private_key))
    session = EthAccountSigner(Account.create())
    salt = "0x" + ("07" if voucher_key == "payer-itself" else "08") * 32
    options = (
        BatchSettlementEvmSchemeOptions(salt=salt, payer_authorizer=ZERO)
        if voucher_key == "payer-itself"
        else BatchSettlementEvmSchemeOptions(
            salt=salt, payer_authorizer=session.address, voucher_signer=session
        )
    )
    scheme = BatchSettlementEvmScheme(signer, options)
    client = x402Client()
    client.register(world.network, scheme)
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": world.usdc.address}]})
    config = channel_config(route, scheme)
    assert config.payer_authorizer.lower() == (
        ZERO if voucher_key == "payer-itself" else session.address.lower()
    )
    raw_id = bytes.fromhex(compute_channel_id(config, world.network)[2:])

    assert [r.status_code for r in pay_many(client, route.url, 3)] == [200] * 3
    assert server.wait_for(lambda: settlement.functions.channels(raw_id).call()[1] == 3 * price), (
        server.errors
    )
    assert server.errors == []


ERC20_TRANSFER_ABI = [
    {
        "type": "function",
        "name": "transfer",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "nonpayable",
    }
]


class ContractWalletSigner:
    """The SDK client's signer for a contract payer: its address is the wallet, its signatures the
    owner key's over the EIP-712 digest (what OwnerSigned1271 accepts through ERC-1271)."""

    def __init__(self, wallet: str, owner: EthAccountSigner) -> None:
        self._wallet, self._owner = wallet, owner

    @property
    def address(self) -> str:
        return self._wallet

    def sign_typed_data(self, domain: Any, types: Any, primary_type: str, message: dict[str, Any]) -> bytes:
        return self._owner.sign_typed_data(domain, types, primary_type, message)


def test_a_contract_payer_pays_through_erc1271(
    world: WorldInfo, server: BatchServer, settlement: Any
) -> None:
    """A smart-account-shaped payer (ERC-1271, payerAuthorizer zero): its EIP-3009 deposit is
    accepted by the token through ERC-1271, its vouchers by the SDK's facilitator and by the
    contract's claim, and the refund returns to the contract."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price, deposit, token = route.price_atomic, world.batch.min_deposit, world.usdc.address
    w3 = settlement.w3
    funder = Account.from_key(world.payer_private_key)
    source = PROJECT_ROOT / "tests" / "contracts" / "OwnerSigned1271.sol"
    compiled = _load_build_script().compile_files([source])["contracts"][
        "tests/contracts/OwnerSigned1271.sol"
    ]
    owner = Account.create()
    creation = compiled["OwnerSigned1271"]["evm"]["bytecode"]["object"] + owner.address[2:].lower().rjust(
        64, "0"
    )
    wallet = send_transaction(w3, funder, {"data": "0x" + creation})["contractAddress"]
    usdc = w3.eth.contract(address=token, abi=ERC20_TRANSFER_ABI)
    send_transaction(w3, funder, {"to": token, "data": usdc.encode_abi("transfer", args=[wallet, deposit])})

    signer = ContractWalletSigner(wallet, EthAccountSigner(owner))
    scheme = BatchSettlementEvmScheme(signer, BatchSettlementEvmSchemeOptions(payer_authorizer=ZERO))
    client = x402Client()
    client.register(world.network, scheme)
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": token}]})
    config = channel_config(route, scheme)
    assert (config.payer, config.payer_authorizer.lower()) == (wallet, ZERO)
    raw_id = bytes.fromhex(compute_channel_id(config, world.network)[2:])

    assert [r.status_code for r in pay_many(client, route.url, 3)] == [200] * 3
    assert token_balance(world.rpc_url, token, wallet) == 0
    assert server.wait_for(lambda: settlement.functions.channels(raw_id).call() == [deposit, 3 * price])
    refunded = scheme.refund(route.url)
    assert refunded.success and refunded.amount == str(deposit - 3 * price), refunded
    assert token_balance(world.rpc_url, token, wallet) == deposit - 3 * price
    assert server.errors == []


def test_server_refunds_a_channel_through_its_channel_manager(
    world: WorldInfo, server: BatchServer, settlement: Any
) -> None:
    """The server's own refund (the SDK channel manager's, as its idle-channel job runs it): what
    it has not claimed yet is claimed in the same transaction, the rest goes back to the payer,
    and an emptied channel is closed."""
    assert world.batch is not None
    route = world.route("GET", BATCH_PATH)
    price, token = route.price_atomic, world.usdc.address
    client, scheme = sdk_batch_client(world, "0x" + "04" * 32)
    channel_id = compute_channel_id(channel_config(route, scheme), world.network)
    raw_id = bytes.fromhex(channel_id[2:])
    payer_before = token_balance(world.rpc_url, token, world.payer_address)
    assert [r.status_code for r in pay_many(client, route.url, 4)] == [200] * 4

    (result,) = server.manager.refund([channel_id])

    assert result.channel == channel_id and result.transaction
    assert settlement.functions.channels(raw_id).call() == [4 * price, 4 * price]
    assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - 4 * price
    created = settlement.events.ChannelCreated().get_logs(
        from_block=0, argument_filters={"channelId": raw_id}
    )
    assert len(created) == 1
    # Not closed: the receiver's claimed share stays in the channel's balance until settled out.
    assert (
        settlement.events.ChannelClosed().get_logs(from_block=0, argument_filters={"channelId": raw_id}) == []
    )
    assert server.errors == []


def test_a_server_refunds_idle_channels_on_its_own(world: WorldInfo, settlement: Any) -> None:
    """With ``refund_idle_s`` set, the SDK channel manager's refund job returns what an idle
    channel holds unclaimed (a server of this test's own, with its own receiver)."""

    def fund(address: str, wei: int) -> None:
        settlement.w3.provider.make_request("anvil_setBalance", [address, hex(wei)])

    own = batch_server(world.rpc_url, world.network, world.usdc, fund, BatchSettings(refund_idle_s=1))
    try:
        own.start()
        price, token = own.route.price_atomic, world.usdc.address
        client, scheme = sdk_batch_client(world, "0x" + "06" * 32)
        raw_id = bytes.fromhex(compute_channel_id(channel_config(own.route, scheme), world.network)[2:])
        payer_before = token_balance(world.rpc_url, token, world.payer_address)
        assert [r.status_code for r in pay_many(client, own.route.url, 2)] == [200, 200]

        assert own.wait_for(lambda: settlement.functions.channels(raw_id).call() == [2 * price, 2 * price])
        assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - 2 * price
        assert own.wait_for(lambda: token_balance(world.rpc_url, token, own.receiver) == 2 * price)
        assert own.errors == []
    finally:
        own.stop()


# Last in the module: it moves the chain clock past the withdraw delay (deposits signed for
# wall-clock windows no longer fit after it).
def test_payer_withdraws_after_the_delay_what_the_server_did_not_claim(
    world: WorldInfo, settlement: Any
) -> None:
    """The timed withdrawal (the escape hatch when the server stops cooperating). The payer asks
    for the whole deposit back before the server claimed anything; the server (its timers off
    here, so the order is fixed) claims its vouchers during the delay; after it, the payer takes
    back exactly what is still unclaimed."""
    w3 = settlement.w3

    def fund(address: str, wei: int) -> None:
        w3.provider.make_request("anvil_setBalance", [address, hex(wei)])

    own = batch_server(
        world.rpc_url,
        world.network,
        world.usdc,
        fund,
        BatchSettings(claim_interval_s=86_400, settle_interval_s=86_400),
    )
    try:
        own.start()
        route = own.route
        price, deposit, token = route.price_atomic, own.settings.min_deposit, world.usdc.address
        client, scheme = sdk_batch_client(world, "0x" + "02" * 32)
        config = to_contract_channel_config(channel_config(route, scheme))
        channel_id = bytes.fromhex(compute_channel_id(channel_config(route, scheme), world.network)[2:])
        payer_before = token_balance(world.rpc_url, token, world.payer_address)
        paid = 3
        assert [r.status_code for r in pay_many(client, route.url, paid)] == [200] * paid
        assert settlement.functions.channels(channel_id).call() == [deposit, 0]  # nothing claimed yet
        payer = Account.from_key(world.payer_private_key)

        def call(function: str, *args: Any) -> Any:
            data = settlement.encode_abi(function, args=list(args))
            return send_transaction(w3, payer, {"to": BATCH_SETTLEMENT_ADDRESS, "data": data})

        call("initiateWithdraw", config, deposit)
        amount, initiated_at = settlement.functions.pendingWithdrawals(channel_id).call()
        assert amount == deposit and initiated_at > 0
        with pytest.raises(ContractLogicError):  # the delay has not elapsed
            settlement.functions.finalizeWithdraw(config).call({"from": payer.address})
        (claimed,) = own.manager.claim()  # the server claims during the delay
        assert claimed.vouchers == 1
        assert settlement.functions.channels(channel_id).call() == [deposit, paid * price]

        w3.provider.make_request("evm_increaseTime", [own.settings.withdraw_delay])
        w3.provider.make_request("evm_mine", [])
        call("finalizeWithdraw", config)

        # Capped to the unclaimed escrow: the payer paid exactly the claimed vouchers.
        assert settlement.functions.channels(channel_id).call() == [paid * price, paid * price]
        assert settlement.functions.pendingWithdrawals(channel_id).call() == [0, 0]
        assert token_balance(world.rpc_url, token, world.payer_address) == payer_before - paid * price
        own.manager.settle()
        assert token_balance(world.rpc_url, token, own.receiver) == paid * price
        assert own.errors == []
    finally:
        own.stop()
