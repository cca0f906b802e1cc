"""A forged enrollment on a smart-account home: an attacker on the host replaces the key in the
home's ``device.json`` with their own and signs a looser policy with it. The signature is valid
for the file (the local check alone accepts it), but the key is not the account's owner, as the
chain records it or as an undeployed account's address commits to it: refused at start, at the
CLI, and in a running agent at the policy change, with nothing paid. The genuine enrollment
still pays. Real parts throughout: the session's local world, the device simulator through HWI,
the account from the factory on anvil; the attacker's key is a plain local key, as on a host."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chain_reads import token_balance
from coincurve import PrivateKey

from x402_agent.approval import (
    Enrollment,
    PolicyApproval,
    PolicyRejected,
    approval_message,
    bitcoin_message_digest,
    verify_approval,
)
from x402_agent.chain.wallet import HotWallet
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import fund, provision_devnet_home, provision_smart_account_home
from x402_agent.home import CONFIG_FILE, AgentHome, open_home
from x402_agent.operations import Agent
from x402_agent.policy import Policy, load_policy
from x402_agent.policy_store import (
    APPROVAL_FILE,
    DEVICE_FILE,
    POLICY_FILE,
    policy_json,
    write_json,
)

CLI = [sys.executable, "-m", "x402_agent.cli"]
NOT_OWNER = "enrollment_not_owner"


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    env.pop("X402_AGENT_KEY_PASSWORD", None)  # devnet homes read theirs from a file
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def forge(root: Path) -> tuple[Enrollment, Policy]:
    """What an attacker on the host can do without the device: put their own key in the
    device file and sign, with it, a policy that allows ten times more per request and per day."""
    attacker = PrivateKey()
    genuine = Enrollment.model_validate_json((root / DEVICE_FILE).read_bytes())
    forged = genuine.model_copy(update={"pubkey": attacker.public_key.format(compressed=True).hex()})
    current = load_policy(root / POLICY_FILE)
    data = current.model_dump(by_alias=True)
    data["version"] = current.version + 1
    for asset in data["assets"]:
        asset["per_request_max"] *= 10
        if asset["daily_max"] is not None:
            asset["daily_max"] *= 10
    looser = Policy.model_validate(data)
    message = approval_message(looser)
    signed = attacker.sign_recoverable(bitcoin_message_digest(message), hasher=None)
    signature = bytes([31 + signed[64]]) + signed[:64]  # compressed-key signed-message header
    approval = PolicyApproval(
        method="bitcoin_message",
        policy_version=looser.version,
        policy_digest=looser.digest,
        message=message,
        signature=base64.b64encode(signature).decode(),
        fingerprint=forged.fingerprint,
        path=forged.path,
    )
    verify_approval(looser, approval, forged)  # the file-only check would accept it
    write_json(root / DEVICE_FILE, forged.model_dump())
    write_json(root / POLICY_FILE, policy_json(looser))
    write_json(root / APPROVAL_FILE, approval.model_dump(by_alias=True))
    return forged, looser


def _owner(home: AgentHome) -> str:
    signer = home.config.signer
    assert signer.kind == "smart_account"
    return signer.setup.owner.lower()


def _assert_not_owner(refused: PolicyRejected, forged: Enrollment, owner: str) -> None:
    assert refused.reason == NOT_OWNER
    assert forged.eth_address in refused.message and owner in refused.message.lower()
    assert refused.details["enrolled"] == forged.eth_address
    assert refused.details["owner"] == owner


@pytest.mark.parametrize("deployed", [True, False], ids=["deployed", "counterfactual"])
def test_forged_enrollment_is_refused_at_open_and_at_the_cli(
    world: WorldInfo, tmp_path: Path, deployed: bool
) -> None:
    home = provision_smart_account_home(world, tmp_path / "home", deploy=deployed)
    signer = home.config.signer
    assert signer.kind == "smart_account"
    owner = _owner(home)
    show = run(home.root, "policy", "show")  # the genuine enrollment: the owner, no mismatch
    assert show.returncode == 0, show.stderr
    source = "on chain" if deployed else "committed to by the undeployed account's address"
    assert f"account owner  {owner} ({source})" in show.stdout and "MISMATCH" not in show.stdout
    with Agent.open(home):  # and it opens
        pass

    forged, _ = forge(home.root)
    weather = world.route("GET", "/v2/weather")
    assert weather.pay_to is not None
    held = token_balance(world.rpc_url, world.usdc.address, signer.account)
    vault = token_balance(world.rpc_url, world.usdc.address, signer.vault)
    payee = token_balance(world.rpc_url, world.usdc.address, weather.pay_to)

    with pytest.raises(PolicyRejected) as refused:
        Agent.open(home)
    _assert_not_owner(refused.value, forged, owner)
    assert source in refused.value.message

    done = run(home.root, "fetch", weather.url)
    assert done.returncode == 2, done.stderr
    assert f"[{NOT_OWNER}]" in done.stderr and done.stdout == ""
    assert "re-enroll the device that owns the account" in done.stderr
    show = run(home.root, "policy", "show")
    assert show.returncode == 2 and f"[{NOT_OWNER}]" in show.stderr
    assert f"enrolled key   {forged.eth_address}" in show.stdout
    assert f"account owner  {owner} ({source})   MISMATCH" in show.stdout
    assert token_balance(world.rpc_url, world.usdc.address, signer.account) == held
    assert token_balance(world.rpc_url, world.usdc.address, signer.vault) == vault
    assert token_balance(world.rpc_url, world.usdc.address, weather.pay_to) == payee


def test_forged_enrollment_is_refused_in_a_running_agent(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_smart_account_home(world, tmp_path / "home")
    weather = world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        assert isinstance(agent.payer.signer, HotWallet)
        account = agent.payer.signer.account
        # the genuine enrollment pays
        assert agent.verified(agent.fetch(weather.url)).confirmed_on_chain
        paid = agent.receipts()
        held = token_balance(world.rpc_url, world.usdc.address, account)

        forged, _ = forge(home.root)
        with pytest.raises(PolicyRejected) as refused:
            agent.fetch(weather.url)
        _assert_not_owner(refused.value, forged, _owner(home))
        assert agent.receipts() == paid  # nothing reserved, nothing signed
        assert token_balance(world.rpc_url, world.usdc.address, account) == held


def test_counterfactual_owner_is_the_one_the_address_commits_to(world: WorldInfo, tmp_path: Path) -> None:
    """Not deployed yet: the attacker also rewrites the owner the home's config records. The
    account's address still commits to the real one, so the forgery is refused; the genuine
    enrollment pays, the payment deploying the account with that owner."""
    home = provision_smart_account_home(world, tmp_path / "home", deploy=False)
    signer = home.config.signer
    assert signer.kind == "smart_account"
    real_owner = _owner(home)
    genuine_files = {
        name: (home.root / name).read_bytes()
        for name in (DEVICE_FILE, POLICY_FILE, APPROVAL_FILE, CONFIG_FILE)
    }

    forged, _ = forge(home.root)
    config = json.loads((home.root / CONFIG_FILE).read_text())
    config["signer"]["setup"]["owner"] = forged.eth_address
    (home.root / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(PolicyRejected) as refused:
        Agent.open(open_home(home.root))
    assert refused.value.reason == NOT_OWNER
    assert refused.value.details["owner"] is None  # neither candidate makes this address
    assert forged.eth_address in refused.value.message

    for name, content in genuine_files.items():  # the person restores the genuine home
        (home.root / name).write_bytes(content)
    route = world.route("GET", "/v2/weather")
    with Agent.open(open_home(home.root)) as agent:
        wallet = agent.payer.signer
        assert isinstance(wallet, HotWallet) and not wallet.is_deployed()
        fund(world, wallet.account, usdc=10 * route.price_atomic)
        assert agent.fetch(route.url).status == 200
        assert wallet.is_deployed()
    show = run(home.root, "policy", "show")
    assert show.returncode == 0, show.stderr
    assert f"account owner  {real_owner} (on chain)" in show.stdout


def test_plain_key_home_keeps_the_local_check_and_says_it_is_weaker(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_devnet_home(world, tmp_path / "home")
    show = run(home.root, "policy", "show")
    assert show.returncode == 0, show.stderr
    assert "account owner  none on chain (plain-key home)" in show.stdout
    assert "weaker than a smart account" in show.stdout
    # The residual risk, stated: with no owner on chain, a replaced device file still passes.
    forge(home.root)
    with Agent.open(home):
        pass


def test_device_enroll_on_a_smart_account_home_takes_only_the_owner(world: WorldInfo, tmp_path: Path) -> None:
    home = provision_smart_account_home(world, tmp_path / "home")
    enrolled = (home.root / DEVICE_FILE).read_bytes()
    other = run(home.root, "device", "enroll", "--path", "m/44'/1'/402'/0/1")  # same device, not the owner
    assert other.returncode == 2 and f"[{NOT_OWNER}]" in other.stderr
    assert (home.root / DEVICE_FILE).read_bytes() == enrolled  # nothing written
    again = run(home.root, "device", "enroll")  # the owner's key: accepted
    assert again.returncode == 0, again.stderr
    assert json.loads((home.root / DEVICE_FILE).read_text()) == json.loads(enrolled)
