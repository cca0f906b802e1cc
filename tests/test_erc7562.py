"""Every kind of user operation X402Account validates keeps to ERC-7562's rules for an unstaked
account (what a public bundler enforces), and the check itself can fail (issue 15, item 3).

Real parts: the session's local world (anvil, EntryPoint v0.7 at its canonical address, the
project's factory, USDC); each operation is signed as the wallet signs it and traced by anvil
(``debug_traceCall`` of ``handleOps``, struct logs with memory), and tests/erc7562.py applies
the rules to the validation phase of that trace. The accounts are made here with a local owner
key (the device's signature scheme plays no part in validation: it is ECDSA either way), so
that owner-signed operations can be built. The deliberately broken accounts are small Solidity
contracts in tests/contracts, compiled by the project's solcjs helper.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from chain_reads import rpc
from erc7562 import Violation, chain_code, check_user_op, check_validation, trace_handle_ops
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3

from x402_agent.chain.account import account_contract, artifact, send_transaction
from x402_agent.chain.entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from x402_agent.chain.factory import (
    AccountConfig,
    create_account,
    create_account_calldata,
    create_sender_calldata,
    factory_address,
    predicted_addresses,
)
from x402_agent.chain.gas import DEFAULT_GAS_CAPS, choose_fields, deposit_of
from x402_agent.chain.userop import (
    PackedUserOperation,
    pack_account_gas_limits,
    pack_gas_fees,
    user_op_hash_v07,
)
from x402_agent.devnet import WorldInfo
from x402_agent.devnet.provision import fund

ETH = 10**18
ALLOWANCE = 5_000_000  # vault allowance per period, USDC atomic units


@dataclasses.dataclass(frozen=True)
class Made:
    """An account made here: its config, addresses and the keys that sign for it."""

    config: AccountConfig
    account: ChecksumAddress
    vault: ChecksumAddress
    owner: LocalAccount
    session: LocalAccount


@pytest.fixture(scope="module")
def w3(world: WorldInfo) -> Web3:
    return Web3(Web3.HTTPProvider(world.rpc_url))


@pytest.fixture(scope="module")
def funder(world: WorldInfo) -> LocalAccount:
    """A fresh funded key (the world's own keys are busy settling payments)."""
    key: LocalAccount = Account.create()
    rpc(world.rpc_url, "anvil_setBalance", key.address, hex(100 * ETH))
    return key


def _make(world: WorldInfo, w3: Web3, funder: LocalAccount, *, deploy: bool) -> Made:
    owner, session = Account.create(), Account.create()
    latest = int(w3.eth.get_block("latest")["timestamp"])
    config = AccountConfig(
        owner=owner.address,
        session_key=session.address,
        session_expiry=latest + 86400,
        token=world.usdc.address,
        max_value=1_000_000,
        max_window=600,
        allowance=ALLOWANCE,
        period=86400,
        salt=os.urandom(32),
    )
    account, vault = predicted_addresses(w3, config)
    if deploy:
        create_account(w3, config, funder)
    fund(world, vault, usdc=ALLOWANCE)
    rpc(world.rpc_url, "anvil_setBalance", account, hex(ETH))
    return Made(config, account, vault, owner, session)


def _deposit(w3: Web3, funder: LocalAccount, account: str, wei: int) -> None:
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    data = entry_point.encode_abi("depositTo", args=[account])
    send_transaction(w3, funder, {"to": ENTRY_POINT_V07, "data": data, "value": wei})


def _op(w3: Web3, made: Made, call: str, signer: LocalAccount, *, deploying: bool) -> PackedUserOperation:
    """``call`` on the account as a user operation, with the gas fields the wallet picks."""
    gas = choose_fields(
        DEFAULT_GAS_CAPS, int(w3.eth.get_block("latest")["baseFeePerGas"]), deploying=deploying
    )
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    init_code = (
        bytes.fromhex(factory_address()[2:]) + create_sender_calldata(w3, made.config) if deploying else b""
    )
    op = PackedUserOperation(
        sender=made.account,
        nonce=int(entry_point.functions.getNonce(made.account, 0).call()),
        initCode=init_code,
        callData=bytes.fromhex(call.removeprefix("0x")),
        accountGasLimits=pack_account_gas_limits(gas.verification_gas_limit, gas.call_gas_limit),
        preVerificationGas=gas.pre_verification_gas,
        gasFees=pack_gas_fees(gas.max_priority_fee_per_gas, gas.max_fee_per_gas),
        paymasterAndData=b"",
        signature=b"",
    )
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, w3.eth.chain_id)
    return dataclasses.replace(op, signature=bytes(signer.sign_message(encode_defunct(digest)).signature))


