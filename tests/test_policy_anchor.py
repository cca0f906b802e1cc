"""The policy anchored on chain (issue 12, item 3).

A smart-account home's account stores the digest and version of the approved policy
(``setPolicyAnchor``, an owner action the device signs with the approval, relayed by the home's
relayer). The agent pays only under the anchored policy: checked at open, at every reload and
before every payment. An attacker on the host who restores every local file of an older policy
(policy, approval, state, device) is refused, because the chain holds the newer one; a tampered
policy is refused; a policy the device signed but never anchored is refused; the matching one
pays. A plain-key home keeps the local check and says it is weaker.

Real parts throughout: the session's local world (anvil, USDC, the x402 SDK server and
facilitator, the bundler), the device simulator through HWI (approving by itself unless a test
has the scripted person read it), the account and vault from the factory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chain_reads import rpc, token_balance
from eth_utils.crypto import keccak
from test_approval_screens import start_approve
from test_device_policy import screens  # noqa: F401 (the fixture)

from x402_agent.approval import PolicyApproval, PolicyRejected, approval_message
from x402_agent.chain.anchor import anchor_policy, read_anchor
from x402_agent.chain.wallet import HotWallet, open_hot_wallet
from x402_agent.device.hwi import HwiDevice
from x402_agent.device.simulator import DeviceSimulator, Screen
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home, provision_smart_account_home
from x402_agent.home import AgentHome
from x402_agent.operations import Agent
from x402_agent.policy import Policy, load_policy
from x402_agent.policy_store import (
    APPROVAL_FILE,
    DEVICE_FILE,
    POLICY_FILE,
    PROPOSED_FILE,
    STATE_FILE,
    PolicyStore,
    expectations,
    policy_json,
    write_json,
)

CLI = [sys.executable, "-m", "x402_agent.cli"]
LOCAL_FILES = (POLICY_FILE, APPROVAL_FILE, STATE_FILE, DEVICE_FILE, "policy.base.json", PROPOSED_FILE)
SUPERSEDED = "policy_superseded_on_chain"
NOT_ANCHORED = "policy_not_anchored"
SCREEN_WAIT = 60.0


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    env.pop("X402_AGENT_KEY_PASSWORD", None)  # devnet homes read theirs from a file
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=180)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {name: (root / name).read_bytes() if (root / name).exists() else None for name in LOCAL_FILES}


def restore(root: Path, files: dict[str, bytes | None]) -> None:
    """What an attacker on the host does: every local file back as it was (absent ones removed)."""
    for name, content in files.items():
        if content is None:
            (root / name).unlink(missing_ok=True)
        else:
            (root / name).write_bytes(content)


def raised(policy: Policy, per_request_max: int) -> Policy:
    data = policy.model_dump(by_alias=True)
    data["version"] = policy.version + 1
    for asset in data["assets"]:
        asset["per_request_max"] = per_request_max
    return Policy.model_validate(data)


def approve_by_cli(home: Path, policy: Policy, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"v{policy.version}.json"
    write_json(path, policy_json(policy))
    proposed = run(home, "policy", "propose", str(path))
    assert proposed.returncode == 0, proposed.stderr
    return run(home, "policy", "approve")


def anchor_of(home: AgentHome) -> tuple[str, int]:
    wallet = open_hot_wallet(home)
    anchor = read_anchor(wallet.w3, wallet.account)
    assert anchor is not None
    return anchor.digest, anchor.version


def balances(world: WorldInfo, home: AgentHome, pay_to: str) -> tuple[int, int]:
    signer = home.config.signer
    assert signer.kind == "smart_account"
    return (
        token_balance(world.rpc_url, world.usdc.address, signer.account),
        token_balance(world.rpc_url, world.usdc.address, pay_to),
    )


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> AgentHome:
    """A deployed smart-account home, its v1 approved on the simulator and anchored on chain."""
    return provision_smart_account_home(world, tmp_path / "home")


def test_the_provisioned_policy_is_anchored_and_policy_show_prints_it(
    world: WorldInfo, home: AgentHome
) -> None:
    v1 = load_policy(home.root / POLICY_FILE)
    assert anchor_of(home) == (v1.digest, 1)
    show = run(home.root, "policy", "show")
    assert show.returncode == 0, show.stderr
    assert f"  chain anchor   v1 {v1.digest} (matches the home's policy)" in show.stdout


def test_rollback_with_every_local_file_restored_is_refused(
    world: WorldInfo, home: AgentHome, tmp_path: Path
) -> None:
    weather = world.route("GET", "/v2/weather")
    assert weather.pay_to is not None
    old_files = snapshot(home.root)  # v1, as the attacker keeps it
    v1 = load_policy(home.root / POLICY_FILE)
    v2 = raised(v1, 50_000)  # the person lowers the cap (v2 is the tighter one)

    done = approve_by_cli(home.root, v2, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"anchored on chain: v2 {v2.digest}" in done.stdout
    assert anchor_of(home) == (v2.digest, 2)
    with Agent.open(home) as agent:  # the matching policy pays
        assert agent.verified(agent.fetch(weather.url)).confirmed_on_chain
        running = agent
        restore(home.root, old_files)  # every local file of v1: policy, approval, state, device
        before = balances(world, home, weather.pay_to)
        paid = running.receipts()
        with pytest.raises(PolicyRejected) as in_flight:  # a running agent, at its reload
            running.fetch(weather.url)
        assert in_flight.value.reason == SUPERSEDED
        assert running.receipts() == paid  # nothing reserved, nothing signed

    with pytest.raises(PolicyRejected) as refused:  # and at open
        Agent.open(home)
    assert refused.value.reason == SUPERSEDED
    assert refused.value.details["anchored_version"] == 2 and refused.value.details["local_version"] == 1
    assert v2.digest in refused.value.message

    fetched = run(home.root, "fetch", weather.url)
    assert fetched.returncode == 2 and f"[{SUPERSEDED}]" in fetched.stderr and fetched.stdout == ""
    show = run(home.root, "policy", "show")
    assert show.returncode == 2 and f"[{SUPERSEDED}]" in show.stderr
    assert f"chain anchor   v2 {v2.digest} (MISMATCH: not the home's policy)" in show.stdout
    assert balances(world, home, weather.pay_to) == before


def test_a_tampered_policy_is_refused(world: WorldInfo, home: AgentHome) -> None:
    data = json.loads((home.root / POLICY_FILE).read_text())
    for asset in data["assets"]:
        asset["per_request_max"] *= 10
    (home.root / POLICY_FILE).write_text(json.dumps(data))
    with pytest.raises(PolicyRejected) as refused:
        Agent.open(home)
    assert refused.value.reason == "policy_tampered"


def test_a_device_signed_policy_that_was_never_anchored_is_refused(world: WorldInfo, home: AgentHome) -> None:
    """The device signed v2's text, but the anchor never reached the chain (the person refused
    the second screen; the host kept the first signature and installs v2 by hand)."""
    v1 = load_policy(home.root / POLICY_FILE)
    v2 = raised(v1, 90_000)
    store = PolicyStore(home.root, expectations(home))
    enrollment = store.enrollment()
    device = HwiDevice.at("trezor", world.device_path)
    try:
        text = approval_message(v2, v1)
        signature = device.sign_message(text, enrollment.path)
    finally:
        device.close()
    approval = PolicyApproval(
        method="bitcoin_message",
        policy_version=2,
        policy_digest=v2.digest,
        message=text,
        signature=signature,
        fingerprint=enrollment.fingerprint,
        path=enrollment.path,
        previous=v1,
    )
    store.verify_approved(v2, approval, anchored=False)  # signed by the owner: the local checks pass
    write_json(home.root / POLICY_FILE, policy_json(v2))
    write_json(home.root / APPROVAL_FILE, approval.model_dump(by_alias=True))
    with pytest.raises(PolicyRejected) as refused:
        Agent.open(home)
    assert refused.value.reason == NOT_ANCHORED
    assert refused.value.details["anchored_version"] == 1


def test_a_newer_anchor_set_elsewhere_stops_a_running_agent_at_its_next_payment(
    world: WorldInfo, home: AgentHome
) -> None:
    """The owner anchors v2 from another machine; this home's files do not change. The check
    before each payment reads the anchor: the next payment is refused, nothing reserved."""
    weather = world.route("GET", "/v2/weather")
    with Agent.open(home) as agent:
        assert agent.fetch(weather.url).status == 200
        wallet = agent.payer.signer
        assert isinstance(wallet, HotWallet)
        v2 = raised(agent.payer.gate.policy, 60_000)
        device = HwiDevice.at("trezor", world.device_path)
        key_path = PolicyStore(home.root, expectations(home)).enrollment().path
        try:
            anchor_policy(open_hot_wallet(home), v2, lambda line: device.sign_message(line, key_path))
        finally:
            device.close()
        paid = agent.receipts()
        with pytest.raises(PolicyRejected) as refused:
            agent.fetch(weather.url)
        assert refused.value.reason == SUPERSEDED
        assert agent.receipts() == paid


def test_rejecting_the_anchor_screen_installs_nothing(
    world: WorldInfo,
    home: AgentHome,
    device_simulator: DeviceSimulator,
    screens: list[Screen],  # noqa: F811
    tmp_path: Path,
) -> None:
    """`policy approve` shows two screens, the policy's text and the anchor action; the scripted
    person approves the first and refuses the second: no file changes, the chain keeps v1."""
    v1 = load_policy(home.root / POLICY_FILE)
    v2 = raised(v1, 70_000)
    path = tmp_path / "v2.json"
    write_json(path, policy_json(v2))
    assert run(home.root, "policy", "propose", str(path)).returncode == 0
    before = snapshot(home.root)
    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False
    approving = start_approve(home.root)
    first = device_simulator.wait_for_screen(timeout=SCREEN_WAIT)
    assert first is not None and first.field("Message") == approval_message(v2, v1)
    assert device_simulator.approve()
    second = _next_screen(device_simulator, first)
    anchor_text = second.field("Message") or ""
    assert "anchor policy" in anchor_text and v2.digest.removeprefix("sha256:") in anchor_text
    assert "version 2" in anchor_text
    assert device_simulator.reject()
    _, err = approving.communicate(timeout=120)
    assert approving.returncode == 1 and "[device_rejected]" in err
    assert snapshot(home.root) == before
    assert anchor_of(home) == (v1.digest, 1)


def _next_screen(simulator: DeviceSimulator, previous: Screen) -> Screen:
    """The next confirmation after ``previous`` was decided (the host asks again at once)."""
    deadline = time.monotonic() + SCREEN_WAIT
    while time.monotonic() < deadline:
        screen = simulator.wait_for_screen(timeout=deadline - time.monotonic())
        if screen is not None and screen is not previous:
            return screen
    raise AssertionError("no second screen")


def test_checking_the_anchor_before_a_payment_costs_one_read(world: WorldInfo, home: AgentHome) -> None:
    """The figure for the README: one eth_call per payment."""
    store = PolicyStore(home.root, expectations(home))
    approved = store.load_verified()[1]
    store.check_anchor(approved)  # connection warm
    rounds = 50
    began = time.perf_counter()
    for _ in range(rounds):
        store.check_anchor(approved)
    per_check = (time.perf_counter() - began) / rounds
    print(f"anchor check: {per_check * 1000:.2f} ms per payment (one eth_call, anvil on loopback)")
    assert per_check < 0.5
    selector = "0x" + keccak(text="policyAnchor()")[:4].hex()
    signer = home.config.signer
    assert signer.kind == "smart_account"
    raw = rpc(world.rpc_url, "eth_call", {"to": signer.account, "data": selector}, "latest")
    assert int(raw[66:], 16) == approved.version


def test_a_plain_key_home_keeps_the_local_check_and_says_it_is_weaker(
    world: WorldInfo, tmp_path: Path
) -> None:
    home = provision_devnet_home(world, tmp_path / "plain")
    show = run(home.root, "policy", "show")
    assert show.returncode == 0, show.stderr
    assert (
        "chain anchor   none (plain-key home)" in show.stdout and "weaker than a smart account" in show.stdout
    )
    old_files = snapshot(home.root)
    v2 = raised(load_policy(home.root / POLICY_FILE), 50_000)
    done = approve_by_cli(home.root, v2, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no chain anchor (plain-key home)" in done.stdout
    restore(home.root, old_files)  # the residual risk, stated: nothing on chain to compare
    with Agent.open(home) as agent:
        assert agent.payer.gate.policy.version == 1


def test_eip712_approval_anchors_too(world: WorldInfo, home: AgentHome, tmp_path: Path) -> None:
    """Through trezorlib (typed data), then the anchor action through HWI: anchored, and it pays."""
    v2 = raised(load_policy(home.root / POLICY_FILE), 80_000)
    path = tmp_path / "v2.json"
    write_json(path, policy_json(v2))
    assert run(home.root, "policy", "propose", str(path)).returncode == 0
    done = run(home.root, "policy", "approve", "--eip712")
    assert done.returncode == 0, done.stderr
    assert PolicyApproval.model_validate_json((home.root / APPROVAL_FILE).read_bytes()).method == "eip712"
    assert anchor_of(home) == (v2.digest, 2)
    with Agent.open(home) as agent:
        assert agent.fetch(world.route("GET", "/v2/weather").url).status == 200


def test_an_account_without_policy_anchor_keeps_the_local_check(world: WorldInfo, home: AgentHome) -> None:
    """A contract that has no policyAnchor() (an account made before anchors; here the token,
    which reverts the same way) reads as unsupported, not as a chain failure; no code at all
    reads as "not deployed"."""
    from web3 import Web3

    from x402_agent.chain.anchor import AnchorReader

    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    for read in (
        AnchorReader(world.rpc_url, world.usdc.address),
        lambda: read_anchor(w3, world.usdc.address),
    ):
        anchor = read()
        assert anchor is not None and not anchor.supported and anchor.version == 0
    nobody = "0x" + "5e" * 20
    assert AnchorReader(world.rpc_url, nobody)() is None and read_anchor(w3, nobody) is None
    store = PolicyStore(home.root, expectations(home))
    assert store.anchor() == read_anchor(w3, open_hot_wallet(home).account)  # the home's: supported
