"""The hot wallet end to end: an agent home paying from an X402Account owned by the device
simulator, its vault topped up by session-key user operations through the real alto bundler (or
straight to EntryPoint.handleOps), payments settled by the official x402 facilitator, and the
account's on-chain bounds checked before anything is reserved or signed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance, transfer_logs
from eth_account import Account
from web3 import Web3

from x402_agent.chain.account import account_contract, run_owner_action
from x402_agent.chain.wallet import HotWallet, WalletRefused
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.provision import (
    DEVNET_SESSION_ALLOWANCE,
    DEVNET_VAULT_FUNDING,
    fund,
    provision_smart_account_home,
    smart_account_policy,
)
from x402_agent.home import AgentHome, open_home
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent

PULLED = "0x" + Web3.keccak(text="Pulled(uint256,uint128)").hex()


@pytest.fixture(scope="module")
def aa_world() -> Iterator[WorldInfo]:
    # A world of its own, with its own simulator on a free port pair.
    with LocalWorld(bundler=True) as info:
        assert info.bundler_url is not None
        yield info


def _home(world: WorldInfo, tmp_path: Path, **options: object) -> AgentHome:
    return provision_smart_account_home(world, tmp_path / "home", **options)  # type: ignore[arg-type]


def _wallet(agent: Agent) -> HotWallet:
    assert isinstance(agent.payer.signer, HotWallet)
    return agent.payer.signer


def _owner_action(
    world: WorldInfo, target: str, action: str, *args: object, tag: str = "x402-account"
) -> None:
    device = HwiDevice.at("trezor", world.device_path)
    try:
        run_owner_action(
            Web3(Web3.HTTPProvider(world.rpc_url)),
            target,
            action,
            args,
            lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH),
            dev_account(0),
            tag=tag,
        )
    finally:
        device.close()


def test_pays_from_the_smart_account_topping_up_through_the_bundler(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        assert wallet.funds().hot_balance == 0
        outcome = agent.verified(agent.fetch(route.url))  # on-chain check done
        assert outcome.status == 200 and outcome.payment is not None
        assert outcome.payment.state == PaymentState.SETTLED and outcome.confirmed_on_chain
        [top_up] = wallet.top_ups
        assert top_up.via == "bundler" and top_up.success
        # the refill moved exactly top_up_to from the vault; the payment exactly the price
        pulled = [
            log
            for log in rpc(aa_world.rpc_url, "eth_getTransactionReceipt", top_up.transaction_hash)["logs"]
            if log["topics"][0] == PULLED
        ]
        assert len(pulled) == 1 and int(pulled[0]["data"][2:66], 16) == DEVNET_SESSION_ALLOWANCE
        assert transfer_logs(aa_world.rpc_url, outcome.payment.settlement_tx) == [
            (aa_world.usdc.address, wallet.account, route.pay_to, route.price_atomic)
        ]
        usdc = aa_world.usdc.address
        assert (
            token_balance(aa_world.rpc_url, usdc, wallet.account)
            == DEVNET_SESSION_ALLOWANCE - route.price_atomic
        )
        assert (
            token_balance(aa_world.rpc_url, usdc, wallet.vault)
            == DEVNET_VAULT_FUNDING - DEVNET_SESSION_ALLOWANCE
        )
        # the next payment is covered by the hot balance: no second user operation
        assert agent.fetch(route.url).status == 200
        assert len(wallet.top_ups) == 1


def test_falls_back_to_handle_ops_when_the_bundler_is_down(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path)
    config = home.config.model_copy(
        update={"signer": home.config.signer.model_copy(update={"bundler_url": "http://127.0.0.1:9"})}
    )  # nothing listens on the discard port
    (home.root / "config.json").write_text(config.model_dump_json(by_alias=True))
    with Agent.open(open_home(home.root)) as agent:
        outcome = agent.fetch(aa_world.route("GET", "/v2/weather").url)
        assert outcome.status == 200
        [top_up] = _wallet(agent).top_ups
        assert top_up.via == "handleOps" and top_up.success


def test_counterfactual_account_pays_through_erc6492(aa_world: WorldInfo, tmp_path: Path) -> None:
    """Funds sent straight to the account's future address: the facilitator deploys it through
    the allowlisted factory, then settles."""
    home = _home(aa_world, tmp_path, deploy=False)
    route = aa_world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        assert not wallet.is_deployed()
        fund(aa_world, wallet.account, usdc=10 * route.price_atomic)
        outcome = agent.fetch(route.url)
        assert outcome.status == 200 and outcome.payment is not None
        assert outcome.payment.state == PaymentState.SETTLED
        assert wallet.top_ups == []  # the hot balance covered it: no user operation deployed it
        assert wallet.is_deployed()
        assert (
            token_balance(aa_world.rpc_url, aa_world.usdc.address, wallet.account) == 9 * route.price_atomic
        )


def test_on_chain_cap_refuses_before_anything_is_reserved(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/report")  # 0.01 USDC: within the off-chain policy
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        _owner_action(aa_world, wallet.account, "setPolicy", route.price_atomic - 1, 360, False)
        wallet.bounds(fresh=True)
        with pytest.raises(WalletRefused) as refused:
            agent.fetch(route.url)
        assert refused.value.reason == "onchain_cap"
        assert agent.payer.gate.ledger.recent() == []  # never reserved, never signed
        assert wallet.top_ups == [] and wallet.funds().hot_balance == 0


def test_revoked_session_key_refuses_and_vault_exhaustion_releases(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        # the owner empties the period's allowance: the top-up cannot cover the payment
        _owner_action(aa_world, wallet.vault, "setAllowance", 0, 86400, tag="x402-vault")
        with pytest.raises(WalletRefused) as exhausted:
            agent.fetch(route.url)
        assert exhausted.value.reason == "hot_wallet_exhausted"
        [released] = agent.payer.gate.ledger.recent()
        assert released.state == PaymentState.RELEASED  # the reservation is given back
        _owner_action(aa_world, wallet.account, "revokeSessionKey", wallet.session_address)
        wallet.bounds(fresh=True)
        with pytest.raises(WalletRefused) as revoked:
            agent.fetch(route.url)
        assert revoked.value.reason == "session_key_expired"


# ---- the `x402-agent wallet` commands, each a separate process as users run them ----

CLI = [sys.executable, "-m", "x402_agent.cli"]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Homes made by `init` take the keystore password from the environment; devnet homes from a
    # file (and the environment wins): give them the one they already use.
    password_file = home / "payer.password"
    password = password_file.read_text() if password_file.exists() else "a passphrase for tests"
    env = {**os.environ, "X402_AGENT_HOME": str(home), "X402_AGENT_KEY_PASSWORD": password}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_wallet_create_fund_approve_and_pay_from_a_fresh_home(aa_world: WorldInfo, tmp_path: Path) -> None:
    """The newcomer's path, all on the CLI: init a home, enroll the device, create a
    counterfactual account owned by it, fund it, approve a policy naming it on the device; the
    first payment deploys it."""
    home = tmp_path / "home"
    assert (
        _cli(
            home,
            "init",
            "--network",
            aa_world.network,
            "--rpc-url",
            aa_world.rpc_url,
        ).returncode
        == 0
    )
    assert (
        _cli(
            home,
            "init",
            "--network",
            aa_world.network,
            "--rpc-url",
            aa_world.rpc_url,
        ).returncode
        == 2
    )  # never over an existing home
    # The simulator runs on a port of its own, which HWI's scan does not look at: the person
    # names it once and the home remembers it for the approvals and owner actions below.
    enrolled = _cli(home, "device", "enroll", "--device-path", aa_world.device_path)
    assert enrolled.returncode == 0, enrolled.stderr
    created = _cli(
        home,
        "wallet",
        "create",
        "--network",
        aa_world.network,
        "--token",
        aa_world.usdc.address,
        "--max-value",
        "100000",
        "--allowance",
        "2000000",
        "--top-up-to",
        "300000",
        "--bundler-url",
        str(aa_world.bundler_url),
    )
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout[: created.stdout.rindex("}") + 1])
    config = open_home(home).config
    assert config.signer.kind == "smart_account" and config.signer.account == made["account"]
    keystore = json.loads((home / "session.keystore.json").read_text())
    assert keystore["address"].lower() == made["session_key"][2:].lower() and "crypto" in keystore
    w3 = Web3(Web3.HTTPProvider(aa_world.rpc_url))
    assert w3.eth.get_code(made["account"]) == b""  # counterfactual until its first top-up
    fund(aa_world, made["vault"], usdc=5_000_000)
    fund(aa_world, made["account"], eth=10**17)
    assert _cli(home, "fetch", aa_world.route("GET", "/v2/weather").url).returncode == 2  # no policy
    policy = smart_account_policy(aa_world, made["account"])
    (tmp_path / "policy.json").write_text(policy.model_dump_json(by_alias=True))
    assert _cli(home, "policy", "propose", str(tmp_path / "policy.json")).returncode == 0
    assert _cli(home, "policy", "approve").returncode == 0
    paid = _cli(home, "fetch", aa_world.route("GET", "/v2/weather").url)
    assert paid.returncode == 0, paid.stderr
    assert w3.eth.get_code(made["account"]) != b""
    status = json.loads(_cli(home, "wallet", "status", "--json").stdout)
    assert status["deployed"] and status["hot_balance"] == 300_000 - 1_000
    assert status["vault_available"] == 2_000_000 - 300_000


def test_wallet_status_topup_rotate_and_revoke(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path).root
    before = json.loads(_cli(home, "wallet", "status", "--json").stdout)
    assert before["hot_balance"] == 0 and before["vault_available"] == 2_000_000
    topped = _cli(home, "wallet", "topup", "250000")
    assert topped.returncode == 0, topped.stderr
    assert json.loads(topped.stdout)["hot_balance"] == 250_000
    budget = _cli(home, "budget")
    assert "0.25 held, 1.75 more from the vault this period, at most 0.1 per payment" in budget.stdout
    rotated = _cli(home, "wallet", "session-key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    after = json.loads(_cli(home, "wallet", "status", "--json").stdout)
    assert after["session_key"] != before["session_key"] and after["session_expiry"] > 0
    account = account_contract(Web3(Web3.HTTPProvider(aa_world.rpc_url)), after["account"])
    assert account.functions.sessionKeyExpiry(before["session_key"]).call() == 0  # old key revoked
    assert _cli(home, "fetch", aa_world.route("GET", "/v2/weather").url).returncode == 0
    revoked = _cli(home, "wallet", "session-key", "revoke", "--current")
    assert revoked.returncode == 0, revoked.stderr
    refused = _cli(home, "fetch", aa_world.route("GET", "/v2/weather").url)
    assert refused.returncode != 0 and "session_key_expired" in refused.stderr
    secret = open_home(home).keystore_password()
    assert all(secret not in done.stdout + done.stderr for done in (topped, rotated, revoked))


def test_agents_sharing_an_account_top_up_concurrently(aa_world: WorldInfo, tmp_path: Path) -> None:
    """Two processes' worth of wallets on one account refill at once: each has its own
    user-operation nonce key, so both land (the vault's allowance bounds them together)."""
    from concurrent.futures import ThreadPoolExecutor

    from x402_agent.chain.wallet import open_hot_wallet

    home = _home(aa_world, tmp_path)
    first, second = open_hot_wallet(home), open_hot_wallet(home)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda wallet: wallet.top_up(100_000), (first, second)))
    assert all(r.success for r in results)
    assert first.hot_balance() == 200_000
    assert first.funds().vault_available == 2_000_000 - 200_000


