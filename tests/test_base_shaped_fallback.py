"""Issue 15's last Must-show items on the Base-shaped chain, after a new user's setup through the
CLI (tests/base_shaped_user.py): the relayer tops up when the bundler is stopped, both down
refuses the payment and counts nothing; and the ERC-7562 check (tests/erc7562.py) passes for the
user operations the walk-through's account actually validated.

Real parts: anvil shaped like Base Sepolia with only what Base Sepolia holds, alto as a separate
bundler service, the official x402 SDK server and facilitator, the device simulator, every user
step a separate `x402-agent` process. "Down" is what a user meets: the bundler process stopped
(its URL answers nothing) and the relayer key holding no ETH.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from base_shaped_user import PASSWORD, NewUser, cli, send_from_user, set_up_new_user
from chain_reads import rpc, token_balance
from erc7562 import check_user_op
from eth_account import Account
from eth_account.messages import encode_defunct
from web3 import Web3

from x402_agent.chain.account import account_contract
from x402_agent.chain.entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from x402_agent.chain.factory import create_account_calldata, factory_address
from x402_agent.chain.session_signer import SessionKeySigner
from x402_agent.chain.userop import (
    PackedUserOperation,
    user_op_hash_v07,
)
from x402_agent.chain.wallet import account_config
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH
from x402_agent.device.simulator import DeviceSimulator
from x402_agent.devnet.base_shaped import BaseShapedInfo, BaseShapedWorld
from x402_agent.devnet.bundler import AltoBundler
from x402_agent.home import AccountSetup
from x402_agent.signer import LocalKeySigner, write_keystore

USER_OPERATION_EVENT = (
    "0x" + Web3.keccak(text="UserOperationEvent(bytes32,address,address,uint256,bool,uint256,uint256)").hex()
)
RELAYER_ETH = 5 * 10**16  # 0.05 ETH: deploys the account at `policy approve`, then relays
ALLOWANCE = 2_000_000


@pytest.fixture(scope="module")
def base_sepolia() -> Iterator[BaseShapedInfo]:
    with BaseShapedWorld() as info:
        yield info


def _eth(chain: BaseShapedInfo, holder: str) -> int:
    return int(rpc(chain.rpc_url, "eth_getBalance", holder, "latest"), 16)


def _usdc(chain: BaseShapedInfo, holder: str) -> int:
    return token_balance(chain.rpc_url, chain.usdc.address, holder)


def _block_number(chain: BaseShapedInfo) -> int:
    return int(rpc(chain.rpc_url, "eth_blockNumber"), 16)


def _operations_of(chain: BaseShapedInfo, account: str, since: int = 0) -> list[dict[str, Any]]:
    """Each user operation of ``account`` the EntryPoint handled from block ``since`` on: its
    event (success, actualGasCost), the transaction that carried it and the operation itself."""
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    sender_topic = "0x" + account[2:].lower().rjust(64, "0")
    logs = rpc(
        chain.rpc_url,
        "eth_getLogs",
        {
            "address": ENTRY_POINT_V07,
            "fromBlock": hex(since),
            "toBlock": "latest",
            "topics": [USER_OPERATION_EVENT, None, sender_topic],
        },
    )
    found = []
    for log in logs:
        tx = w3.eth.get_transaction(log["transactionHash"])
        _fn, args = entry_point.decode_function_input(tx["input"])
        [op] = [PackedUserOperation(**raw) for raw in args["ops"] if raw["sender"].lower() == account.lower()]
        data = bytes.fromhex(log["data"][2:])
        found.append(
            {
                "tx": tx,
                "op": op,
                "success": bool(int.from_bytes(data[32:64], "big")),
                "actual_gas_cost": int.from_bytes(data[64:96], "big"),
            }
        )
    return found


def _fees_paid(chain: BaseShapedInfo, sender: str, first_block: int) -> int:
    """What ``sender``'s transactions from ``first_block`` on cost it in gas (wei)."""
    paid = 0
    for number in range(first_block, _block_number(chain) + 1):
        block = rpc(chain.rpc_url, "eth_getBlockByNumber", hex(number), True)
        for tx in block["transactions"]:
            if tx["from"].lower() == sender.lower():
                receipt = rpc(chain.rpc_url, "eth_getTransactionReceipt", tx["hash"])
                paid += int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
    return paid


def _gas_used(chain: BaseShapedInfo, landed: dict[str, Any]) -> int:
    return int(
        rpc(chain.rpc_url, "eth_getTransactionReceipt", landed["tx"]["hash"].to_0x_hex())["gasUsed"], 16
    )


