"""A stolen session key burns at most a stated amount of ETH (issue 12, item 4).

Real parts: anvil with the EntryPoint v0.7 at its canonical address, the project's X402Account
and vault made by its factory, the alto bundler, the official VerifyingPaymaster of
@account-abstraction/contracts 0.7 (a real paymaster that would pay), and the device simulator
owning the account. The thief holds the session key and submits ``handleOps`` itself, naming a
beneficiary of its own: the beneficiary is a handleOps argument the account never sees, so the
bound is on what the account pays, whoever collects it.

The bound (X402Account, x402_agent/chain/gas.py): session-key operations are paid from the
EntryPoint deposit only; ``refill``'s execution tops the deposit up from the account's ETH by at
most ``allowance`` per (whole) period. Between the theft and the revocation:
ETH lost <= deposit + allowance left this period + allowance * periods started after.
With the defaults (0.01 ETH per day) and the deposit refill keeps (at most 0.01 ETH): at most
0.02 ETH on the first day, 0.01 ETH per day after.

This module runs a world of its own: its last test moves the chain's clock a day forward.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import advance_time, rpc
from erc7562 import chain_code, check_validation, trace_handle_ops
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.logs import DISCARD

from x402_agent.chain.account import account_contract, run_owner_action, send_transaction
from x402_agent.chain.bundler import BundlerClient, decode_entry_point_error
from x402_agent.chain.entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from x402_agent.chain.gas import (
    DEFAULT_GAS_ALLOWANCE,
    DEFAULT_GAS_CAPS,
    DEFAULT_GAS_PERIOD,
    GasCaps,
    GasFields,
    choose_fields,
    deposit_of,
)
from x402_agent.chain.userop import (
    PackedUserOperation,
    pack_account_gas_limits,
    pack_gas_fees,
    user_op_hash_v07,
)
from x402_agent.chain.wallet import HotWallet, open_hot_wallet
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.provision import provision_smart_account_home
from x402_agent.errors import ChainError
from x402_agent.home import AgentHome, open_home
from x402_agent.paths import PROJECT_ROOT
from x402_agent.signer import LocalKeySigner

CLI = [sys.executable, "-m", "x402_agent.cli"]
GWEI = 10**9
SIG_VALIDATION_FAILED = 1
VICTIM_DEPOSIT = 5 * 10**16
CAPPED_FIELDS = (
    "verification_gas_limit",
    "call_gas_limit",
    "pre_verification_gas",
    "max_fee_per_gas",
    "max_priority_fee_per_gas",
)


@pytest.fixture(scope="module")
def aa_world() -> Iterator[WorldInfo]:
    with LocalWorld(bundler=True) as info:
        assert info.bundler_url is not None
        yield info


@pytest.fixture(scope="module")
def w3(aa_world: WorldInfo) -> Web3:
    return Web3(Web3.HTTPProvider(aa_world.rpc_url))


def _home(world: WorldInfo, tmp_path: Path, name: str = "home") -> AgentHome:
    return provision_smart_account_home(world, tmp_path / name)


def _session_key(home: AgentHome) -> LocalAccount:
    """What the thief copied off the agent host."""
    signer = home.config.signer
    assert signer.kind == "smart_account"
    key = LocalKeySigner.from_keystore(home.path(signer.keystore), home.keystore_password())
    stolen: LocalAccount = Account.from_key(key.private_key_bytes())
    return stolen


def _thief() -> tuple[LocalAccount, str]:
    """A funded key that submits handleOps, and the beneficiary it names (a fresh address)."""
    submitter: LocalAccount = Account.create()
    return submitter, Account.create().address


def _fund_eth(world: WorldInfo, to: str, wei: int) -> None:
    rpc(world.rpc_url, "anvil_setBalance", to, hex(wei))


def max_cost(op: PackedUserOperation) -> int:
    """The EntryPoint v0.7's required prefund: every gas limit times maxFeePerGas."""
    pad = op.paymasterAndData
    paymaster_gas = int.from_bytes(pad[20:36], "big") + int.from_bytes(pad[36:52], "big") if pad else 0
    gas = op.verification_gas_limit + op.call_gas_limit + paymaster_gas + op.preVerificationGas
    return gas * op.max_fee_per_gas


