"""ERC-4337 v0.7 user operations through a real bundler (npm alto) on anvil, with the direct
``EntryPoint.handleOps`` fallback, for an X402Account whose owner signs (EIP-191) the userOpHash."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from web3 import Web3

from x402_agent.chain import (
    ENTRY_POINT_V07,
    PackedUserOperation,
    deploy_entry_point_v07,
    entry_point_v07_abi,
    pack_account_gas_limits,
    pack_gas_fees,
    user_op_hash_v07,
)
from x402_agent.chain.account import account_contract, send_transaction
from x402_agent.chain.bundler import BundlerClient, UserOpResult, submit_user_op
from x402_agent.devnet.anvil import Anvil, dev_account
from x402_agent.devnet.bundler import AltoBundler
from x402_agent.devnet.proc import ProcessStartError
from x402_agent.errors import ChainError

CHAIN_ID = 43372
FUNDER = dev_account(0)
RELAYER = dev_account(7)  # pays for handleOps when there is no bundler
EXECUTOR, UTILITY = dev_account(8), dev_account(9)  # alto's keys
GAS_PRICE = (10**9, 3 * 10**9)  # (maxPriorityFeePerGas, maxFeePerGas) for ops built without estimates
SENT = 12_345  # wei per transfer


@pytest.fixture(scope="module")
def w3() -> Iterator[Web3]:
    anvil = Anvil.start(CHAIN_ID)
    try:
        web3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        assert deploy_entry_point_v07(web3, FUNDER) == ENTRY_POINT_V07
        yield web3
    finally:
        anvil.stop()


@pytest.fixture(scope="module")
def alto(w3: Web3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AltoBundler]:
    rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
    with AltoBundler(
        rpc_url,
        ENTRY_POINT_V07,
        executor_key=EXECUTOR.key,
        utility_key=UTILITY.key,
        log_dir=tmp_path_factory.mktemp("alto"),
    ) as bundler:
        yield bundler


@pytest.fixture
def client(alto: AltoBundler) -> Iterator[BundlerClient]:
    with BundlerClient(alto.url, ENTRY_POINT_V07) as bundler_client:
        yield bundler_client


# ---- an account that validates user operations ----


def deploy_owned_account(w3: Web3, owner: LocalAccount) -> ChecksumAddress:
    """A fresh X402Account owned by ``owner``: the one place that knows how accounts are deployed."""
    try:
        from x402_agent.chain.factory import AccountConfig, create_account, deploy_factory
    except ImportError:  # before the factory: a directly deployed account
        from x402_agent.chain.account import deploy_account  # type: ignore[attr-defined]

        return to_checksum_address(deploy_account(w3, owner.address, FUNDER))
    deploy_factory(w3, FUNDER)
    unused = Account.create().address  # no session key, token or payee matters here
    config = AccountConfig(
        owner=owner.address,
        session_key=unused,
        session_expiry=2**40,
        token=unused,
        max_value=1,
        max_window=60,
        allowance=1,
        period=60,
    )
    address, _vault, _gas = create_account(w3, config, FUNDER)
    return address


@dataclass
class Wallet:
    address: ChecksumAddress
    owner: LocalAccount


@pytest.fixture
def wallet(w3: Web3) -> Wallet:
    owner = Account.create()
    address = deploy_owned_account(w3, owner)
    send_transaction(w3, FUNDER, {"to": address, "value": 10**18})  # pays its own prefund
    return Wallet(address, owner)


def nonce(w3: Web3, sender: str) -> int:
    ep = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    return int(ep.functions.getNonce(sender, 0).call())


def transfer_op(
    w3: Web3, wallet: Wallet, to: str, value: int = SENT, fees: tuple[int, int] = GAS_PRICE
) -> PackedUserOperation:
    """An unsigned op: the account sends ``value`` wei to ``to`` (generous fixed gas limits)."""
    call = account_contract(w3, wallet.address).encode_abi("execute", args=[to, value, b""])
    return PackedUserOperation(
        sender=wallet.address, nonce=nonce(w3, wallet.address), initCode=b"",
        callData=bytes.fromhex(call.removeprefix("0x")),
        accountGasLimits=pack_account_gas_limits(200_000, 100_000), preVerificationGas=60_000,
        gasFees=pack_gas_fees(*fees), paymasterAndData=b"", signature=b"",
    )  # fmt: skip


def signed(op: PackedUserOperation, signer: LocalAccount) -> PackedUserOperation:
    """EIP-191 signature over the v0.7 userOpHash, as X402Account's _validateSignature expects."""
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, CHAIN_ID)
    return dataclasses.replace(op, signature=bytes(signer.sign_message(encode_defunct(digest)).signature))


