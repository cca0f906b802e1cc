"""Bundlers as a user has them (issue 15, item 2): a paid fetch that needs a top-up, with the
bundler down, and with the bundler and the relayer both down.

Real parts: the local world with the alto bundler, the project's X402Account and vault owned by
the device simulator, the official x402 SDK server and facilitator; the CLI run as a separate
process as the user types it. "Down" is what a user meets: the bundler URL answers nothing (a
loopback port nobody listens on) and the relayer key holds no ETH.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance, transfer_logs
from hostile_bundler import HostileBundler
from web3 import Web3

from x402_agent.chain.account import run_owner_action
from x402_agent.chain.bundler import BundlerClient
from x402_agent.chain.entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from x402_agent.chain.gas import DEFAULT_GAS_CAPS, read_caps
from x402_agent.chain.wallet import HotWallet, open_hot_wallet
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.provision import provision_smart_account_home
from x402_agent.errors import ChainError
from x402_agent.home import AgentHome, open_home
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.signer import LocalKeySigner

CLI = [sys.executable, "-m", "x402_agent.cli"]
DEAD_BUNDLER = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def aa_world() -> Iterator[WorldInfo]:
    with LocalWorld(bundler=True) as info:
        assert info.bundler_url is not None
        yield info


def _home(world: WorldInfo, tmp_path: Path) -> AgentHome:
    """A deployed account whose every payment needs a top-up of exactly its price
    (``top_up_to`` 0: refill only the shortfall)."""
    home = provision_smart_account_home(world, tmp_path / "home")
    return _configure(home, top_up_to=0)


def _configure(home: AgentHome, **signer: object) -> AgentHome:
    config = home.config.model_copy(update={"signer": home.config.signer.model_copy(update=signer)})
    (home.root / "config.json").write_text(config.model_dump_json(by_alias=True, indent=2))
    return open_home(home.root)


def _wallet(agent: Agent) -> HotWallet:
    assert isinstance(agent.payer.signer, HotWallet)
    return agent.payer.signer


def _relayer_address(home: AgentHome) -> str:
    signer = home.config.signer
    assert signer.kind == "smart_account" and signer.relayer_keystore is not None
    key = LocalKeySigner.from_keystore(home.path(signer.relayer_keystore), home.keystore_password())
    return key.address


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # devnet homes read their password from a file; `init` homes from the environment
    environ = {name: value for name, value in os.environ.items() if name != "X402_AGENT_BUNDLER_KEY"}
    environ.update({"X402_AGENT_HOME": str(home), **(env or {})})
    if not (home / "payer.password").exists():
        environ["X402_AGENT_KEY_PASSWORD"] = "a passphrase for tests"
    return subprocess.run([*CLI, *args], env=environ, capture_output=True, text=True, timeout=120)


def _usdc(world: WorldInfo, holder: str) -> int:
    return token_balance(world.rpc_url, world.usdc.address, holder)


def test_bundler_down_the_relayer_tops_up_and_the_paid_fetch_succeeds(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _configure(_home(aa_world, tmp_path), bundler_url=DEAD_BUNDLER)
    route = aa_world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        vault_before = _usdc(aa_world, wallet.vault)
        assert wallet.hot_balance() == 0
        outcome = agent.verified(agent.fetch(route.url))
        assert outcome.status == 200 and outcome.payment is not None
        assert outcome.payment.state == PaymentState.SETTLED and outcome.confirmed_on_chain
        [top_up] = wallet.top_ups
        assert top_up.via == "handleOps" and top_up.success  # the relayer sent it
        # exactly the price came out of the vault and went to the payee
        assert _usdc(aa_world, wallet.vault) == vault_before - route.price_atomic
        assert wallet.hot_balance() == 0
        assert transfer_logs(aa_world.rpc_url, outcome.payment.settlement_tx) == [
            (aa_world.usdc.address, wallet.account, route.pay_to, route.price_atomic)
        ]


def test_bundler_and_relayer_down_the_payment_is_refused_and_nothing_counted(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    # One payment while both are up: the account's gas deposit is funded, so the next top-up
    # needs only a bundler or a relayer to send it.
    first = _cli(home.root, "fetch", route.url)
    assert first.returncode == 0, first.stderr
    home = _configure(home, bundler_url=DEAD_BUNDLER)
    rpc(aa_world.rpc_url, "anvil_setBalance", _relayer_address(home), "0x0")
    signer = home.config.signer
    assert signer.kind == "smart_account"
    balances = {who: _usdc(aa_world, who) for who in (signer.account, signer.vault, route.pay_to)}
    budget_before = json.loads(_cli(home.root, "budget", "--json").stdout)

    refused = _cli(home.root, "fetch", route.url)

    assert refused.returncode == 1, refused.stderr
    assert "[user_op_unsent]" in refused.stderr
    assert "no bundler took the user operation" in refused.stderr
    assert "relayer" in refused.stderr and "holds 0 wei" in refused.stderr
    assert "next step: the wallet cannot top up now, nothing was paid or counted" in refused.stderr
    as_json = json.loads(_cli(home.root, "fetch", "--json", route.url).stdout)
    assert as_json["reason"] == "user_op_unsent"
    assert as_json["details"]["bundler_error"].startswith("bundler at ")
    # nothing counted, nothing left reserved, nothing moved
    assert json.loads(_cli(home.root, "budget", "--json").stdout)["assets"] == budget_before["assets"]
    with Agent.open(home) as agent:
        rows = agent.payer.gate.ledger.recent()
    assert [row.state for row in rows] == [PaymentState.RELEASED, PaymentState.RELEASED, PaymentState.SETTLED]
    assert {who: _usdc(aa_world, who) for who in balances} == balances


def test_both_down_at_the_first_payment_the_relayer_is_named_and_nothing_counted(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    """The account's gas deposit is still empty: only the relayer can have the account move its
    ETH in, and it holds none. Refused before any user operation, saying so."""
    home = _configure(_home(aa_world, tmp_path), bundler_url=DEAD_BUNDLER)
    rpc(aa_world.rpc_url, "anvil_setBalance", _relayer_address(home), "0x0")
    route = aa_world.route("GET", "/v2/weather")
    budget_before = json.loads(_cli(home.root, "budget", "--json").stdout)["assets"]
    refused = json.loads(_cli(home.root, "fetch", "--json", route.url).stdout)
    assert refused["reason"] == "relayer_unfunded"
    assert f"the relayer {_relayer_address(home)} holds 0 wei" in refused["message"]
    assert refused["next_step"].startswith("the wallet cannot send its top-up: the user sends the relayer")
    assert json.loads(_cli(home.root, "budget", "--json").stdout)["assets"] == budget_before
    with Agent.open(home) as agent:
        assert [row.state for row in agent.payer.gate.ledger.recent()] == [PaymentState.RELEASED]
        assert _wallet(agent).hot_balance() == 0


# ---- gas through the bundler's standard estimate, within the account's caps ----


def _submitted_op(w3: Web3, transaction_hash: str) -> tuple[int, int, int]:
    """(verificationGasLimit, callGasLimit, preVerificationGas) of the op in a handleOps tx."""
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    tx = w3.eth.get_transaction(transaction_hash)  # type: ignore[arg-type]
    _fn, args = entry_point.decode_function_input(tx["input"])
    [op] = args["ops"]
    limits = int.from_bytes(op[4] if isinstance(op, tuple) else op["accountGasLimits"], "big")
    pre_verification = op[5] if isinstance(op, tuple) else op["preVerificationGas"]
    return limits >> 128, limits & (2**128 - 1), int(pre_verification)


def test_the_top_up_takes_its_gas_limits_from_the_bundler_estimate(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    w3 = Web3(Web3.HTTPProvider(aa_world.rpc_url))
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        fixed = wallet.gas_fields()  # ours without a bundler
        wallet.top_up(1_000)  # funds the gas deposit: the estimate below then stays what it was
        with BundlerClient(str(aa_world.bundler_url)) as bundler:
            estimate = bundler.estimate(wallet.refill_operation(1_000, dummy_signature=True))
        result = wallet.top_up(1_000)
    assert result.via == "bundler" and result.success
    verification, call, pre_verification = _submitted_op(w3, result.transaction_hash)
    print(f"estimate {estimate}, sent {(verification, call, pre_verification)}, used {result.gas_used}")
    assert verification == estimate.verification_gas_limit * 125 // 100 < fixed.verification_gas_limit
    assert call == estimate.call_gas_limit * 125 // 100
    assert pre_verification == estimate.pre_verification_gas
    caps = read_caps(w3, wallet.account, True)
    assert verification <= caps.verification_gas_limit and call <= caps.call_gas_limit
    assert result.gas_used < verification + call + pre_verification


def test_an_estimate_above_the_caps_is_refused_in_words_and_nothing_counted(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    w3 = Web3(Web3.HTTPProvider(aa_world.rpc_url))
    signer = home.config.signer
    assert signer.kind == "smart_account"
    device = HwiDevice.at("trezor", aa_world.device_path)
    try:  # the owner caps the call gas below what refill's call needs
        run_owner_action(
            w3,
            signer.account,
            "setGasCaps",
            [DEFAULT_GAS_CAPS.verification_gas_limit, 20_000, *dataclasses.astuple(DEFAULT_GAS_CAPS)[2:]],
            lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH),
            dev_account(0),
        )
    finally:
        device.close()
    balances = {who: _usdc(aa_world, who) for who in (signer.account, signer.vault, route.pay_to)}
    with Agent.open(home) as agent:
        with pytest.raises(ChainError) as refused:
            agent.fetch(route.url)
        assert refused.value.reason == "gas_estimate_above_cap"
        assert "call_gas_limit" in refused.value.message and "> cap 20000" in refused.value.message
        assert refused.value.details["call_gas_limit"]["cap"] == 20_000
        [row] = agent.payer.gate.ledger.recent()
        assert row.state == PaymentState.RELEASED
        assert _wallet(agent).top_ups == []
    assert {who: _usdc(aa_world, who) for who in balances} == balances


# ---- a provider's bundler refusing (hostile_bundler.HostileBundler: a stand-in, see its doc) ----


def test_a_bundler_refusing_the_signature_refuses_the_fetch_in_words(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    said = "UserOperation reverted with reason: AA24 signature error"
    with HostileBundler(aa_world.chain_id, ENTRY_POINT_V07, -32507, said) as hostile:
        home = _configure(home, bundler_url=hostile.url)
        relayer_nonce = Web3(Web3.HTTPProvider(aa_world.rpc_url)).eth.get_transaction_count(
            _relayer_address(home)
        )
        refused = _cli(home.root, "fetch", "--json", route.url)
    error = json.loads(refused.stdout)
    assert error["reason"] == "bundler_signature_invalid"
    assert "AA24: the account refused the signature" in error["message"] and said in error["message"]
    assert "nothing was paid" in error["next_step"]
    assert hostile.methods[-1] == "eth_estimateUserOperationGas"  # refused at the estimate
    with Agent.open(home) as agent:
        assert [row.state for row in agent.payer.gate.ledger.recent()] == [PaymentState.RELEASED]
    w3 = Web3(Web3.HTTPProvider(aa_world.rpc_url))
    assert (
        w3.eth.get_transaction_count(_relayer_address(home)) == relayer_nonce + 1
    )  # the deposit's refill(0) only


def test_a_bundler_refusing_by_its_own_rules_hands_over_to_the_relayer(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    """ERC-7562 rules, throttling and stake are the bundler's policy, not the EntryPoint's: the
    relayer's handleOps lands the top-up."""
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    refusing = HostileBundler(aa_world.chain_id, ENTRY_POINT_V07, -32502, "banned opcode TIMESTAMP")
    with refusing as hostile, Agent.open(_configure(home, bundler_url=hostile.url)) as agent:
        outcome = agent.fetch(route.url)
        assert outcome.status == 200 and outcome.payment is not None
        [top_up] = _wallet(agent).top_ups
    assert top_up.via == "handleOps" and top_up.success
    # refused at the estimate: the operation goes to the relayer without asking the bundler again
    assert hostile.methods.count("eth_estimateUserOperationGas") == 1
    assert "eth_sendUserOperation" not in hostile.methods