def _caps(w3: Web3, account: str) -> GasCaps:
    return GasCaps(*(int(v) for v in account_contract(w3, account).functions.gasCaps().call()))


def _thief_op(
    w3: Web3,
    account: str,
    key: LocalAccount,
    caps: GasCaps,
    *,
    max_fee: int,
    paymaster_and_data: bytes = b"",
    **over: int,
) -> PackedUserOperation:
    """A refill(0) signed by the stolen key, every gas field at its cap unless ``over`` says."""
    fields = {**dataclasses.asdict(caps), "max_fee_per_gas": max_fee, "max_priority_fee_per_gas": max_fee}
    fields["max_priority_fee_per_gas"] = min(
        fields["max_priority_fee_per_gas"], caps.max_priority_fee_per_gas
    )
    fields.update(over)
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    call = account_contract(w3, account).encode_abi("refill", args=[0])
    op = PackedUserOperation(
        sender=account,
        nonce=int(entry_point.functions.getNonce(account, 7).call()),
        initCode=b"",
        callData=bytes.fromhex(call[2:]),
        accountGasLimits=pack_account_gas_limits(fields["verification_gas_limit"], fields["call_gas_limit"]),
        preVerificationGas=fields["pre_verification_gas"],
        gasFees=pack_gas_fees(fields["max_priority_fee_per_gas"], fields["max_fee_per_gas"]),
        paymasterAndData=paymaster_and_data,
        signature=b"",
    )
    return _signed(w3, op, key)


def _signed(w3: Web3, op: PackedUserOperation, key: LocalAccount) -> PackedUserOperation:
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, w3.eth.chain_id)
    return dataclasses.replace(op, signature=bytes(key.sign_message(encode_defunct(digest)).signature))


def _validation(w3: Web3, op: PackedUserOperation, missing: int = 0) -> int:
    """``validateUserOp`` as the EntryPoint calls it (an eth_call from the EntryPoint's address)."""
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, w3.eth.chain_id)
    result = account_contract(w3, op.sender).functions.validateUserOp(op.as_tuple(), digest, missing)
    return int(result.call({"from": ENTRY_POINT_V07}))