def assert_landed(w3: Web3, result: UserOpResult, op: PackedUserOperation, via: str) -> None:
    assert result.via == via and result.success
    assert result.user_op_hash == "0x" + user_op_hash_v07(op, ENTRY_POINT_V07, CHAIN_ID).hex()
    receipt = w3.eth.get_transaction_receipt(result.transaction_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 1
    assert result.gas_used > 0 and result.actual_gas_cost > 0


# ---- alto itself ----


def test_alto_serves_the_entry_point(alto: AltoBundler, client: BundlerClient) -> None:
    assert client.supported_entry_points() == [ENTRY_POINT_V07]
    assert client.chain_id() == CHAIN_ID
    assert alto.url.startswith("http://127.0.0.1:")
    assert alto.startup_seconds is not None and alto.startup_seconds < 30
    print(f"alto ready in {alto.startup_seconds:.2f}s")
    assert alto.log_path is not None and "Server listening" in alto.log_path.read_text()
    assert "0x" + EXECUTOR.key.hex().removeprefix("0x") not in " ".join(alto.argv("node"))  # keys: env only


def test_alto_stops_its_whole_process_group(w3: Web3) -> None:
    rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
    bundler = AltoBundler(rpc_url, executor_key=dev_account(6).key, utility_key=dev_account(5).key)
    with bundler:
        pid, log_dir = bundler.pid, bundler.log_path
        assert pid is not None and log_dir is not None and log_dir.exists()
        os.killpg(pid, 0)  # the group is alive
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert bundler.pid is None and not log_dir.exists()  # our own temporary log folder is gone
    bundler.stop()  # idempotent


def test_failed_start_quotes_alto_log(tmp_path: Path) -> None:
    bundler = AltoBundler(
        "http://127.0.0.1:1",
        executor_key=EXECUTOR.key,
        utility_key=UTILITY.key,
        log_dir=tmp_path,
        ready_timeout_s=20,
    )
    with pytest.raises(ProcessStartError, match="eth_chainId") as failed:
        bundler.start()
    assert "exited with code" in str(failed.value)
    assert bundler.pid is None and (tmp_path / "alto.log").read_text()


# ---- (a) through alto ----


def test_user_op_through_alto(w3: Web3, client: BundlerClient, wallet: Wallet) -> None:
    dest = Account.create().address
    max_fee, max_priority = client.gas_price()
    op = transfer_op(w3, wallet, dest, fees=(max_priority, max_fee))
    # Estimation runs validation: the dummy signature must recover (to anyone) without reverting.
    dummy = signed(op, Account.create())
    estimate = client.estimate(dummy)
    assert estimate.verification_gas_limit > 0 and estimate.call_gas_limit > 0
    op = signed(estimate.apply(op), wallet.owner)

    result = submit_user_op(w3, op, bundler=client, relayer_key=None, timeout=30)

    assert_landed(w3, result, op, "bundler")
    assert w3.eth.get_balance(dest) == SENT
    assert nonce(w3, wallet.address) == op.nonce + 1
    receipt = client.receipt(result.user_op_hash)
    assert receipt is not None and receipt["success"] is True
    assert receipt["receipt"]["transactionHash"] == result.transaction_hash
    # alto bundled it from its executor key, not from our relayer
    tx = w3.eth.get_transaction(result.transaction_hash)  # type: ignore[arg-type]
    assert tx["from"] == EXECUTOR.address


# ---- (b) no bundler: handleOps from the relayer key ----


@pytest.fixture(params=["stopped", "not_a_bundler", "wrong_path"])
def unavailable(request: pytest.FixtureRequest, w3: Web3, alto: AltoBundler) -> Iterator[BundlerClient]:
    rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
    if request.param == "stopped":
        with AltoBundler(rpc_url, executor_key=dev_account(6).key, utility_key=dev_account(5).key) as gone:
            url = gone.url
    elif request.param == "not_a_bundler":
        url = rpc_url  # anvil: eth_sendUserOperation is "method not found"
    else:
        url = alto.url + "/no/such/route"
    with BundlerClient(url) as client:
        yield client


def test_falls_back_to_handle_ops(w3: Web3, unavailable: BundlerClient, wallet: Wallet) -> None:
    dest = Account.create().address
    op = signed(transfer_op(w3, wallet, dest), wallet.owner)
    relayer_before = w3.eth.get_transaction_count(RELAYER.address)

    result = submit_user_op(w3, op, bundler=unavailable, relayer_key=RELAYER.key, timeout=30)

    assert_landed(w3, result, op, "handleOps")
    assert w3.eth.get_balance(dest) == SENT
    assert w3.eth.get_transaction_count(RELAYER.address) == relayer_before + 1
    assert w3.eth.get_transaction(result.transaction_hash)["from"] == RELAYER.address  # type: ignore[arg-type]


def test_no_bundler_and_no_relayer_is_an_error(w3: Web3, wallet: Wallet) -> None:
    dest = Account.create().address
    op = signed(transfer_op(w3, wallet, dest), wallet.owner)
    rpc_url = w3.provider.endpoint_uri  # type: ignore[attr-defined]
    with BundlerClient(rpc_url) as not_a_bundler, pytest.raises(ChainError) as failed:
        submit_user_op(w3, op, bundler=not_a_bundler, relayer_key=None, timeout=5)
    assert failed.value.reason == "bundler_unavailable"
    assert w3.eth.get_balance(dest) == 0 and nonce(w3, wallet.address) == op.nonce


# ---- (c) a bad signature changes nothing ----


@pytest.mark.parametrize("route", ["bundler", "handleOps"])
def test_bad_signature_is_rejected(w3: Web3, client: BundlerClient, wallet: Wallet, route: str) -> None:
    dest = Account.create().address
    op = signed(transfer_op(w3, wallet, dest), Account.create())  # not the owner
    balance, relayer_nonce = w3.eth.get_balance(wallet.address), w3.eth.get_transaction_count(RELAYER.address)
    block = w3.eth.block_number

    with BundlerClient(w3.provider.endpoint_uri) as not_a_bundler:  # type: ignore[attr-defined]
        bundler = client if route == "bundler" else not_a_bundler
        with pytest.raises(ChainError) as failed:
            submit_user_op(w3, op, bundler=bundler, relayer_key=RELAYER.key, timeout=10)

    error = failed.value
    if route == "bundler":  # alto refuses it; no fallback for a refused op
        assert error.reason == "bundler_signature_invalid" and "AA24 signature error" in error.message
        assert "AA24: the account refused the signature" in error.message  # in words
    else:  # the EntryPoint refuses it in simulation: no transaction is sent
        assert error.reason == "user_op_rejected"
        assert error.details["entry_point_error"] == "AA24 signature error"
        assert "bundler_error" in error.details
    assert error.to_dict()["reason"] == error.reason
    assert w3.eth.get_balance(dest) == 0
    assert w3.eth.get_balance(wallet.address) == balance
    assert nonce(w3, wallet.address) == op.nonce
    assert w3.eth.get_transaction_count(RELAYER.address) == relayer_nonce
    assert w3.eth.block_number == block  # nothing was mined at all


# ---- an included op whose call reverts ----


def test_reverting_call_is_user_op_failed(w3: Web3, client: BundlerClient, wallet: Wallet) -> None:
    dest = Account.create().address
    too_much = signed(transfer_op(w3, wallet, dest, value=10**21), wallet.owner)  # more than it holds

    with pytest.raises(ChainError) as failed:
        submit_user_op(w3, too_much, bundler=client, relayer_key=None, timeout=30)

    error = failed.value
    assert error.reason == "user_op_failed" and error.details["via"] == "bundler"
    assert error.details["actual_gas_cost"] > 0  # included: the account paid for the gas
    assert w3.eth.get_balance(dest) == 0
    assert nonce(w3, wallet.address) == too_much.nonce + 1

    # the same through handleOps, reported rather than raised
    again = signed(transfer_op(w3, wallet, dest, value=10**21), wallet.owner)
    result = submit_user_op(w3, again, bundler=None, relayer_key=RELAYER.key, timeout=30, check=False)
    assert result.via == "handleOps" and not result.success and result.actual_gas_cost > 0
    assert w3.eth.get_balance(dest) == 0


# ---- the RPC form ----


def test_rpc_form_round_trips() -> None:
    factory, paymaster = Account.create().address, Account.create().address
    op = PackedUserOperation(
        sender=Account.create().address, nonce=(7 << 64) | 3,
        initCode=bytes.fromhex(factory[2:]) + b"\x01\x02",
        callData=b"\xb6\x1d\x27\xf6", accountGasLimits=pack_account_gas_limits(111, 222),
        preVerificationGas=333, gasFees=pack_gas_fees(444, 555),
        paymasterAndData=bytes.fromhex(paymaster[2:]) + (66).to_bytes(16, "big") + (77).to_bytes(16, "big")
        + b"pm",
        signature=b"\x99" * 65,
    )  # fmt: skip
    rpc = op.to_rpc()
    assert rpc["factory"] == factory and rpc["factoryData"] == "0x0102"
    assert (rpc["verificationGasLimit"], rpc["callGasLimit"]) == ("0x6f", "0xde")
    assert (rpc["maxPriorityFeePerGas"], rpc["maxFeePerGas"]) == ("0x1bc", "0x22b")
    assert rpc["paymaster"] == paymaster and rpc["paymasterData"] == "0x" + b"pm".hex()
    assert (rpc["paymasterVerificationGasLimit"], rpc["paymasterPostOpGasLimit"]) == ("0x42", "0x4d")
    assert PackedUserOperation.from_rpc(rpc) == op
    bare = dataclasses.replace(op, initCode=b"", paymasterAndData=b"")
    assert not {"factory", "paymaster"} & set(bare.to_rpc())
    assert PackedUserOperation.from_rpc(bare.to_rpc()) == bare