class HangingBundler:
    """A bundler URL whose server accepts connections and never answers (an overloaded or
    half-dead provider): real TCP on a free loopback port; counts the connections."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self._listener.accept()[0])
            except OSError:  # shut down by __exit__
                return

    def __enter__(self) -> HangingBundler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        self._listener.close()
        self._thread.join()
        for held in self._held:
            held.close()

    @property
    def connections(self) -> int:
        return len(self._held)


def test_a_bundler_that_hangs_is_waited_on_once_then_the_relayer_sends(
    aa_world: WorldInfo, tmp_path: Path
) -> None:
    home = _home(aa_world, tmp_path)
    opened = open_hot_wallet(home)
    signer = home.config.signer
    assert signer.kind == "smart_account" and opened.relayer is not None
    session = LocalKeySigner.from_keystore(home.path(signer.keystore), home.keystore_password())
    with HangingBundler() as hanging:
        wallet = HotWallet(
            opened.w3, opened.config, opened.account, opened.vault, session.private_key_bytes(),
            bundler=BundlerClient(hanging.url, timeout_s=1.0), relayer=opened.relayer,
        )  # fmt: skip
        try:
            started = time.monotonic()
            result = wallet.top_up(1_000)
            took = time.monotonic() - started
        finally:
            wallet.close()
            opened.close()
        assert hanging.connections == 1  # the estimate's; the send was not tried again
    assert result.via == "handleOps" and result.success
    print(f"top-up with a hanging bundler (1 s timeout): {took:.2f} s")
    assert took < 2 * 1.0 + 5  # one timeout, not two, plus the relayer's transactions


# ---- the bundler's API key: from the environment, never stored or shown ----

KEY = "sk_test_9f8e7d6c5b4a39281706"  # what a provider would issue


def test_the_api_key_comes_from_the_environment_and_never_shows(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = _home(aa_world, tmp_path)
    route = aa_world.route("GET", "/v2/weather")
    # A provider that quotes the request back (as some do in their errors): the key is in it.
    said = f"AA24 signature error for /rpc?apikey={KEY}"
    with HostileBundler(aa_world.chain_id, ENTRY_POINT_V07, -32507, said) as hostile:
        configured = hostile.url + "/rpc?apikey=${X402_AGENT_BUNDLER_KEY}"
        home = _configure(home, bundler_url=configured)
        with_key = {"X402_AGENT_BUNDLER_KEY": KEY}
        outputs = [
            _cli(home.root, "fetch", route.url, env=with_key),
            _cli(home.root, "fetch", "--json", route.url, env=with_key),
            _cli(home.root, "wallet", "status", "--json", env=with_key),
            _cli(home.root, "wallet", "status", env=with_key),
            _cli(home.root, "budget", "--json", env=with_key),
        ]
        missing = _cli(home.root, "fetch", "--json", route.url)
    assert hostile.paths and set(hostile.paths) == {f"/rpc?apikey={KEY}"}  # expanded when sent
    refused = json.loads(outputs[1].stdout)
    assert refused["reason"] == "bundler_signature_invalid"
    assert "/rpc?apikey=${X402_AGENT_BUNDLER_KEY}" in refused["message"]  # the provider's words, redacted
    assert json.loads(outputs[2].stdout)["bundler"] == configured
    assert json.loads(missing.stdout)["reason"] == "key_env_missing"
    assert "X402_AGENT_BUNDLER_KEY" in json.loads(missing.stdout)["message"]
    for shown in [*outputs, missing]:
        assert KEY not in shown.stdout + shown.stderr
    assert KEY not in "".join(
        path.read_text(errors="replace") for path in home.root.rglob("*") if path.is_file()
    )
    # the bundler down with the key in its URL: the connection error shows the placeholder only
    home = _configure(home, bundler_url="http://127.0.0.1:9/rpc/${X402_AGENT_BUNDLER_KEY}")
    rpc(aa_world.rpc_url, "anvil_setBalance", _relayer_address(home), "0x0")
    down = _cli(home.root, "fetch", "--json", route.url, env=with_key)
    assert json.loads(down.stdout)["reason"] == "user_op_unsent"
    assert "127.0.0.1:9/rpc/${X402_AGENT_BUNDLER_KEY}" in down.stdout and KEY not in down.stdout + down.stderr


def test_a_key_in_clear_is_refused_before_anything_is_written(aa_world: WorldInfo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _cli(home, "init", "--network", aa_world.network, "--rpc-url", aa_world.rpc_url).returncode == 0
    before = sorted(p.name for p in home.iterdir()), (home / "config.json").read_text()
    for clear in (f"https://bundler.example/rpc?apikey={KEY}", f"https://bundler.example/v2/{KEY}"):
        created = _cli(home, "wallet", "create", "--network", aa_world.network,
                       "--token", aa_world.usdc.address, "--max-value", "1000", "--allowance", "1000",
                       "--bundler-url", clear)  # fmt: skip
        assert created.returncode == 2 and "[key_in_clear]" in created.stderr
        assert "${X402_AGENT_BUNDLER_KEY}" in created.stderr and KEY not in created.stderr + created.stdout
        assert (sorted(p.name for p in home.iterdir()), (home / "config.json").read_text()) == before
    # a home edited by hand to hold one is refused when opened, without quoting it
    provisioned = _home(aa_world, tmp_path / "other")
    _configure(provisioned, bundler_url="http://127.0.0.1:9")
    config = json.loads((provisioned.root / "config.json").read_text())
    config["signer"]["bundler_url"] = f"https://bundler.example/rpc?api_key={KEY}"
    (provisioned.root / "config.json").write_text(json.dumps(config))
    status = _cli(provisioned.root, "wallet", "status")
    assert status.returncode == 2 and "[config_invalid]" in status.stderr
    assert "query parameter 'api_key'" in status.stderr and KEY not in status.stderr + status.stdout