def _handle_ops(w3: Web3, op: PackedUserOperation, submitter: LocalAccount, beneficiary: str) -> int:
    """The thief's own handleOps, paying ``beneficiary``; the op's actualGasCost."""
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    call = entry_point.functions.handleOps([op.as_tuple()], beneficiary)
    gas = call.estimate_gas({"from": submitter.address})  # raises FailedOp when refused
    data = entry_point.encode_abi("handleOps", args=[[op.as_tuple()], beneficiary])
    receipt = send_transaction(w3, submitter, {"to": ENTRY_POINT_V07, "data": data, "gas": gas + gas // 5})
    [event] = entry_point.events.UserOperationEvent().process_receipt(receipt, errors=DISCARD)
    return int(event["args"]["actualGasCost"])


def _refused(w3: Web3, op: PackedUserOperation, submitter: LocalAccount, beneficiary: str) -> str:
    """The EntryPoint's refusal of the thief's handleOps (simulated: sent, it would revert)."""
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    with pytest.raises((ContractLogicError, ContractCustomError)) as refused:
        entry_point.functions.handleOps([op.as_tuple()], beneficiary).estimate_gas(
            {"from": submitter.address}
        )
    data = refused.value.data
    return str(decode_entry_point_error(data if isinstance(data, str | bytes) else None))


def _eth(w3: Web3, address: str) -> int:
    return int(w3.eth.get_balance(Web3.to_checksum_address(address)))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


# ---- defaults, and our own top-ups within the caps ----


def test_new_account_has_the_default_caps_and_allowance(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    wallet = open_hot_wallet(_home(aa_world, tmp_path))
    try:
        assert _caps(w3, wallet.account) == DEFAULT_GAS_CAPS  # gas.py mirrors the contract
        allowance, period, _start, spent = account_contract(w3, wallet.account).functions.gasBudget().call()
        assert (allowance, period, spent) == (DEFAULT_GAS_ALLOWANCE, DEFAULT_GAS_PERIOD, 0)
        assert deposit_of(w3, wallet.account) == 0
    finally:
        wallet.close()


def _assert_within_caps(op: PackedUserOperation, caps: GasCaps) -> None:
    assert op.paymasterAndData == b""
    assert op.verification_gas_limit <= caps.verification_gas_limit
    assert op.call_gas_limit <= caps.call_gas_limit
    assert op.preVerificationGas <= caps.pre_verification_gas
    assert op.max_fee_per_gas <= caps.max_fee_per_gas
    assert op.max_priority_fee_per_gas <= caps.max_priority_fee_per_gas


def test_top_up_through_alto_funds_the_deposit_and_status_states_the_bound(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    wallet = open_hot_wallet(home)
    try:
        _assert_within_caps(wallet.refill_operation(1), _caps(w3, wallet.account))
        eth_before = _eth(w3, wallet.account)
        first = wallet.top_up(100_000)
        assert first.via == "bundler" and first.success
        # Before the first operation the relayer asked the account to move its own ETH in
        # (refill(0)): the whole of this period's allowance; the operation was paid from it.
        assert eth_before - _eth(w3, wallet.account) == DEFAULT_GAS_ALLOWANCE
        assert deposit_of(w3, wallet.account) == DEFAULT_GAS_ALLOWANCE - first.actual_gas_cost
        second = wallet.top_up(100_000)  # the deposit covers it: no relayer transaction
        assert second.via == "bundler" and second.success
        assert eth_before - _eth(w3, wallet.account) == DEFAULT_GAS_ALLOWANCE
        assert wallet.hot_balance() == 200_000
        deposit = DEFAULT_GAS_ALLOWANCE - first.actual_gas_cost - second.actual_gas_cost
    finally:
        wallet.close()
    status = _cli(home.root, "wallet", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["gas_deposit"] == deposit
    assert shown["gas_allowance"] == DEFAULT_GAS_ALLOWANCE and shown["gas_period"] == DEFAULT_GAS_PERIOD
    assert shown["gas_allowance_left"] == 0  # spent on the deposit this period
    assert shown["gas_caps"] == dataclasses.asdict(DEFAULT_GAS_CAPS)
    assert shown["stolen_key_bound"] == (
        f"{deposit} wei now (deposit {deposit} + 0 left this period) "
        f"+ {DEFAULT_GAS_ALLOWANCE} wei per {DEFAULT_GAS_PERIOD} s period after"
    )
    text = _cli(home.root, "wallet", "status")
    assert text.returncode == 0 and "stolen_key_bound" in text.stdout


def test_top_up_through_the_relayer_when_the_bundler_is_down(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    config = home.config.model_copy(
        update={"signer": home.config.signer.model_copy(update={"bundler_url": "http://127.0.0.1:9"})}
    )  # nothing listens on the discard port
    (home.root / "config.json").write_text(config.model_dump_json(by_alias=True))
    wallet = open_hot_wallet(open_home(home.root))
    try:
        result = wallet.top_up(100_000)
        assert result.via == "handleOps" and result.success
        assert wallet.hot_balance() == 100_000
        assert deposit_of(w3, wallet.account) == DEFAULT_GAS_ALLOWANCE - result.actual_gas_cost
    finally:
        wallet.close()


def test_without_a_relayer_an_empty_deposit_is_gas_deposit_low(aa_world: WorldInfo, tmp_path: Path) -> None:
    """A bundler-only home cannot seed the deposit itself: a clear error, nothing sent."""
    home = _home(aa_world, tmp_path)
    opened = open_hot_wallet(home)
    wallet = HotWallet(
        opened.w3,
        opened.config,
        opened.account,
        opened.vault,
        _session_key(home).key,
        bundler=BundlerClient(str(aa_world.bundler_url), ENTRY_POINT_V07),
    )
    try:
        with pytest.raises(ChainError) as low:
            wallet.top_up(100_000)
        assert low.value.reason == "gas_deposit_low"
        assert low.value.details["deposit"] == 0 and not low.value.details["relayer"]
        assert wallet.hot_balance() == 0
    finally:
        wallet.close()
        opened.close()


def test_the_deploying_operation_prefunds_itself_within_one_allowance(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    """Bundler only, no relayer, the account not deployed yet (its address holds ETH): the
    operation that deploys it may pay its prefund from the account's ETH (once: initCode), at
    most one allowance, counted in the first period. A thief's deploying operation at the caps
    would need more than that: refused."""
    home = provision_smart_account_home(aa_world, tmp_path / "home", deploy=False)
    opened = open_hot_wallet(home)
    key = _session_key(home)
    bundler = BundlerClient(str(aa_world.bundler_url), ENTRY_POINT_V07)
    wallet = HotWallet(opened.w3, opened.config, opened.account, opened.vault, key.key, bundler=bundler)
    account = wallet.account
    try:
        assert not wallet.is_deployed() and _eth(w3, account) > DEFAULT_GAS_ALLOWANCE
        caps, fee = DEFAULT_GAS_CAPS, DEFAULT_GAS_CAPS.max_fee_per_gas
        greedy = dataclasses.replace(
            wallet.refill_operation(0),
            accountGasLimits=pack_account_gas_limits(caps.verification_gas_limit, caps.call_gas_limit),
            preVerificationGas=caps.pre_verification_gas,
            gasFees=pack_gas_fees(caps.max_priority_fee_per_gas, fee),
        )
        greedy = _signed(w3, greedy, key)
        assert max_cost(greedy) > DEFAULT_GAS_ALLOWANCE
        submitter, beneficiary = _thief()
        _fund_eth(aa_world, submitter.address, 10**18)
        assert "AA2" in _refused(w3, greedy, submitter, beneficiary)
        _alto_refuses(aa_world, greedy)
        assert not wallet.is_deployed()

        eth_before = _eth(w3, account)
        result = wallet.top_up(100_000)
        assert result.via == "bundler" and result.success and wallet.is_deployed()
        # prefund and top-up together: exactly one allowance out of the account's ETH
        assert eth_before - _eth(w3, account) == DEFAULT_GAS_ALLOWANCE
        assert deposit_of(w3, account) == DEFAULT_GAS_ALLOWANCE - result.actual_gas_cost
        allowance, period, start, spent = account_contract(w3, account).functions.gasBudget().call()
        now = int(w3.eth.get_block("latest")["timestamp"])
        assert spent == allowance and start == now - now % period  # the current whole period
        assert wallet.hot_balance() == 100_000
    finally:
        wallet.close()
        opened.close()


def test_our_fields_stay_within_the_caps_or_say_why_not() -> None:
    """The fields our top-ups pick: ours when the caps allow, else the caps; a base fee that
    leaves no room under the fee cap is ``gas_fee_above_cap`` (nothing is signed)."""
    fields = choose_fields(DEFAULT_GAS_CAPS, base_fee=GWEI)
    limits = (fields.verification_gas_limit, fields.call_gas_limit, fields.pre_verification_gas)
    assert limits == (150_000, 200_000, 60_000)
    assert (fields.max_fee_per_gas, fields.max_priority_fee_per_gas) == (3 * GWEI, GWEI)
    assert fields.max_cost == 410_000 * 3 * GWEI
    deploying = choose_fields(DEFAULT_GAS_CAPS, base_fee=GWEI, deploying=True)
    assert deploying.verification_gas_limit == 800_000 <= DEFAULT_GAS_CAPS.verification_gas_limit
    tight = GasCaps(400_000, 100_000, 50_000, 2 * GWEI, GWEI // 2)
    assert choose_fields(tight, base_fee=GWEI, deploying=True) == GasFields(
        400_000, 100_000, 50_000, 2 * GWEI, GWEI // 2
    )
    with pytest.raises(ChainError) as expensive:
        choose_fields(tight, base_fee=2 * GWEI)
    assert expensive.value.reason == "gas_fee_above_cap"
    assert expensive.value.details["max_fee_cap"] == 2 * GWEI


# ---- what the stolen key cannot do ----


@dataclasses.dataclass(frozen=True)
class Victim:
    wallet: HotWallet
    key: LocalAccount  # the stolen session key


@pytest.fixture(scope="module")
def victim(aa_world: WorldInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victim]:
    """An account whose deposit one genuine top-up funded, with ETH left in it. Someone added
    to the deposit (anyone may): 0.05 ETH, so that ops refused for one field would be prefunded."""
    home = _home(aa_world, tmp_path_factory.mktemp("victim"))
    wallet = open_hot_wallet(home)
    wallet.top_up(100_000)
    entry_point = wallet.w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    extra = VICTIM_DEPOSIT - deposit_of(wallet.w3, wallet.account)
    data = entry_point.encode_abi("depositTo", args=[wallet.account])
    send_transaction(wallet.w3, dev_account(0), {"to": ENTRY_POINT_V07, "data": data, "value": extra})
    try:
        yield Victim(wallet, _session_key(home))
    finally:
        wallet.close()


def _unchanged(w3: Web3, account: str) -> tuple[int, int]:
    return deposit_of(w3, account), _eth(w3, account)


def _alto_refuses(world: WorldInfo, op: PackedUserOperation) -> None:
    with BundlerClient(str(world.bundler_url), ENTRY_POINT_V07) as alto, pytest.raises(ChainError) as refused:
        alto.send(op)
    # alto's ERC-7769 codes: -32507 for AA24 (signature, caps), -32500 for AA21 (prefund)
    assert refused.value.reason in {"bundler_signature_invalid", "bundler_validation_reverted"}


@pytest.mark.parametrize("field", CAPPED_FIELDS)
def test_a_gas_field_above_its_cap_is_refused(
    aa_world: WorldInfo, w3: Web3, victim: Victim, field: str
) -> None:
    account = victim.wallet.account
    caps = _caps(w3, account)
    submitter, beneficiary = _thief()
    _fund_eth(aa_world, submitter.address, 10**18)
    fee = 10**6
    over = {field: getattr(caps, field) + 1}
    if field == "max_fee_per_gas":  # smaller limits keep the prefund within the deposit
        over.update(verification_gas_limit=200_000, call_gas_limit=100_000, pre_verification_gas=100_000)
    if field == "max_priority_fee_per_gas":
        fee = over[field]  # a priority fee above the max fee would only be clipped
    op = _thief_op(w3, account, victim.key, caps, max_fee=fee, **over)
    assert max_cost(op) <= deposit_of(w3, account)  # only the inflated field is wrong
    assert _validation(w3, op) == SIG_VALIDATION_FAILED
    at_cap = _thief_op(w3, account, victim.key, caps, max_fee=fee, **{**over, field: getattr(caps, field)})
    assert _validation(w3, at_cap) != SIG_VALIDATION_FAILED  # the same op at the cap passes
    before = _unchanged(w3, account)
    assert "AA24" in _refused(w3, op, submitter, beneficiary)
    _alto_refuses(aa_world, op)
    assert _unchanged(w3, account) == before and _eth(w3, beneficiary) == 0


def _verifying_paymaster(w3: Web3, signer: LocalAccount) -> str:
    """The official VerifyingPaymaster (npm artifact), deposited so that it would pay."""
    artifact = json.loads(
        (
            PROJECT_ROOT / "node_modules/@account-abstraction/contracts/artifacts/VerifyingPaymaster.json"
        ).read_text()
    )
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(ENTRY_POINT_V07, signer.address).data_in_transaction
    receipt = send_transaction(w3, dev_account(0), {"data": data, "gas": 3_000_000})
    address = str(receipt["contractAddress"])
    paymaster = w3.eth.contract(address=address, abi=artifact["abi"])
    send_transaction(
        w3, dev_account(0), {"to": address, "data": paymaster.encode_abi("deposit"), "value": 10**18}
    )
    return address


def _with_paymaster(
    w3: Web3, op: PackedUserOperation, paymaster: str, signer: LocalAccount, key: LocalAccount
) -> PackedUserOperation:
    """``op`` sponsored: paymaster | gas limits | abi.encode(validUntil, validAfter) | signature."""
    artifact = json.loads(
        (
            PROJECT_ROOT / "node_modules/@account-abstraction/contracts/artifacts/VerifyingPaymaster.json"
        ).read_text()
    )
    head = bytes.fromhex(paymaster[2:]) + (200_000).to_bytes(16, "big") + (0).to_bytes(16, "big") + bytes(64)
    draft = dataclasses.replace(op, paymasterAndData=head + bytes(65))
    contract = w3.eth.contract(address=paymaster, abi=artifact["abi"])
    digest = contract.functions.getHash(draft.as_tuple(), 0, 0).call()
    approval = bytes(signer.sign_message(encode_defunct(digest)).signature)
    return _signed(w3, dataclasses.replace(op, paymasterAndData=head + approval), key)


def test_a_paymaster_is_refused(aa_world: WorldInfo, w3: Web3, victim: Victim) -> None:
    """The paymaster would pay (it is deposited and signed the op): the account still refuses,
    since a paymaster's gas limits and postOp escape the caps."""
    account = victim.wallet.account
    caps = _caps(w3, account)
    sponsor = Account.create()
    paymaster = _verifying_paymaster(w3, sponsor)
    plain = _thief_op(w3, account, victim.key, caps, max_fee=10**6)
    op = _with_paymaster(w3, plain, paymaster, sponsor, victim.key)
    assert _validation(w3, op) == SIG_VALIDATION_FAILED
    submitter, beneficiary = _thief()
    _fund_eth(aa_world, submitter.address, 10**18)
    before = _unchanged(w3, account)
    assert "AA24" in _refused(w3, op, submitter, beneficiary)
    _alto_refuses(aa_world, op)
    assert _unchanged(w3, account) == before


def test_an_op_the_deposit_cannot_prefund_never_pulls_the_account_eth(
    aa_world: WorldInfo, w3: Web3, victim: Victim
) -> None:
    """Every field within its cap, a foreign beneficiary, but the prefund exceeds the deposit:
    the owner's operations would pay the rest from the account's ETH; a session key's may not."""
    account = victim.wallet.account
    caps = _caps(w3, account)
    deposit = deposit_of(w3, account)
    _fund_eth(aa_world, account, 10**18)
    op = _thief_op(w3, account, victim.key, caps, max_fee=caps.max_fee_per_gas)
    missing = max_cost(op) - deposit
    assert missing > 0 and _eth(w3, account) >= missing  # the account could pay it
    assert _validation(w3, op, missing) == SIG_VALIDATION_FAILED
    assert _validation(w3, op, 0) != SIG_VALIDATION_FAILED  # only the missing funds are wrong
    submitter, beneficiary = _thief()
    _fund_eth(aa_world, submitter.address, 10**18)
    before = _unchanged(w3, account)
    assert "AA2" in _refused(w3, op, submitter, beneficiary)  # AA21: the deposit is short
    _alto_refuses(aa_world, op)
    assert _unchanged(w3, account) == before and _eth(w3, beneficiary) == 0


def test_the_owner_changes_the_caps_and_allowance_on_the_device(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    wallet = open_hot_wallet(_home(aa_world, tmp_path))
    device = HwiDevice.at("trezor", aa_world.device_path)
    try:
        sign = lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH)  # noqa: E731
        run_owner_action(
            w3,
            wallet.account,
            "setGasCaps",
            [700_000, 200_000, 100_000, 5 * GWEI, GWEI],
            sign,
            dev_account(0),
        )
        run_owner_action(w3, wallet.account, "setGasAllowance", [3 * 10**15, 3600], sign, dev_account(0))
        assert _caps(w3, wallet.account) == GasCaps(700_000, 200_000, 100_000, 5 * GWEI, GWEI)
        allowance, period, _start, _spent = account_contract(w3, wallet.account).functions.gasBudget().call()
        assert (allowance, period) == (3 * 10**15, 3600)
        assert wallet.refill_operation(1).verification_gas_limit <= 700_000
        result = wallet.top_up(1)  # our own top-up picks fields within the new caps
        assert result.success and deposit_of(w3, wallet.account) == 3 * 10**15 - result.actual_gas_cost
    finally:
        device.close()
        wallet.close()


def test_session_key_validation_keeps_to_erc_7562(aa_world: WorldInfo, w3: Web3, victim: Victim) -> None:
    """The caps are checked without the clock or balances, with no call but ecrecover and only the
    account's own storage: the ERC-7562 check (tests/erc7562.py) of the EntryPoint's validation
    of a thief's operation at the caps finds nothing (every other kind of operation the account
    validates: tests/test_erc7562.py)."""
    account = victim.wallet.account
    op = _thief_op(w3, account, victim.key, _caps(w3, account), max_fee=10**6)
    submitter, _beneficiary = _thief()
    _fund_eth(aa_world, submitter.address, 10**18)
    steps = trace_handle_ops(aa_world.rpc_url, op, ENTRY_POINT_V07, submitter.address)
    has_code = chain_code(aa_world.rpc_url)
    assert check_validation(steps, sender=account, entry_point=ENTRY_POINT_V07, has_code=has_code) == []


# ---- the bound, over many operations and a period boundary (moves the clock: keep last) ----


def _drain(w3: Web3, account: str, key: LocalAccount, submitter: LocalAccount, beneficiary: str) -> int:
    """The thief's loop: refill(0) operations, each at every cap but with the highest fee the
    deposit still prefunds. When that fee drops under 1 gwei, one cheap operation more (its
    refill may top the deposit up: a new period); if that did not help, an operation worth
    submitting (1 gwei) is refused. Returns the number of operations that landed."""
    caps = _caps(w3, account)
    gas = caps.verification_gas_limit + caps.call_gas_limit + caps.pre_verification_gas
    landed, poked = 0, False
    while True:
        fee = min(caps.max_fee_per_gas, deposit_of(w3, account) // gas)
        if fee < GWEI and poked:
            break
        poked = fee < GWEI
        _handle_ops(w3, _thief_op(w3, account, key, caps, max_fee=fee), submitter, beneficiary)
        landed += 1
        assert landed < 100, "the deposit never ran dry"
    assert "AA21" in _refused(w3, _thief_op(w3, account, key, caps, max_fee=GWEI), submitter, beneficiary)
    return landed


def test_eth_lost_to_a_stolen_key_stays_within_the_stated_bound(
    aa_world: WorldInfo, w3: Web3, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    wallet = open_hot_wallet(home)
    try:
        wallet.top_up(100_000)  # the genuine agent's last top-up funded the deposit
        account = wallet.account
        _fund_eth(aa_world, account, 10**18)  # far more ETH than the bound: the bound is what holds
        budget = wallet.status()
        deposit, left = budget["gas_deposit"], budget["gas_allowance_left"]
        allowance, period = budget["gas_allowance"], budget["gas_period"]
    finally:
        wallet.close()
    key = _session_key(home)
    submitter, beneficiary = _thief()  # the beneficiary is foreign: the account never sees it
    _fund_eth(aa_world, submitter.address, 10**18)
    held_before = deposit + _eth(w3, account)
    started = int(w3.eth.get_block("latest")["timestamp"])

    first = _drain(w3, account, key, submitter, beneficiary)
    lost = held_before - deposit_of(w3, account) - _eth(w3, account)
    assert lost == _eth(w3, beneficiary)  # every wei lost went to the thief's beneficiary
    assert lost <= deposit + left  # the bound within one period
    floor = (DEFAULT_GAS_CAPS.verification_gas_limit + DEFAULT_GAS_CAPS.call_gas_limit
             + DEFAULT_GAS_CAPS.pre_verification_gas) * GWEI  # fmt: skip
    assert lost >= deposit + left - floor  # ... and the thief did take about all of it

    advance_time(aa_world.rpc_url, period)  # into the next period: a new allowance
    ended = int(w3.eth.get_block("latest")["timestamp"])
    second = _drain(w3, account, key, submitter, beneficiary)
    lost = held_before - deposit_of(w3, account) - _eth(w3, account)
    periods_started = ended // period - started // period
    assert periods_started == 1
    bound = deposit + left + allowance * periods_started
    assert lost == _eth(w3, beneficiary) and lost <= bound
    assert lost >= bound - floor
    assert _eth(w3, account) >= 10**18 - bound  # the rest of the account's ETH is untouched
    print(
        f"stolen key: {first}+{second} operations; lost {lost} wei of bound {bound} wei "
        f"(deposit {deposit} + left {left} + {allowance} x {periods_started} period)"
    )
