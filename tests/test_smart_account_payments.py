"""x402 payments from an X402Account: owner actions signed on the device simulator through HWI,
payments signed by a session key and settled by the official x402 facilitator via ERC-1271."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance, transfer_logs
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError

from x402_agent.approval import Enrollment
from x402_agent.chain.account import (
    account_contract,
    encode_action,
    owner_action_line,
    owner_call,
    run_owner_action,
    sign_owner_action,
)
from x402_agent.chain.factory import AccountConfig, create_account, deploy_factory
from x402_agent.chain.session_signer import SessionKeySigner
from x402_agent.client import X402Client
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, fund
from x402_agent.errors import X402AgentError
from x402_agent.flow import FetchRequest, Payer
from x402_agent.ledger import PaymentState
from x402_agent.ledger.sqlite import SQLiteLedger
from x402_agent.spendgate import PolicyGate

FUNDING = 5_000_000  # 5 USDC
WINDOW = 3600
CAP = 1_000_000
OTHER_PATH = "m/44'/1'/402'/0/1"
GAS: dict[str, int] = {}


@dataclass
class SmartWorld:
    w3: Web3
    account: str
    enrollment: Enrollment
    session: SessionKeySigner
    device: HwiDevice

    def sign_line(self, line: str, path: str = DEFAULT_APPROVAL_PATH) -> str:
        return self.device.sign_message(line, path)

    def act(self, action: str, *args: object) -> None:
        run_owner_action(self.w3, self.account, action, args, self.sign_line, dev_account(0))


def _usdc(sw: SmartWorld, world: WorldInfo, holder: str) -> int:
    return token_balance(world.rpc_url, world.usdc.address, holder)


@pytest.fixture(scope="module")
def sw(world: WorldInfo, device_simulator: object) -> Iterator[SmartWorld]:
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    device = HwiDevice.at("trezor", world.device_path)
    try:
        enrollment = device.enroll(DEFAULT_APPROVAL_PATH)
        owner = enrollment.eth_address
        session_key = Account.create()
        now = w3.eth.get_block("latest")["timestamp"]
        deploy_factory(w3, dev_account(0))
        config = AccountConfig(
            owner,
            session_key.address,
            now + 7 * 86400,
            world.usdc.address,
            max_value=10,
            max_window=60,
            allowance=0,
            period=86400,
        )
        account, _, _ = create_account(w3, config, dev_account(0))
        assert account_contract(w3, account).functions.owner().call().lower() == owner.lower()
        # fund the account with USDC from the world's payer: a plain ERC-20 transfer
        fund(world, account, usdc=FUNDING)
        assert token_balance(world.rpc_url, world.usdc.address, account) == FUNDING
        sw = SmartWorld(w3, account, enrollment, SessionKeySigner(account, bytes(session_key.key)), device)
        assert sw.session.session_address == session_key.address
        # each owner action signed on the simulator through unmodified HWI signmessage
        sw.act("setPolicy", CAP, WINDOW, False)
        sw.act("setToken", world.usdc.address, True)
        sw.act("setSessionKey", session_key.address, now + 7 * 86400)
        contract = account_contract(w3, account)
        assert contract.functions.maxValue().call() == CAP
        assert contract.functions.tokenAllowed(world.usdc.address).call()
        assert contract.functions.sessionKeyExpiry(session_key.address).call() == now + 7 * 86400
        assert contract.functions.ownerNonce().call() == 3
        yield sw
        print("\nGAS:", json.dumps(GAS, indent=1))
    finally:
        device.close()


def _client(world: WorldInfo, sw: SmartWorld, tmp_path: Path) -> X402Client:
    policy = devnet_policy(world).model_copy(update={"account": sw.account})
    gate = PolicyGate(policy, SQLiteLedger(tmp_path / "ledger.sqlite"))
    return X402Client(Payer(gate=gate, signer=sw.session, rpc_urls={world.network: world.rpc_url}))


def test_owner_line_matches_the_contract(world: WorldInfo, sw: SmartWorld) -> None:
    data = encode_action(sw.w3, sw.account, "setPolicy", [CAP, WINDOW, False])
    line = owner_action_line(sw.w3, sw.account, data, 9)
    assert account_contract(sw.w3, sw.account).functions.ownerMessage(data, 9).call() == line


def test_session_key_pays_a_v2_route_through_the_official_facilitator(
    world: WorldInfo, sw: SmartWorld, tmp_path: Path
) -> None:
    route = world.route("GET", "/v2/weather")
    assert route.version == 2 and route.asset == world.usdc.address
    account_before = _usdc(sw, world, sw.account)
    payee_before = _usdc(sw, world, route.pay_to)  # type: ignore[arg-type]
    with _client(world, sw, tmp_path) as client:
        outcome = client.fetch(FetchRequest(route.url))
        assert outcome.status == 200, outcome.content
        assert outcome.confirmed_on_chain
        paid = outcome.payment
        assert paid is not None and paid.state == PaymentState.SETTLED
        stored = client.payer.gate.ledger.get(paid.id)
        assert stored is not None and stored.state == PaymentState.SETTLED
    assert paid.amount == route.price_atomic
    assert _usdc(sw, world, sw.account) == account_before - route.price_atomic
    assert _usdc(sw, world, route.pay_to) == payee_before + route.price_atomic  # type: ignore[arg-type]
    assert transfer_logs(world.rpc_url, paid.settlement_tx) == [
        (world.usdc.address, sw.account, route.pay_to, route.price_atomic)
    ]
    receipt = rpc(world.rpc_url, "eth_getTransactionReceipt", paid.settlement_tx)
    assert int(receipt["status"], 16) == 1
    GAS["x402 payment via facilitator (ERC-1271)"] = int(receipt["gasUsed"], 16)


def test_payment_above_the_on_chain_cap_is_refused(world: WorldInfo, sw: SmartWorld, tmp_path: Path) -> None:
    route = world.route("GET", "/v2/report")
    policy = devnet_policy(world)
    assert route.price_atomic <= policy.assets[0].per_request_max  # the off-chain policy allows it
    sw.act("setPolicy", route.price_atomic - 1, WINDOW, False)
    try:
        account_before = _usdc(sw, world, sw.account)
        payee_before = _usdc(sw, world, route.pay_to)  # type: ignore[arg-type]
        with _client(world, sw, tmp_path) as client:
            try:
                outcome = client.fetch(FetchRequest(route.url))
            except X402AgentError as exc:
                refused: object = exc
            else:
                refused = outcome
                assert outcome.status == 402, outcome.status
                assert outcome.payment is None or outcome.payment.state != PaymentState.SETTLED
        print("over-cap payment refused:", type(refused).__name__, str(refused)[:200])
        assert _usdc(sw, world, sw.account) == account_before
        assert _usdc(sw, world, route.pay_to) == payee_before  # type: ignore[arg-type]
    finally:
        sw.act("setPolicy", CAP, WINDOW, False)


def test_owner_action_signed_at_another_path_is_rejected(world: WorldInfo, sw: SmartWorld) -> None:
    contract = account_contract(sw.w3, sw.account)
    nonce = contract.functions.ownerNonce().call()
    data = encode_action(sw.w3, sw.account, "setPolicy", [10**12, 10**9, False])
    _, signature = sign_owner_action(
        sw.w3, sw.account, "setPolicy", data, lambda line: sw.sign_line(line, OTHER_PATH), nonce=nonce
    )
    with pytest.raises(ContractLogicError) as err:
        owner_call(sw.w3, sw.account, "setPolicy", data, signature, dev_account(0), nonce=nonce)
    assert "0x" + Web3.keccak(text="BadOwnerSignature()")[:4].hex() in str(err.value.data)
    assert contract.functions.ownerNonce().call() == nonce
    assert contract.functions.maxValue().call() == CAP
    # the same action signed at the enrolled path goes through
    _, good = sign_owner_action(sw.w3, sw.account, "setPolicy", data, sw.sign_line, nonce=nonce)
    owner_call(sw.w3, sw.account, "setPolicy", data, good, dev_account(0), nonce=nonce)
    assert contract.functions.maxValue().call() == 10**12
    sw.act("setPolicy", CAP, WINDOW, False)


def test_envelope_is_the_abi_encoding_the_account_accepts(world: WorldInfo, sw: SmartWorld) -> None:
    from eth_abi.abi import encode

    from x402_agent.signer import TokenDomain, TransferAuthorization

    now = sw.w3.eth.get_block("latest")["timestamp"]
    auth = TransferAuthorization(
        token=TokenDomain(world.usdc.name, world.usdc.version, world.chain_id, world.usdc.address),
        from_address=sw.account,
        to=dev_account(4).address,
        value=CAP,
        valid_after=0,
        valid_before=now + 600,
        nonce="0x" + "ab" * 32,
    )
    envelope = bytes.fromhex(sw.session.sign_authorization(auth).signature.removeprefix("0x"))
    assert len(envelope) == 384
    assert envelope == encode(
        ["address", "address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [
            auth.token.verifying_contract,
            auth.from_address,
            auth.to,
            auth.value,
            auth.valid_after,
            auth.valid_before,
            bytes.fromhex("ab" * 32),
            envelope[288:353],
        ],
    )
    assert envelope[352] in (27, 28)
    check = account_contract(sw.w3, sw.account).functions.isValidSignature
    assert check(auth.digest(), envelope).call() == bytes.fromhex("1626ba7e")
    over = TransferAuthorization(**{**auth.__dict__, "value": CAP + 1})
    over_env = bytes.fromhex(sw.session.sign_authorization(over).signature.removeprefix("0x"))
    assert check(over.digest(), over_env).call() == bytes.fromhex("ffffffff")
    with pytest.raises(ValueError):
        sw.session.sign_authorization(
            TransferAuthorization(**{**auth.__dict__, "from_address": dev_account(4).address})
        )


def test_owner_action_signed_as_eip712_through_trezorlib(world: WorldInfo, sw: SmartWorld) -> None:
    from x402_agent.chain.account import owner_action_typed_data
    from x402_agent.device.trezor import sign_typed_data

    contract = account_contract(sw.w3, sw.account)
    payee = dev_account(7).address
    data = encode_action(sw.w3, sw.account, "setPayee", [payee, True])
    nonce = contract.functions.ownerNonce().call()
    typed = owner_action_typed_data(sw.w3, sw.account, data, nonce)
    signature = bytes.fromhex(sign_typed_data(typed, DEFAULT_APPROVAL_PATH, world.device_path)[2:])
    # the digest the device signed is the one the contract rebuilds
    from eth_account.messages import encode_typed_data
    from eth_utils.crypto import keccak

    encoded = encode_typed_data(full_message=typed)
    assert (
        keccak(b"\x19" + encoded.version + encoded.header + encoded.body)
        == contract.functions.ownerTypedDigest(data, nonce).call()
    )
    with pytest.raises(ContractLogicError):  # bound to its nonce: useless at the next one
        contract.functions.ownerCall(data, nonce + 1, signature).call()
    owner_call(sw.w3, sw.account, "setPayee", data, signature, dev_account(0), nonce=nonce)
    assert contract.functions.payeeAllowed(payee).call()
    assert contract.functions.ownerNonce().call() == nonce + 1