def _violations(world: WorldInfo, op: PackedUserOperation, caller: LocalAccount) -> list[Violation]:
    return check_user_op(world.rpc_url, op, ENTRY_POINT_V07, caller.address)


def _refill(w3: Web3, made: Made, amount: int) -> str:
    return str(account_contract(w3, made.account).encode_abi("refill", args=[amount]))


def test_session_key_refill_keeps_to_the_rules(world: WorldInfo, w3: Web3, funder: LocalAccount) -> None:
    made = _make(world, w3, funder, deploy=True)
    _deposit(w3, funder, made.account, ETH // 100)  # session-key operations pay from the deposit
    op = _op(w3, made, _refill(w3, made, 1_000), made.session, deploying=False)
    assert _violations(world, op, funder) == []


def _execute(w3: Web3, made: Made, target: str, data: str) -> str:
    return str(
        account_contract(w3, made.account).encode_abi("execute", args=[target, 0, bytes.fromhex(data[2:])])
    )


@pytest.mark.parametrize("prefund", ["from_deposit", "from_account_eth"])
def test_owner_operations_keep_to_the_rules(
    world: WorldInfo, w3: Web3, funder: LocalAccount, prefund: str
) -> None:
    """The owner's key may sign any call (``execute``, here an owner action on the account
    itself); without a deposit the account pays the prefund from its ETH: a call with value to
    the EntryPoint's fallback, the one value call ERC-7562 allows (OP-053)."""
    made = _make(world, w3, funder, deploy=True)
    if prefund == "from_deposit":
        _deposit(w3, funder, made.account, ETH // 100)
    policy = account_contract(w3, made.account).encode_abi("setPolicy", args=[2_000_000, 900, False])
    op = _op(w3, made, _execute(w3, made, made.account, policy), made.owner, deploying=False)
    assert (deposit_of(w3, made.account) == 0) == (prefund == "from_account_eth")
    assert _violations(world, op, funder) == []


# ---- the check fails for accounts that break the rules ----

PROBE = Path(__file__).parent / "contracts" / "Erc7562Probe.sol"
PROBE_MODES = ("CLOCK", "FOREIGN_STORAGE", "ASSOCIATED_STORAGE", "GAS_LEFT", "VALUE_CALL", "OUT_OF_GAS")


@pytest.fixture(scope="module")
def probe() -> dict[str, dict[str, Any]]:
    """tests/contracts/Erc7562Probe.sol compiled now, with the project's solcjs and settings."""
    import importlib.util

    from x402_agent.paths import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location("contracts_build", PROJECT_ROOT / "contracts" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    output = build.compile_files([PROBE])
    compiled: dict[str, dict[str, Any]] = output["contracts"][PROBE.relative_to(PROJECT_ROOT).as_posix()]
    return compiled


def _deploy(w3: Web3, funder: LocalAccount, compiled: dict[str, Any], *args: Any, value: int = 0) -> str:
    contract = w3.eth.contract(abi=compiled["abi"], bytecode="0x" + compiled["evm"]["bytecode"]["object"])
    data = contract.constructor(*args).data_in_transaction
    receipt = send_transaction(w3, funder, {"data": data, "value": value, "gas": 2_000_000})
    return str(receipt["contractAddress"])


def _probe(w3: Web3, funder: LocalAccount, probe: dict[str, dict[str, Any]], mode: str) -> str:
    """A probe account reading a fresh ledger, deposited with the EntryPoint."""
    ledger = _deploy(w3, funder, probe["Erc7562Ledger"])
    address = _deploy(w3, funder, probe["Erc7562Probe"], PROBE_MODES.index(mode), ledger, value=ETH // 10)
    _deposit(w3, funder, address, ETH // 100)
    return address


def _probe_op(w3: Web3, sender: str) -> PackedUserOperation:
    """A do-nothing operation (empty callData); the probe accepts any signature."""
    gas = choose_fields(DEFAULT_GAS_CAPS, int(w3.eth.get_block("latest")["baseFeePerGas"]))
    return PackedUserOperation(
        sender=sender,
        nonce=0,
        initCode=b"",
        callData=b"",
        accountGasLimits=pack_account_gas_limits(gas.verification_gas_limit, gas.call_gas_limit),
        preVerificationGas=gas.pre_verification_gas,
        gasFees=pack_gas_fees(gas.max_priority_fee_per_gas, gas.max_fee_per_gas),
        paymasterAndData=b"",
        signature=b"",
    )


@pytest.mark.parametrize(
    ("mode", "rule", "words"),
    [
        ("CLOCK", "OP-011", "uses TIMESTAMP"),
        ("FOREIGN_STORAGE", "STO-033", "allowed only to a staked account"),
        ("GAS_LEFT", "OP-012", "uses GAS other than right before a call"),
        ("VALUE_CALL", "OP-061", "CALL with value 1"),
        ("OUT_OF_GAS", "OP-020", "out of gas"),
    ],
)
def test_a_deliberately_broken_account_fails_naming_the_rule(
    world: WorldInfo,
    w3: Web3,
    funder: LocalAccount,
    probe: dict[str, dict[str, Any]],
    mode: str,
    rule: str,
    words: str,
) -> None:
    """The EntryPoint accepts each of these operations (handleOps would land them); only the
    ERC-7562 check refuses them, naming the one rule each breaks."""
    sender = _probe(w3, funder, probe, mode)
    violations = _violations(world, _probe_op(w3, sender), funder)
    assert violations, f"{mode} passed the check"
    assert {v.rule for v in violations} == {rule}, violations
    assert all(v.entity == "account" for v in violations)
    assert any(words in v.detail for v in violations), violations


def test_storage_associated_with_the_sender_passes(
    world: WorldInfo, w3: Web3, funder: LocalAccount, probe: dict[str, dict[str, Any]]
) -> None:
    """The token's balance slot of the sender (keccak(sender || slot)) is the account's to read
    (STO-021), where the token's total supply is not: the check tells them apart."""
    sender = _probe(w3, funder, probe, "ASSOCIATED_STORAGE")
    assert _violations(world, _probe_op(w3, sender), funder) == []


# ---- the operation that deploys the account (initCode) ----


def _handle_ops(w3: Web3, op: PackedUserOperation, submitter: LocalAccount) -> None:
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    data = entry_point.encode_abi("handleOps", args=[[op.as_tuple()], submitter.address])
    receipt = send_transaction(w3, submitter, {"to": ENTRY_POINT_V07, "data": data, "gas": 3_000_000})
    [event] = entry_point.events.UserOperationEvent().process_receipt(receipt)
    assert event["args"]["success"], "the operation's execution reverted"


@pytest.mark.parametrize("signer", ["session_key", "owner"])
def test_the_deploying_operation_keeps_to_the_rules(
    world: WorldInfo, w3: Web3, funder: LocalAccount, signer: str
) -> None:
    """initCode = factory.createSender: one CREATE2 (the sender's) and the account's own storage;
    the account's validation pays its prefund from the ETH at its address (a value call to the
    EntryPoint). The vault is created by the refill's execution, at the address committed to."""
    made = _make(world, w3, funder, deploy=False)
    key = made.session if signer == "session_key" else made.owner
    op = _op(w3, made, _refill(w3, made, 1_000), key, deploying=True)
    assert _violations(world, op, funder) == []
    assert not w3.eth.get_code(made.vault)
    _handle_ops(w3, op, funder)
    vault = w3.eth.contract(address=made.vault, abi=artifact("AllowanceVault")["abi"])
    assert vault.functions.account().call() == made.account
    assert vault.functions.owner().call() == made.owner.address
    assert (vault.functions.allowance().call(), vault.functions.period().call()) == (ALLOWANCE, 86400)
    assert vault.functions.spent().call() == 1_000
    assert account_contract(w3, made.account).functions.pendingVault().call()[0] == bytes(32)


def test_creating_the_vault_in_initcode_would_break_the_rules(
    world: WorldInfo, w3: Web3, funder: LocalAccount
) -> None:
    """Why createSender: createAccount (the plain-transaction and ERC-6492 path) also creates and
    initialises the vault, which in initCode is a second CREATE2, writes to the vault's storage
    and reads the clock: a public bundler drops that operation, and would with a staked factory."""
    made = _make(world, w3, funder, deploy=False)
    op = _op(w3, made, _refill(w3, made, 1_000), made.session, deploying=True)
    op = dataclasses.replace(
        op, initCode=bytes.fromhex(factory_address()[2:]) + create_account_calldata(w3, made.config)
    )
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, w3.eth.chain_id)
    op = dataclasses.replace(op, signature=bytes(made.session.sign_message(encode_defunct(digest)).signature))
    violations = _violations(world, op, funder)
    assert {v.rule for v in violations} == {"OP-031", "OP-011", "STO-033"}, violations
    assert all(v.entity == "factory" for v in violations)
    assert any(v.rule == "OP-011" and "TIMESTAMP" in v.detail for v in violations)
    assert any(v.rule == "STO-033" and v.address.lower() == made.vault.lower() for v in violations)
    # A stake would not have saved it: the clock and the writes to the vault stay forbidden.
    steps = trace_handle_ops(world.rpc_url, op, ENTRY_POINT_V07, funder.address)
    staked = check_validation(
        steps,
        sender=op.sender,
        entry_point=ENTRY_POINT_V07,
        init_code=op.initCode,
        has_code=chain_code(world.rpc_url),
        staked={"factory"},
    )
    assert {v.rule for v in staked} == {"OP-011", "STO-033"}, staked
    assert all("write to" in v.detail for v in staked if v.rule == "STO-033")


NOT_THE_ACCOUNT = keccak(text="NotTheAccount()")[:4].hex()


def test_only_the_account_has_its_vault_created(world: WorldInfo, w3: Web3, funder: LocalAccount) -> None:
    """createVault answers only the account its salt gives: nobody else can create the vault at
    that address with another owner or allowance first."""
    from web3.exceptions import ContractCustomError, ContractLogicError

    from x402_agent.chain.factory import factory_contract

    made = _make(world, w3, funder, deploy=False)
    salt = factory_contract(w3).functions.cloneSalt(made.config.as_tuple(), made.config.salt).call()
    thief = Account.create().address
    create = factory_contract(w3).functions.createVault(salt, thief, world.usdc.address, 10**12, 1)
    for caller in (thief, funder.address):
        with pytest.raises((ContractCustomError, ContractLogicError), match=NOT_THE_ACCOUNT):
            create.call({"from": caller})
    assert not w3.eth.get_code(made.vault)


@pytest.mark.parametrize("deployed", [False, True])
def test_the_wallets_own_top_up_operation_keeps_to_the_rules(
    world: WorldInfo, w3: Web3, funder: LocalAccount, tmp_path: Path, deployed: bool
) -> None:
    """The operation exactly as HotWallet.refill_operation builds it for a home the device owns
    (its nonce key, gas fields and initCode), before and after the account exists."""
    from x402_agent.chain.wallet import open_hot_wallet
    from x402_agent.devnet.provision import provision_smart_account_home

    wallet = open_hot_wallet(provision_smart_account_home(world, tmp_path / "home", deploy=deployed))
    try:
        if deployed:
            _deposit(w3, funder, wallet.account, ETH // 100)
        op = wallet.refill_operation(1_000)
        assert bool(op.initCode) is not deployed
        assert _violations(world, op, funder) == []
    finally:
        wallet.close()
