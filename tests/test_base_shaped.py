"""The smart account on a chain shaped like Base Sepolia, set up as a new user types it.

The chain holds only what Base Sepolia holds (EntryPoint v0.7, the deterministic deployment
proxy, Multicall3, USDC at its address with name "USDC" version "2"): nothing of ours. A bundler
runs as a separate service and the official x402 SDK's server and facilitator sell one route.
Every step of the user's is a separate `x402-agent` process; only the user's own wallet (sending
USDC and ETH, writing a keystore) is done here in Python, as any wallet app would do it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from base_shaped_user import (
    ACCOUNT_ETH,
    PASSWORD,
    VAULT_FUNDING,
    base_sepolia_policy,
    cli,
    nonce_of,
    send_from_user,
    user_keystore,
    wallet_create_args,
)
from chain_reads import token_balance
from eth_abi.abi import encode
from eth_account import Account
from web3 import Web3

from x402_agent.chain.account import send_transaction
from x402_agent.chain.entrypoint import CREATE2_DEPLOYER, ENTRY_POINT_V07
from x402_agent.chain.factory import factory_address
from x402_agent.chain.factory_deploy import deploy_factory_once, require_factory
from x402_agent.device.simulator import DeviceSimulator
from x402_agent.devnet.aa import MULTICALL3
from x402_agent.devnet.base_shaped import (
    BASE,
    BaseShapedInfo,
    BaseShapedWorld,
)
from x402_agent.errors import ChainError, FactoryError
from x402_agent.signer import LocalKeySigner, TokenDomain, TransferAuthorization, write_keystore

ACCOUNT_CREATED = "0x" + Web3.keccak(text="AccountCreated(address,address,address)").hex()
TOP_UP_TO = 300_000
ALLOWANCE = 2_000_000


@pytest.fixture(scope="module")
def base_sepolia() -> Iterator[BaseShapedInfo]:
    with BaseShapedWorld() as info:
        yield info


def test_the_chain_holds_what_base_sepolia_holds_and_nothing_of_ours(base_sepolia: BaseShapedInfo) -> None:
    w3 = Web3(Web3.HTTPProvider(base_sepolia.rpc_url))
    assert w3.eth.chain_id == 84532
    for address in (ENTRY_POINT_V07, MULTICALL3, CREATE2_DEPLOYER):
        assert w3.eth.get_code(address) != b""
    assert base_sepolia.usdc.address == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    assert w3.eth.get_code(factory_address()) == b""
    # USDC's EIP-712 domain there is Base Sepolia's: name "USDC", version "2", chain 84532.
    domain_type = Web3.keccak(
        text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    expected = Web3.keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [domain_type, Web3.keccak(text="USDC"), Web3.keccak(text="2"), 84532, base_sepolia.usdc.address],
        )
    )
    separator = w3.eth.call(
        {"to": base_sepolia.usdc.address, "data": Web3.keccak(text="DOMAIN_SEPARATOR()")[:4]}
    )
    assert separator == expected


def test_transfer_with_authorization_at_base_sepolias_usdc_address(base_sepolia: BaseShapedInfo) -> None:
    """EIP-3009 as the x402 exact scheme uses it, signed under name "USDC" version "2"."""
    sender = Account.create()
    payee = Account.create().address
    send_from_user(base_sepolia, sender.address, usdc=10_000)
    w3 = Web3(Web3.HTTPProvider(base_sepolia.rpc_url))
    domain = TokenDomain("USDC", "2", 84532, base_sepolia.usdc.address)
    nonce = "0x" + os.urandom(32).hex()
    authorization = TransferAuthorization(domain, sender.address, payee, 4_000, 0, 2**40, nonce)
    signature = LocalKeySigner(sender).sign_authorization(authorization).signature
    selector = Web3.keccak(
        text="transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )[:4]
    data = selector + encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [sender.address, payee, 4_000, 0, 2**40, bytes.fromhex(nonce[2:]), bytes.fromhex(signature[2:])],
    )
    send_transaction(w3, base_sepolia.user_private_key, {"to": base_sepolia.usdc.address, "data": data})
    assert token_balance(base_sepolia.rpc_url, base_sepolia.usdc.address, payee) == 4_000
    assert token_balance(base_sepolia.rpc_url, base_sepolia.usdc.address, sender.address) == 6_000


def test_a_new_user_sets_up_and_pays_from_the_smart_account(
    base_sepolia: BaseShapedInfo, device_simulator: DeviceSimulator, tmp_path: Path
) -> None:
    chain, route = base_sepolia, base_sepolia.route
    assert route is not None and chain.bundler_url is not None
    home = tmp_path / "home"
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
    created = cli(home, "init", "--network", chain.network, "--rpc-url", chain.rpc_url)
    assert created.returncode == 0, created.stderr
    enrolled = cli(home, "device", "enroll", "--device-path", device_simulator.path)
    assert enrolled.returncode == 0, enrolled.stderr
    keystore = user_keystore(chain, tmp_path)
    create_args = wallet_create_args(chain, ALLOWANCE, TOP_UP_TO, chain.bundler_url)
    # No --relayer-keystore: with one, `policy approve` would deploy the account to anchor the
    # policy on it (the relayer pays); without, the first top-up's user operation deploys it.

    # Before the factory exists, `wallet create` says what to run, and writes nothing.
    too_early = cli(home, *create_args)
    assert too_early.returncode == 1
    assert "[factory_missing]" in too_early.stderr and "wallet deploy-factory" in too_early.stderr
    assert not (home / "session.keystore.json").exists()

    deployed = cli(home, "wallet", "deploy-factory", "--keystore", str(keystore))
    assert deployed.returncode == 0, deployed.stderr
    report = json.loads(deployed.stdout)
    assert report["factory"] == factory_address() and not report["already_deployed"]
    assert [tx["deployed"] for tx in report["transactions"]] == ["OwnerActionText", "X402AccountFactory"]
    assert PASSWORD not in deployed.stdout + deployed.stderr
    nonce = nonce_of(chain, chain.user_address)
    again = cli(home, "wallet", "deploy-factory", "--keystore", str(keystore))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_deployed"] and "already deployed" in again.stderr
    assert json.loads(again.stdout)["factory"] == factory_address()
    assert nonce_of(chain, chain.user_address) == nonce  # nothing sent

    made_run = cli(home, *create_args)
    assert made_run.returncode == 0, made_run.stderr
    made = json.loads(made_run.stdout[: made_run.stdout.rindex("}") + 1])
    assert w3.eth.get_code(made["account"]) == b""  # counterfactual until its first top-up

    user_before = token_balance(chain.rpc_url, chain.usdc.address, chain.user_address)
    send_from_user(chain, made["vault"], usdc=VAULT_FUNDING)
    send_from_user(chain, made["account"], eth=ACCOUNT_ETH)
    policy = base_sepolia_policy(made["account"], route.url)
    (tmp_path / "base-sepolia.json").write_text(json.dumps(policy))
    proposed = cli(home, "policy", "propose", str(tmp_path / "base-sepolia.json"))
    assert proposed.returncode == 0, proposed.stderr
    approved = cli(home, "policy", "approve")  # the simulator confirms on its own
    assert approved.returncode == 0, approved.stderr

    payee_before = token_balance(chain.rpc_url, chain.usdc.address, str(route.pay_to))
    paid = cli(home, "fetch", route.url)
    assert paid.returncode == 0, paid.stderr
    assert "Lisbon" in paid.stdout

    # Deployed by its first top-up: a user operation through the EntryPoint created it.
    assert w3.eth.get_code(made["account"]) != b""
    [created_log] = w3.eth.get_logs(
        {"address": factory_address(), "fromBlock": 0, "toBlock": "latest", "topics": [ACCOUNT_CREATED]}
    )
    creation = w3.eth.get_transaction(created_log["transactionHash"])
    assert creation["to"] == ENTRY_POINT_V07 and creation["from"] != chain.user_address
    # Balances exact: the price to the payee, the top-up out of the vault.
    usdc = chain.usdc.address
    assert token_balance(chain.rpc_url, usdc, str(route.pay_to)) - payee_before == route.price_atomic
    assert token_balance(chain.rpc_url, usdc, made["account"]) == TOP_UP_TO - route.price_atomic
    assert token_balance(chain.rpc_url, usdc, made["vault"]) == VAULT_FUNDING - TOP_UP_TO
    assert token_balance(chain.rpc_url, usdc, chain.user_address) == user_before - VAULT_FUNDING
    status_run = cli(home, "wallet", "status", "--json")
    assert status_run.returncode == 0, status_run.stderr
    status = json.loads(status_run.stdout)
    assert status["deployed"] and status["hot_balance"] == TOP_UP_TO - route.price_atomic
    assert status["vault_available"] == ALLOWANCE - TOP_UP_TO
    receipts = cli(home, "receipts", "--format", "json")
    [receipt] = json.loads(receipts.stdout)
    assert receipt["state"] == "settled"


def test_deploy_factory_gives_the_same_address_on_another_chain_and_refuses_foreign_code(
    base_sepolia: BaseShapedInfo, tmp_path: Path
) -> None:
    """On a Base-shaped chain (8453, Base's USDC), with no agent home: the same address. Then a
    chain where another contract sits at that address: refused, nothing sent, no wallet made."""
    nowhere = tmp_path / "no-home"
    with BaseShapedWorld(BASE, services=False) as base:
        keystore = user_keystore(base, tmp_path)
        deployed = cli(
            nowhere, "wallet", "deploy-factory", "--rpc-url", base.rpc_url, "--keystore", str(keystore)
        )
        assert deployed.returncode == 0, deployed.stderr
        report = json.loads(deployed.stdout)
        assert report["chain_id"] == 8453 and report["factory"] == factory_address()
        w3 = Web3(Web3.HTTPProvider(base.rpc_url))
        assert require_factory(w3) == factory_address()
        wrong_network = cli(
            nowhere, "wallet", "deploy-factory", "--network", "eip155:84532",
            "--rpc-url", base.rpc_url, "--keystore", str(keystore),
        )  # fmt: skip
        assert wrong_network.returncode == 2 and "serves chain 8453" in wrong_network.stderr

    with BaseShapedWorld(services=False) as hostile:
        w3 = Web3(Web3.HTTPProvider(hostile.rpc_url))
        # Another contract's runtime (Multicall3's) where the factory would land.
        w3.provider.make_request(
            "anvil_setCode", [factory_address(), "0x" + bytes(w3.eth.get_code(MULTICALL3)).hex()]
        )  # type: ignore[arg-type]
        (tmp_path / "hostile").mkdir()
        keystore = user_keystore(hostile, tmp_path / "hostile")
        refused = cli(
            nowhere, "wallet", "deploy-factory", "--rpc-url", hostile.rpc_url, "--keystore", str(keystore)
        )
        assert refused.returncode == 1
        assert "[factory_bytecode_mismatch]" in refused.stderr and factory_address() in refused.stderr
        assert nonce_of(hostile, hostile.user_address) == 0  # nothing sent
        with pytest.raises(FactoryError) as not_ours:
            require_factory(w3)  # what `wallet create` checks first
        assert not_ours.value.reason == "factory_bytecode_mismatch"


def test_deploy_factory_refuses_a_chain_without_the_proxy_and_a_key_without_eth(tmp_path: Path) -> None:
    """Both refusals come before anything is sent, each with its reason and next step."""
    nowhere = tmp_path / "no-home"
    with BaseShapedWorld(services=False) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        penniless = Account.create()
        empty = tmp_path / "empty.keystore.json"
        write_keystore(empty, "0x" + bytes(penniless.key).hex(), PASSWORD, iterations=2**14)
        poor = cli(nowhere, "wallet", "deploy-factory", "--rpc-url", chain.rpc_url, "--keystore", str(empty))
        assert poor.returncode == 1 and "[deployer_unfunded]" in poor.stderr
        assert penniless.address in poor.stderr and "next step:" in poor.stderr
        assert w3.eth.get_code(factory_address()) == b""

        # A chain without the deterministic deployment proxy (anvil ships it: take it away).
        w3.provider.make_request("anvil_setCode", [CREATE2_DEPLOYER, "0x"])  # type: ignore[arg-type]
        keystore = user_keystore(chain, tmp_path)
        bare = cli(
            nowhere, "wallet", "deploy-factory", "--rpc-url", chain.rpc_url, "--keystore", str(keystore)
        )
        assert bare.returncode == 1 and "[create2_deployer_missing]" in bare.stderr
        assert CREATE2_DEPLOYER in bare.stderr
        assert nonce_of(chain, chain.user_address) == 0  # nothing sent

    # No chain behind the URL (nothing listens on the discard port): typed, the URL not echoed.
    dead = cli(
        nowhere, "wallet", "deploy-factory", "--rpc-url", "http://127.0.0.1:9", "--keystore", str(empty)
    )
    assert dead.returncode == 1 and "[chain_unavailable]" in dead.stderr and "127.0.0.1:9" not in dead.stderr
    with pytest.raises(ChainError) as stopped:
        deploy_factory_once(Web3(Web3.HTTPProvider("http://127.0.0.1:9")), penniless)
    assert stopped.value.reason == "chain_unavailable" and "run it again" in stopped.value.message