def _budget(home: Path) -> Any:
    run = cli(home, "budget", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["assets"]


def _states(home: Path) -> list[str]:
    run = cli(home, "receipts", "--format", "json")
    assert run.returncode == 0, run.stderr
    return [row["state"] for row in json.loads(run.stdout)]


def test_bundler_stopped_the_relayer_tops_up_and_with_both_down_nothing_is_counted(
    base_sepolia: BaseShapedInfo, device_simulator: DeviceSimulator, tmp_path: Path
) -> None:
    chain, route = base_sepolia, base_sepolia.route
    assert route is not None
    relayer = Account.create()  # the user's second key, kept for relaying, funded from their wallet
    relayer_keystore = tmp_path / "relayer.keystore.json"
    write_keystore(relayer_keystore, "0x" + bytes(relayer.key).hex(), PASSWORD, iterations=2**14)
    send_from_user(chain, relayer.address, eth=RELAYER_ETH)
    # The user's bundler provider: its own alto, its own funded keys, stopped midway.
    executor, utility = Account.create(), Account.create()
    for key in (executor, utility):
        rpc(chain.rpc_url, "anvil_setBalance", key.address, hex(10**18))
    with AltoBundler(chain.rpc_url, executor_key=bytes(executor.key), utility_key=bytes(utility.key)) as alto:
        user = set_up_new_user(
            chain, device_simulator.path, tmp_path,
            bundler_url=alto.url, top_up_to=0, allowance=ALLOWANCE, relayer_keystore=relayer_keystore,
        )  # fmt: skip
        # With a relayer key, `policy approve` deployed the account (the relayer paid) to anchor
        # the policy: every top-up below is a session-key refill of a deployed account.
        assert (
            Web3(Web3.HTTPProvider(chain.rpc_url)).eth.get_code(Web3.to_checksum_address(user.account)) != b""
        )
        first = cli(user.home, "fetch", route.url)
        assert first.returncode == 0, first.stderr
        [through_bundler] = _operations_of(chain, user.account)
        assert through_bundler["tx"]["from"] == executor.address and through_bundler["success"]
    assert alto.pid is None  # stopped: its URL answers nothing now

    since = _block_number(chain) + 1
    before = _balances(chain, user, str(route.pay_to)) | {"relayer_eth": _eth(chain, relayer.address)}
    started = time.monotonic()
    paid = cli(user.home, "fetch", route.url)
    took = time.monotonic() - started
    assert paid.returncode == 0, paid.stderr
    assert "Lisbon" in paid.stdout
    [relayed] = _operations_of(chain, user.account, since)
    print(
        f"top-up through the bundler: {_gas_used(chain, through_bundler)} gas; with it stopped, through "
        f"the relayer: {_gas_used(chain, relayed)} gas, the CLI fetch {took:.2f} s"
    )
    assert relayed["tx"]["from"] == relayer.address and relayed["success"]
    assert not relayed["op"].initCode  # a session-key refill
    after = _balances(chain, user, str(route.pay_to))
    # top_up_to 0: the vault released exactly the price, the account passed it to the payee
    assert after["payee"] == before["payee"] + route.price_atomic
    assert after["vault"] == before["vault"] - route.price_atomic
    assert after["account"] == before["account"] == 0
    # the relayer paid its transactions' gas, less what the EntryPoint refunded it (beneficiary)
    spent = before["relayer_eth"] - _eth(chain, relayer.address)
    assert spent == _fees_paid(chain, relayer.address, since) - relayed["actual_gas_cost"]

    # Both down: the bundler still stopped, the relayer key out of ETH.
    rpc(chain.rpc_url, "anvil_setBalance", relayer.address, "0x0")
    budget, states = _budget(user.home), _states(user.home)
    before = _balances(chain, user, str(route.pay_to))
    nonce = int(rpc(chain.rpc_url, "eth_getTransactionCount", user.account, "latest"), 16)
    refused = cli(user.home, "fetch", route.url)
    assert refused.returncode == 1, refused.stderr
    # The gas deposit covers the operation (each refill tops it up): only a sender is missing.
    assert "[user_op_unsent]" in refused.stderr and "no bundler took the user operation" in refused.stderr
    assert f"the relayer {relayer.address} holds 0 wei" in refused.stderr
    assert "next step: the wallet cannot top up now, nothing was paid or counted" in refused.stderr
    as_json = json.loads(cli(user.home, "fetch", "--json", route.url).stdout)
    assert as_json["reason"] == "user_op_unsent" and as_json["details"]["bundler_error"].startswith(
        "bundler at "
    )
    assert _budget(user.home) == budget  # nothing counted
    # the two refused fetches (text, then --json) left released rows only, newest first
    assert states == ["settled", "settled"] and _states(user.home) == ["released", "released", *states]
    assert _balances(chain, user, str(route.pay_to)) == before  # nothing moved
    assert _eth(chain, relayer.address) == 0
    assert int(rpc(chain.rpc_url, "eth_getTransactionCount", user.account, "latest"), 16) == nonce
    assert _operations_of(chain, user.account, since) == [relayed]


def _balances(chain: BaseShapedInfo, user: NewUser, payee: str) -> dict[str, int]:
    return {
        "payee": _usdc(chain, payee),
        "vault": _usdc(chain, user.vault),
        "account": _usdc(chain, user.account),
        "account_eth": _eth(chain, user.account),
        "gas_deposit": _deposit(chain, user.account),
    }


def _deposit(chain: BaseShapedInfo, account: str) -> int:
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    return int(entry_point.functions.balanceOf(account).call())


def test_the_walk_throughs_user_operations_keep_to_erc7562(
    base_sepolia: BaseShapedInfo, device_simulator: DeviceSimulator, tmp_path: Path
) -> None:
    """No relayer key: the first top-up's operation deploys the account through initCode (sent by
    the provider's alto), `wallet topup` then sends a session-key refill. Each operation that
    landed is traced again on its block's parent (debug_traceCall of handleOps, struct logs) and
    checked against the rules a public bundler applies to an unstaked account and factory."""
    chain, route = base_sepolia, base_sepolia.route
    assert route is not None and chain.bundler_url is not None
    user = set_up_new_user(
        chain,
        device_simulator.path,
        tmp_path,
        bundler_url=chain.bundler_url,
        top_up_to=300_000,
        allowance=ALLOWANCE,
    )
    paid = cli(user.home, "fetch", route.url)
    assert paid.returncode == 0, paid.stderr
    topped = cli(user.home, "wallet", "topup", "1000")
    assert topped.returncode == 0, topped.stderr

    operations = _operations_of(chain, user.account)
    assert [bool(o["op"].initCode) for o in operations] == [True, False]  # deploying, then a refill
    signer = json.loads((user.home / "config.json").read_text())["signer"]
    setup = signer["setup"]
    for landed in operations:
        op, tx = landed["op"], landed["tx"]
        assert landed["success"] and tx["from"] == chain.bundler_executor
        assert tx["transactionIndex"] == 0  # alone at the top of its block: its parent is its state
        digest = user_op_hash_v07(op, ENTRY_POINT_V07, chain.chain_id)
        assert Account.recover_message(encode_defunct(digest), signature=op.signature) == setup["session_key"]
        parent = hex(tx["blockNumber"] - 1)
        assert check_user_op(chain.rpc_url, op, ENTRY_POINT_V07, tx["from"], parent) == []

    # The product relays its owner actions as plain transactions (the relayer calls the account
    # with the device's signature), never as user operations. The account still validates an
    # owner-signed operation: one signed by the enrolled device itself passes too.
    owner_op = _device_signed_owner_op(chain, operations[1]["op"], setup["owner"], device_simulator.path)
    assert check_user_op(chain.rpc_url, owner_op, ENTRY_POINT_V07, str(chain.bundler_executor)) == []

    # The check is not vacuous on these traces: the deploying operation with the account
    # created the old way (createAccount in initCode: the vault too) breaks the factory's rules.
    deploying, parent = operations[0]["op"], hex(operations[0]["tx"]["blockNumber"] - 1)
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    config = account_config(AccountSetup.model_validate(setup))
    broken = dataclasses.replace(
        deploying, initCode=bytes.fromhex(factory_address()[2:]) + create_account_calldata(w3, config)
    )
    key = LocalKeySigner.from_keystore(user.home / signer["keystore"], PASSWORD).private_key_bytes()
    session = SessionKeySigner(user.account, key)
    broken = dataclasses.replace(
        broken, signature=session.sign_user_op_hash(user_op_hash_v07(broken, ENTRY_POINT_V07, chain.chain_id))
    )
    violations = check_user_op(chain.rpc_url, broken, ENTRY_POINT_V07, str(chain.bundler_executor), parent)
    assert {v.rule for v in violations} == {"OP-031", "OP-011", "STO-033"}, violations
    assert all(v.entity == "factory" for v in violations)


def _device_signed_owner_op(
    chain: BaseShapedInfo, template: PackedUserOperation, owner: str, transport: str
) -> PackedUserOperation:
    """``template`` (a landed refill: its gas fields) turned into the owner's
    ``execute(account, 0, setPolicy(...))`` with the account's current per-payment bounds, its
    user operation hash signed on the device (Ethereum personal message, the enrolled path)."""
    from trezorlib import ethereum, tools
    from trezorlib.client import get_default_client, get_default_session

    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    account = account_contract(w3, template.sender)
    policy = account.encode_abi("setPolicy", args=[100_000, 360, False])
    call = account.encode_abi("execute", args=[template.sender, 0, bytes.fromhex(policy[2:])])
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    nonce = int(entry_point.functions.getNonce(template.sender, 0).call())
    op = dataclasses.replace(template, nonce=nonce, callData=bytes.fromhex(call[2:]), signature=b"")
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, chain.chain_id)
    client = get_default_client("x402-agent tests", transport)
    try:
        sign: Any = ethereum.sign_message  # trezorlib's session decorator erases the types
        signed = sign(get_default_session(client), tools.parse_path(DEFAULT_APPROVAL_PATH), digest)
    finally:
        client.transport.close()
    assert (
        Account.recover_message(encode_defunct(digest), signature=bytes(signed.signature)).lower()
        == owner.lower()
    )
    return dataclasses.replace(op, signature=bytes(signed.signature))
