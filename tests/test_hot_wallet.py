"""The hot wallet end to end: an agent home paying from an X402Account owned by the device
simulator, its vault topped up by session-key user operations through the real alto bundler (or
straight to EntryPoint.handleOps), payments settled by the official x402 facilitator, and the
account's on-chain bounds checked before anything is reserved or signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance, transfer_logs
from web3 import Web3

from x402_agent.chain.account import run_owner_action
from x402_agent.chain.wallet import HotWallet, WalletRefused
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.provision import (
    DEVNET_SESSION_ALLOWANCE,
    DEVNET_VAULT_FUNDING,
    provision_smart_account_home,
)
from x402_agent.home import AgentHome, open_home
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent

PULLED = "0x" + Web3.keccak(text="Pulled(uint256,uint128)").hex()


@pytest.fixture(scope="module")
def aa_world() -> Iterator[WorldInfo]:
    # The world uses the device already at HWI's port (the session's simulator) or starts one.
    with LocalWorld(bundler=True) as info:
        assert info.bundler_url is not None
        yield info


def _home(world: WorldInfo, tmp_path: Path, **options: object) -> AgentHome:
    return provision_smart_account_home(world, tmp_path / "home", **options)  # type: ignore[arg-type]


def _wallet(agent: Agent) -> HotWallet:
    assert isinstance(agent.payer.signer, HotWallet)
    return agent.payer.signer


def _owner_action(world: WorldInfo, target: str, action: str, *args: object, tag: str = "x402-account"
                  ) -> None:
    device = HwiDevice.at("trezor", world.device_path)
    try:
        run_owner_action(Web3(Web3.HTTPProvider(world.rpc_url)), target, action, args,
                         lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH), dev_account(0),
                         tag=tag)
    finally:
        device.close()


def test_pays_from_the_smart_account_topping_up_through_the_bundler(
        aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        assert wallet.funds().hot_balance == 0
        outcome = agent.fetch(route.url)
        assert outcome.status == 200 and outcome.payment is not None
        assert outcome.payment.state == PaymentState.SETTLED and outcome.confirmed_on_chain
        [top_up] = wallet.top_ups
        assert top_up.via == "bundler" and top_up.success
        # the refill moved exactly top_up_to from the vault; the payment exactly the price
        pulled = [log for log in rpc(aa_world.rpc_url, "eth_getTransactionReceipt",
                                     top_up.transaction_hash)["logs"] if log["topics"][0] == PULLED]
        assert len(pulled) == 1 and int(pulled[0]["data"][2:66], 16) == DEVNET_SESSION_ALLOWANCE
        assert transfer_logs(aa_world.rpc_url, outcome.payment.settlement_tx) == [
            (aa_world.usdc.address, wallet.account, route.pay_to, route.price_atomic)]
        usdc = aa_world.usdc.address
        assert token_balance(aa_world.rpc_url, usdc, wallet.account) == \
            DEVNET_SESSION_ALLOWANCE - route.price_atomic
        assert token_balance(aa_world.rpc_url, usdc, wallet.vault) == \
            DEVNET_VAULT_FUNDING - DEVNET_SESSION_ALLOWANCE
        # the next payment is covered by the hot balance: no second user operation
        assert agent.fetch(route.url).status == 200
        assert len(wallet.top_ups) == 1


def test_falls_back_to_handle_ops_when_the_bundler_is_down(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path)
    config = home.config.model_copy(update={"signer": home.config.signer.model_copy(
        update={"bundler_url": "http://127.0.0.1:9"})})  # nothing listens on the discard port
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
        usdc = Web3(Web3.HTTPProvider(aa_world.rpc_url)).eth.contract(
            address=Web3.to_checksum_address(aa_world.usdc.address), abi=[{
                "name": "transfer", "type": "function", "stateMutability": "nonpayable",
                "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
                "outputs": [{"name": "", "type": "bool"}]}])
        from x402_agent.chain.account import send_transaction
        send_transaction(usdc.w3, aa_world.payer_private_key, {"to": usdc.address, "data": usdc.encode_abi(
            "transfer", args=[wallet.account, 10 * route.price_atomic])})
        outcome = agent.fetch(route.url)
        assert outcome.status == 200 and outcome.payment is not None
        assert outcome.payment.state == PaymentState.SETTLED
        assert wallet.top_ups == []  # the hot balance covered it: no user operation deployed it
        assert wallet.is_deployed()
        assert token_balance(aa_world.rpc_url, aa_world.usdc.address, wallet.account) == \
            9 * route.price_atomic


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
        aa_world: WorldInfo, tmp_path: Path) -> None:
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