def test_wallet_withdraw_and_bounds_are_signed_on_the_device(aa_world: WorldInfo, tmp_path: Path) -> None:
    """After a stolen session key, the owner lowers the bounds and takes the funds out: each an
    owner action the device signs (through HWI), relayed by the home's relayer key."""
    home = _home(aa_world, tmp_path, deploy=False).root
    safe = Account.create().address
    lowered = _cli(home, "wallet", "bounds", "--max-value", "5000", "--allowance", "100000")
    assert lowered.returncode == 0, lowered.stderr
    status = json.loads(_cli(home, "wallet", "status", "--json").stdout)
    assert status["deployed"] and status["max_value"] == 5000 and status["vault_available"] == 100_000
    refused = _cli(home, "fetch", aa_world.route("GET", "/v2/report").url)  # 0.01 > 0.005 on chain
    assert refused.returncode == 1 and "onchain_cap" in refused.stderr
    moved = _cli(home, "wallet", "withdraw", str(DEVNET_VAULT_FUNDING), "--to", safe)
    assert moved.returncode == 0, moved.stderr
    assert token_balance(aa_world.rpc_url, aa_world.usdc.address, safe) == DEVNET_VAULT_FUNDING
    assert json.loads(_cli(home, "wallet", "status", "--json").stdout)["vault_balance"] == 0
