"""ERC-4337 foundations: the solcjs toolchain, EntryPoint v0.7 on anvil, v0.7 user-operation hashes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3

from x402_agent.chain import (
    CREATE2_DEPLOYER,
    ENTRY_POINT_V07,
    ENTRY_POINT_V07_SALT,
    PackedUserOperation,
    create2_address,
    deploy_entry_point_v07,
    entry_point_v07_abi,
    pack_account_gas_limits,
    pack_gas_fees,
    user_op_hash_v07,
)
from x402_agent.chain.entrypoint import entry_point_v07_creation_code
from x402_agent.chain.userop import unpack_128x2, user_op_inner_hash_v07
from x402_agent.devnet.anvil import Anvil, dev_account
from x402_agent.paths import PROJECT_ROOT

CHAIN_ID = 43370
BUILD_DIR = PROJECT_ROOT / "contracts" / "build"


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("contracts_build", PROJECT_ROOT / "contracts" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Anvil, Web3]]:
    anvil = Anvil.start(CHAIN_ID)
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        assert deploy_entry_point_v07(w3, dev_account(0)) == ENTRY_POINT_V07
        yield anvil, w3
    finally:
        anvil.stop()


# 1. toolchain


def test_build_is_reproducible(tmp_path: Path) -> None:
    written = _load_build_script().build(tmp_path)
    assert [p.name for p in written] == sorted(p.name for p in BUILD_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (BUILD_DIR / path.name).read_bytes(), path.name
    probe = json.loads((tmp_path / "Probe.json").read_text())
    assert probe["bytecode"].startswith("0x60") and len(probe["deployedBytecode"]) > 100


# 2. EntryPoint v0.7


def test_canonical_salt_gives_canonical_address() -> None:
    code = entry_point_v07_creation_code()
    assert create2_address(CREATE2_DEPLOYER, ENTRY_POINT_V07_SALT, code) == ENTRY_POINT_V07


def test_entry_point_deployed_and_idempotent(chain: tuple[Anvil, Web3]) -> None:
    _, w3 = chain
    code = w3.eth.get_code(ENTRY_POINT_V07)
    assert len(code) > 10_000
    nonce = w3.eth.get_transaction_count(dev_account(0).address)
    assert deploy_entry_point_v07(w3, dev_account(0)) == ENTRY_POINT_V07
    assert w3.eth.get_transaction_count(dev_account(0).address) == nonce  # nothing sent again
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    assert entry_point.functions.getNonce(dev_account(1).address, 0).call() == 0


# 3. user-operation hash


def test_gas_packing() -> None:
    packed = pack_account_gas_limits(0x1234, 0x5678)
    assert len(packed) == 32 and unpack_128x2(packed) == (0x1234, 0x5678)
    assert pack_gas_fees(1, 2) == (1).to_bytes(16, "big") + (2).to_bytes(16, "big")
    with pytest.raises(ValueError):
        pack_gas_fees(1 << 128, 0)


uint128 = st.integers(0, (1 << 128) - 1)
uint256 = st.integers(0, (1 << 256) - 1)
small_bytes = st.binary(max_size=80)

user_ops = st.builds(
    PackedUserOperation,
    sender=st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    nonce=uint256,
    initCode=small_bytes,
    callData=small_bytes,
    accountGasLimits=st.builds(pack_account_gas_limits, uint128, uint128),
    preVerificationGas=uint256,
    gasFees=st.builds(pack_gas_fees, uint128, uint128),
    paymasterAndData=small_bytes,
    signature=small_bytes,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=user_ops)
def test_user_op_hash_matches_entry_point(chain: tuple[Anvil, Web3], op: PackedUserOperation) -> None:
    _, w3 = chain
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    on_chain = entry_point.functions.getUserOpHash(op.as_tuple()).call()
    assert user_op_hash_v07(op, ENTRY_POINT_V07, CHAIN_ID) == on_chain
    # The signature is not hashed.
    unsigned = dataclasses.replace(op, signature=b"")
    assert user_op_hash_v07(unsigned, ENTRY_POINT_V07, CHAIN_ID) == on_chain


def test_inner_hash_matches_probe_contract(chain: tuple[Anvil, Web3]) -> None:
    """The Probe contract (our toolchain's output) computes the same inner hash as UserOperationLib."""
    _, w3 = chain
    artifact = json.loads((BUILD_DIR / "Probe.json").read_text())
    funder = dev_account(0)
    tx = {
        "chainId": CHAIN_ID,
        "from": funder.address,
        "data": artifact["bytecode"],
        "nonce": w3.eth.get_transaction_count(funder.address),
        "gas": 1_000_000,
        "maxFeePerGas": 2 * w3.eth.gas_price + 1,
        "maxPriorityFeePerGas": 1,
    }
    tx_hash = w3.eth.send_raw_transaction(funder.sign_transaction(tx).raw_transaction)
    address = w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
    probe = w3.eth.contract(address=address, abi=artifact["abi"])
    op = PackedUserOperation(
        sender=funder.address, nonce=7, initCode=b"\x01", callData=b"call",
        accountGasLimits=pack_account_gas_limits(1, 2), preVerificationGas=3,
        gasFees=pack_gas_fees(4, 5), paymasterAndData=b"", signature=b"sig",
    )  # fmt: skip
    inner = user_op_inner_hash_v07(op)
    assert probe.functions.innerHash(op.as_tuple()).call() == inner
    expected = keccak(inner + bytes(12) + bytes.fromhex(ENTRY_POINT_V07[2:]) + CHAIN_ID.to_bytes(32, "big"))
    assert user_op_hash_v07(op, ENTRY_POINT_V07, CHAIN_ID) == expected
