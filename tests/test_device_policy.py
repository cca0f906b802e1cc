"""The hardware-rooted policy end to end: the `x402-agent device|policy` commands as users run
them (a process per command), the session's device simulator reached through real, unmodified
HWI and trezorlib, and agents paying the local x402 world.

Every test shares the session's simulator (on a free port pair; provisioned homes record its
path, as a devnet's do, so the CLI finds it without HWI's scan); the ``screens`` fixture
records what it displays and puts it back to auto-approval (and plugged in) afterwards.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_reads import token_balance
from coincurve import PrivateKey
from eth_account import Account
from hwilib._base58 import decode_check
from hwilib.common import hash160

from x402_agent import operations
from x402_agent.approval import (
    Enrollment,
    PolicyApproval,
    PolicyRejected,
    approval_message,
    verify_approval,
)
from x402_agent.device.approve import approve, enroll
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, DeviceError, HwiDevice, list_devices
from x402_agent.device.simulator import TEST_MNEMONIC, DeviceSimulator, Screen
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import DEVNET_SCRYPT_N, provision_devnet_home
from x402_agent.errors import ConfigError, PolicyDenied
from x402_agent.home import DeviceLocation, open_home, provision_home
from x402_agent.operations import Agent
from x402_agent.policy import Policy, load_policy
from x402_agent.policy_store import (
    APPROVAL_FILE,
    BASE_FILE,
    DEVICE_FILE,
    POLICY_FILE,
    PROPOSED_FILE,
    STATE_FILE,
    PolicyStore,
    expectations,
    policy_json,
    write_json,
)
from x402_agent.receipts import receipt

CLI = [sys.executable, "-m", "x402_agent.cli"]
FINGERPRINT = "5c9e228d"  # master fingerprint of the standard test seed ("all" x12)
OTHER_PATH = "m/44'/1'/402'/0/1"  # a real key of the same device, but not the enrolled one
PORT_WAIT = 120.0
FILES = (DEVICE_FILE, POLICY_FILE, APPROVAL_FILE, BASE_FILE, PROPOSED_FILE, STATE_FILE)


# ---- helpers --------------------------------------------------------------------------------
@pytest.fixture
def screens(device_simulator: DeviceSimulator) -> Iterator[list[Screen]]:
    """What the simulator displays during the test; afterwards it is auto-approving, honours the
    debug link and is plugged in again, as every other test expects."""
    shown: list[Screen] = []
    previous = device_simulator.on_screen
    device_simulator.on_screen = shown.append
    try:
        yield shown
    finally:
        device_simulator.on_screen = previous
        device_simulator.confirm, device_simulator.honor_debuglink = "auto", True
        if device_simulator.pending_screen is not None:
            device_simulator.reject()
        if not device_simulator.running:
            device_simulator.replug(wait=PORT_WAIT)


@pytest.fixture
def home(world: WorldInfo, screens: list[Screen], tmp_path: Path) -> Path:
    """A devnet home: the simulator enrolled (through HWI) and policy v1 (0.10 per request)
    approved on it. ``screens`` starts empty for the test itself."""
    root = provision_devnet_home(world, tmp_path / "home").root
    screens.clear()
    return root


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def with_limits(policy: Policy, *, version: int | None = None, **asset_changes: object) -> Policy:
    """``policy`` with every asset rule changed as given (and optionally a new version)."""
    data = policy.model_dump(by_alias=True)
    for asset in data["assets"]:
        asset.update(asset_changes)
    if version is not None:
        data["version"] = version
    return Policy.model_validate(data)


def write_policy(path: Path, policy: Policy) -> Path:
    path.write_text(json.dumps(policy_json(policy), indent=2) + "\n")
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every policy-related file of a home, byte for byte (None: absent)."""
    return {name: (root / name).read_bytes() if (root / name).exists() else None for name in FILES}


def store_of(root: Path) -> PolicyStore:
    home = open_home(root)
    return PolicyStore(home.root, expectations(home))


def device_signed(world: WorldInfo, policy: Policy, path: str = DEFAULT_APPROVAL_PATH) -> PolicyApproval:
    """A real signature of the simulator, made through HWI at ``path``, over the policy's line."""
    device = HwiDevice.at("trezor", world.device_path)
    try:
        message = approval_message(policy)
        signature = device.sign_message(message, path)
    finally:
        device.close()
    return PolicyApproval(
        method="bitcoin_message",
        policy_version=policy.version,
        policy_digest=policy.digest,
        message=message,
        signature=signature,
        fingerprint=FINGERPRINT,
        path=path,
    )


def install_by_hand(root: Path, policy: Policy, approval: PolicyApproval) -> None:
    """What someone with write access to the home could do, bypassing every check."""
    write_json(root / POLICY_FILE, policy_json(policy))
    write_json(root / APPROVAL_FILE, approval.model_dump(by_alias=True))


def seed_pubkey(path: str) -> str:
    """The compressed public key at ``path`` of the test seed, derived here without the device."""
    Account.enable_unaudited_hdwallet_features()
    key = Account.from_mnemonic(TEST_MNEMONIC, account_path=path).key
    return PrivateKey(bytes(key)).public_key.format(compressed=True).hex()


def shown_text(propose_output: str) -> str:
    """The approval text `policy propose` prints, indented, up to the digest (its last line)."""
    lines = propose_output.splitlines()
    start = lines.index("the device will show:") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("sha256:"))
    return "\n".join(line.strip() for line in lines[start : end + 1])


# ---- 1. device list and enrollment ----------------------------------------------------------
def test_device_list_shows_the_simulator(
    world: WorldInfo, device_simulator: DeviceSimulator, tmp_path: Path
) -> None:
    assert device_simulator.fingerprint == FINGERPRINT
    done = run(fresh_home(world, tmp_path / "fresh"), "device", "list")  # its recorded device
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    simulator = [row for row in rows if row and row[-1] == device_simulator.path]
    assert len(simulator) == 1, done.stdout
    assert simulator[0][0] == "trezor" and simulator[0][1] == FINGERPRINT
    assert "ERROR" not in done.stdout


def fresh_home(world: WorldInfo, root: Path) -> Path:
    """A home with the payer key and where the simulator answers; no device enrolled, no
    policy."""
    return provision_home(
        root,
        private_key=world.payer_private_key,
        rpc_urls={world.network: world.rpc_url},
        password="pw",
        store_password=True,
        chain_id=world.chain_id,
        kdf_iterations=DEVNET_SCRYPT_N,
        device=DeviceLocation(path=world.device_path),
    ).root


def test_device_enroll_pins_the_default_path_key_after_showing_its_address(
    world: WorldInfo, screens: list[Screen], tmp_path: Path
) -> None:
    root = fresh_home(world, tmp_path / "fresh")
    assert not (root / DEVICE_FILE).exists()
    done = run(root, "device", "enroll")
    assert done.returncode == 0, done.stderr
    assert "confirm the address on the device" in done.stderr

    expected = seed_pubkey(DEFAULT_APPROVAL_PATH)
    enrolled = Enrollment.model_validate_json((root / DEVICE_FILE).read_bytes())
    assert enrolled.pubkey == expected
    assert (enrolled.fingerprint, enrolled.path, enrolled.device_type) == (
        FINGERPRINT,
        DEFAULT_APPROVAL_PATH,
        "trezor",
    )
    assert json.loads(done.stdout) == enrolled.model_dump()

    # The person was shown the address of exactly that key, and nothing was signed.
    assert [s.kind for s in screens] == ["show_address"]
    (address_screen,) = screens
    assert address_screen.field("Path") == DEFAULT_APPROVAL_PATH
    address = address_screen.field("Address")
    assert address is not None
    assert decode_check(address) == b"\x00" + hash160(bytes.fromhex(expected))  # P2PKH of it
    # Enrollment alone approves nothing: without a policy the agent refuses to start.
    with pytest.raises(ConfigError) as refused:
        Agent.open(root)
    assert refused.value.reason == "policy_missing"


def test_enrollment_refused_unanswered_or_unplugged_enrolls_nothing(
    world: WorldInfo, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    root = fresh_home(world, tmp_path / "fresh")
    device_simulator.confirm = "reject"
    done = run(root, "device", "enroll")
    assert done.returncode == 1
    assert "[device_rejected]" in done.stderr and "address was rejected" in done.stderr
    assert [s.kind for s in screens] == ["show_address"]
    assert not (root / DEVICE_FILE).exists()

    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False
    device = HwiDevice.at("trezor", device_simulator.path, timeout=1.0)
    try:
        with pytest.raises(DeviceError) as timed_out:
            enroll(store_of(root), device, DEFAULT_APPROVAL_PATH)
    finally:
        device.close()
    assert timed_out.value.reason == "device_timeout"
    pending = device_simulator.pending_screen
    assert pending is not None and pending.field("Path") == DEFAULT_APPROVAL_PATH
    assert device_simulator.reject()
    assert not (root / DEVICE_FILE).exists()

    device_simulator.confirm, device_simulator.honor_debuglink = "unplug", True
    device = HwiDevice.at("trezor", device_simulator.path)
    try:
        with pytest.raises(DeviceError) as unplugged:
            enroll(store_of(root), device, DEFAULT_APPROVAL_PATH)
    finally:
        device.close()
    assert unplugged.value.reason == "device_unavailable"
    assert not device_simulator.running
    assert not (root / DEVICE_FILE).exists()
    device_simulator.confirm = "auto"
    device_simulator.replug(wait=PORT_WAIT)

    assert run(root, "device", "enroll").returncode == 0  # confirmed this time
    assert Enrollment.model_validate_json((root / DEVICE_FILE).read_bytes()).pubkey == (
        seed_pubkey(DEFAULT_APPROVAL_PATH)
    )
    assert [s.kind for s in screens] == ["show_address"] * 4


def test_the_recorded_device_path_comes_before_the_scan_and_a_stale_one_is_skipped(
    device_simulator: DeviceSimulator,
) -> None:
    gone = DeviceSimulator(port=0).start()  # a simulator whose world has stopped
    stale = gone.path
    gone.stop()
    device = HwiDevice.find(FINGERPRINT, [("trezor", stale), ("trezor", device_simulator.path)])
    try:
        assert device.info.path == device_simulator.path
        assert device.fingerprint() == FINGERPRINT
    finally:
        device.close()
    listed = list_devices([("trezor", stale)])
    assert listed[0].path == stale and listed[0].error is not None
    # A recorded device with another key is not the enrolled one: HWI's scan decides.
    with pytest.raises(DeviceError) as missing:
        HwiDevice.find("00000000", [("trezor", device_simulator.path)])
    assert missing.value.reason == "device_not_found"


# ---- 2. propose -> approve -> show -> verify ------------------------------------------------
def test_propose_approve_show_verify(
    world: WorldInfo, home: Path, screens: list[Screen], tmp_path: Path
) -> None:
    v1 = load_policy(home / POLICY_FILE)
    v2 = with_limits(v1, version=2, per_request_max=300_000, daily_max=3_000_000)
    proposal = write_policy(tmp_path / "v2.json", v2)

    proposed = run(home, "policy", "propose", str(proposal))
    assert proposed.returncode == 0, proposed.stderr
    out = proposed.stdout
    assert f"proposed policy v2 ({v2.digest})" in out
    # A readable diff: one line per changed field, old -> new.
    assert "  version: 1 -> 2" in out
    assert "  assets[0].per_request_max: 100000 -> 300000" in out
    assert "  assets[1].daily_max: 2000000 -> 3000000" in out
    diff = out[: out.index("the device will show:")]
    assert "chain_id" not in diff and "account" not in diff  # unchanged fields are not listed
    line = shown_text(out)
    assert line == approval_message(v2, v1)
    shown = line.splitlines()
    assert shown[0] == "x402-agent policy v2 replaces v1"
    assert shown[1] == f"account: {world.payer_address.lower()}, chain {world.chain_id}"
    assert "per-request 0.30 (was 0.10), daily 3.00 (was 2.00)" in line
    assert "session default: lifetime 1h, USDC@" in line
    assert shown[-1] == v2.digest
    assert (home / PROPOSED_FILE).exists()
    assert load_policy(home / POLICY_FILE) == v1  # proposing changes nothing yet
    assert screens == []  # nor asks the device

    approved = run(home, "policy", "approve")
    assert approved.returncode == 0, approved.stderr
    assert "policy v2 approved on the device" in approved.stdout
    assert "\n".join(f"  {row}" for row in shown) in approved.stderr  # "confirm on the device:"
    (signing,) = screens
    assert signing.kind == "sign_message"
    assert signing.field("Message") == line  # the device showed exactly the proposed line
    assert signing.field("Path") == DEFAULT_APPROVAL_PATH
    assert load_policy(home / POLICY_FILE).digest == v2.digest
    approval = PolicyApproval.model_validate_json((home / APPROVAL_FILE).read_bytes())
    assert (approval.method, approval.policy_version, approval.policy_digest, approval.message) == (
        "bitcoin_message",
        2,
        v2.digest,
        line,
    )
    assert not (home / PROPOSED_FILE).exists()
    assert json.loads((home / STATE_FILE).read_text()) == {"version": 2, "digest": v2.digest}

    show = run(home, "policy", "show")
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith(f"policy v2 {v2.digest}\n")
    assert "per-request 0.30, daily 3.00" in show.stdout
    assert f"approved by device {FINGERPRINT} (trezor) at {DEFAULT_APPROVAL_PATH}" in show.stdout

    verify = run(home, "policy", "verify")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip() == f"ok: policy v2 {v2.digest}"

    # A copy of the policy with its approval beside it verifies on its own...
    copy = tmp_path / "review" / "team-policy.json"
    copy.parent.mkdir()
    shutil.copy(home / POLICY_FILE, copy)
    shutil.copy(home / APPROVAL_FILE, copy.with_name("team-policy.json.approval.json"))
    checked = run(home, "policy", "verify", str(copy))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"ok: policy v2 approved by device {FINGERPRINT}"
    # ...and an edited copy does not.
    write_policy(copy, with_limits(v2, per_request_max=400_000))
    forged = run(home, "policy", "verify", str(copy))
    assert forged.returncode == 2 and "[policy_tampered]" in forged.stderr
    assert len(screens) == 1  # show and verify never touch the device


# ---- 3. a running agent picks up a new approval ---------------------------------------------
def test_running_agent_picks_up_a_newly_approved_policy(
    world: WorldInfo, home: Path, screens: list[Screen], tmp_path: Path
) -> None:
    premium = world.route("GET", "/v2/premium")  # 0.25, above v1's 0.10 per request
    assert premium.pay_to is not None and premium.asset is not None
    agent = Agent.open(home)  # as a server would: opened once, kept running
    try:
        before = token_balance(world.rpc_url, premium.asset, premium.pay_to)
        with pytest.raises(PolicyDenied) as refused:
            agent.fetch(premium.url)
        assert refused.value.reason == "per_request_cap_exceeded"
        assert token_balance(world.rpc_url, premium.asset, premium.pay_to) == before

        v1 = agent.payer.gate.policy
        v2 = with_limits(v1, version=2, per_request_max=300_000)
        assert run(home, "policy", "propose", str(write_policy(tmp_path / "v2.json", v2))).returncode == 0
        done = run(home, "policy", "approve")
        assert done.returncode == 0, done.stderr
        assert [s.field("Message") for s in screens] == [approval_message(v2, v1)]

        outcome = agent.fetch(premium.url)  # the same instance, no restart
        assert outcome.status == 200 and outcome.payment is not None
        paid = receipt(outcome.payment)
        assert paid["state"] == "settled" and paid["amount"] == str(premium.price_atomic)
        assert paid["policy_version"] == 2 and paid["policy_digest"] == v2.digest
        assert token_balance(world.rpc_url, premium.asset, premium.pay_to) == (before + premium.price_atomic)
    finally:
        agent.close()


# ---- 4. every refusal at startup ------------------------------------------------------------
def _unsigned(root: Path, world: WorldInfo) -> None:
    (root / APPROVAL_FILE).unlink()


def _tampered(root: Path, world: WorldInfo) -> None:
    data = json.loads((root / POLICY_FILE).read_text())
    for asset in data["assets"]:
        asset["per_request_max"] = 1_000_000  # 1.00 per request instead of 0.10
    (root / POLICY_FILE).write_text(json.dumps(data, indent=2))


def _rolled_back(root: Path, world: WorldInfo) -> None:
    saved = {name: (root / name).read_bytes() for name in (POLICY_FILE, APPROVAL_FILE)}
    store = store_of(root)
    v2 = with_limits(store.load(), version=2, per_request_max=50_000)
    device = HwiDevice.at("trezor", world.device_path)
    try:
        approve(store, device, v2)  # v2 accepted: v1 is history now
    finally:
        device.close()
    for name, raw in saved.items():
        (root / name).write_bytes(raw)


def _same_version_swapped(root: Path, world: WorldInfo) -> None:
    # Another v1, even one the enrolled device really signed, cannot replace the accepted v1.
    other = with_limits(load_policy(root / POLICY_FILE), per_request_max=90_000)
    install_by_hand(root, other, device_signed(world, other))


def _wrong_key(root: Path, world: WorldInfo) -> None:
    policy = load_policy(root / POLICY_FILE)
    write_json(root / APPROVAL_FILE, device_signed(world, policy, OTHER_PATH).model_dump(by_alias=True))


def _wrong_account(root: Path, world: WorldInfo) -> None:
    data = policy_json(with_limits(load_policy(root / POLICY_FILE), version=2))
    data["account"] = "0x" + "ab" * 20
    other = Policy.model_validate(data)
    install_by_hand(root, other, device_signed(world, other))  # genuinely approved, for someone else


def _wrong_chain(root: Path, world: WorldInfo) -> None:
    data = policy_json(with_limits(load_policy(root / POLICY_FILE), version=2))
    data["chain_id"] = world.alt_chain_id
    other = Policy.model_validate(data)
    install_by_hand(root, other, device_signed(world, other))


def _not_enrolled(root: Path, world: WorldInfo) -> None:
    (root / DEVICE_FILE).unlink()


@pytest.mark.parametrize(
    "breakage, reason, words",
    [
        (_unsigned, "policy_unsigned", "no approval"),
        (_tampered, "policy_tampered", "not the approved policy"),
        (_rolled_back, "policy_rolled_back", "older than the accepted v2"),
        (_same_version_swapped, "policy_rolled_back", "differs from the accepted v1"),
        (_wrong_key, "policy_wrong_key", "another key"),
        (_wrong_account, "policy_wrong_account", "0xabab"),
        (_wrong_chain, "policy_wrong_account", "the policy is for chain"),
        (_not_enrolled, "device_not_enrolled", "no enrolled device"),
    ],
    ids=[
        "unsigned",
        "tampered",
        "rolled_back",
        "same_version_swapped",
        "wrong_key",
        "wrong_account",
        "wrong_chain",
        "not_enrolled",
    ],
)
def test_startup_refuses_a_policy_the_device_did_not_approve(
    world: WorldInfo, home: Path, breakage: object, reason: str, words: str
) -> None:
    assert callable(breakage)
    breakage(home, world)
    weather = world.route("GET", "/v2/weather")  # 0.001: any approved policy would pay it
    assert weather.pay_to is not None and weather.asset is not None
    payee_before = token_balance(world.rpc_url, weather.asset, weather.pay_to)
    payer_before = token_balance(world.rpc_url, weather.asset, world.payer_address)

    with pytest.raises(PolicyRejected) as refused:
        Agent.open(home)
    assert refused.value.reason == reason
    assert words.lower() in refused.value.message.lower()

    done = run(home, "fetch", weather.url)
    assert done.returncode == 2, done.stderr
    assert f"[{reason}]" in done.stderr
    assert done.stdout == ""
    verify = run(home, "policy", "verify")
    assert verify.returncode == 2 and f"[{reason}]" in verify.stderr
    assert token_balance(world.rpc_url, weather.asset, weather.pay_to) == payee_before
    assert token_balance(world.rpc_url, weather.asset, world.payer_address) == payer_before


def test_propose_refuses_old_versions_and_other_accounts(
    world: WorldInfo, home: Path, screens: list[Screen], tmp_path: Path
) -> None:
    v1 = load_policy(home / POLICY_FILE)
    before = snapshot(home)
    same_version = write_policy(tmp_path / "same.json", with_limits(v1, per_request_max=50_000))
    done = run(home, "policy", "propose", str(same_version))
    assert done.returncode == 2 and "[policy_rolled_back]" in done.stderr
    assert "above v1" in done.stderr

    data = policy_json(with_limits(v1, version=2))
    data["account"] = "0x" + "cd" * 20
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data))
    done = run(home, "policy", "propose", str(foreign))
    assert done.returncode == 2 and "[policy_wrong_account]" in done.stderr
    assert snapshot(home) == before  # no proposal was recorded

    # Once v3 is approved, v2 is a lower version and is refused too.
    store = store_of(home)
    device = HwiDevice.at("trezor", world.device_path)
    try:
        approve(store, device, with_limits(v1, version=3))
    finally:
        device.close()
    before = snapshot(home)
    lower = write_policy(tmp_path / "v2.json", with_limits(v1, version=2, per_request_max=10_000))
    done = run(home, "policy", "propose", str(lower))
    assert done.returncode == 2 and "[policy_rolled_back]" in done.stderr
    assert snapshot(home) == before
    assert [s.kind for s in screens] == ["sign_message"]  # only the v3 approval above


# ---- 5. tightening needs no device ----------------------------------------------------------
def test_tightening_needs_no_device_and_applies_at_the_next_payment(
    world: WorldInfo, home: Path, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    report, weather = world.route("GET", "/v2/report"), world.route("GET", "/v2/weather")
    agent = Agent.open(home)
    try:
        first = agent.fetch(report.url).payment  # 0.01 under v1's 0.10 cap
        assert first is not None and first.policy_version == 1
        v1 = agent.payer.gate.policy
        approval_before = (home / APPROVAL_FILE).read_bytes()
        device_before = (home / DEVICE_FILE).read_bytes()

        device_simulator.confirm = "reject"  # the device would refuse anything it is asked
        tighter = with_limits(v1, version=2, per_request_max=5_000, daily_max=1_000_000)
        done = run(home, "policy", "tighten", str(write_policy(tmp_path / "tight.json", tighter)))
        assert done.returncode == 0, done.stderr
        assert "tightened; no device needed" in done.stdout
        assert screens == []  # the device was not asked
        assert load_policy(home / POLICY_FILE) == tighter
        assert load_policy(home / BASE_FILE) == v1  # the approved policy it tightens
        assert (home / APPROVAL_FILE).read_bytes() == approval_before
        assert (home / DEVICE_FILE).read_bytes() == device_before
        assert run(home, "policy", "verify").stdout.strip() == f"ok: policy v2 {tighter.digest}"

        with pytest.raises(PolicyDenied) as refused:  # the running agent, at its next payment
            agent.fetch(report.url)
        assert refused.value.reason == "per_request_cap_exceeded"
        cheaper = agent.fetch(weather.url).payment  # 0.001 is still within 0.005
        assert cheaper is not None
        assert (cheaper.policy_version, cheaper.policy_digest) == (2, tighter.digest)

        before = snapshot(home)
        looser = with_limits(v1, version=3, per_request_max=300_000)
        done = run(home, "policy", "tighten", str(write_policy(tmp_path / "loose.json", looser)))
        assert done.returncode == 2
        assert "[policy_needs_device]" in done.stderr and "per_request_max raised" in done.stderr
        assert snapshot(home) == before
        assert screens == []
        with pytest.raises(PolicyDenied):
            agent.fetch(report.url)  # still the tightened policy
    finally:
        agent.close()


# ---- 6. the device says no, goes away, or never answers --------------------------------------
def _propose_v2(home: Path, tmp_path: Path) -> Policy:
    v2 = with_limits(load_policy(home / POLICY_FILE), version=2, per_request_max=300_000)
    done = run(home, "policy", "propose", str(write_policy(tmp_path / "v2.json", v2)))
    assert done.returncode == 0, done.stderr
    return v2


def test_rejected_on_the_device(
    home: Path, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    v2 = _propose_v2(home, tmp_path)
    before = snapshot(home)
    device_simulator.confirm = "reject"

    done = run(home, "policy", "approve")
    assert done.returncode == 1  # a device error, not a usage error
    assert "[device_rejected]" in done.stderr and "rejected on the device" in done.stderr
    v1 = load_policy(home / POLICY_FILE)
    assert [s.field("Message") for s in screens] == [approval_message(v2, v1)]  # seen, refused
    assert snapshot(home) == before

    device = HwiDevice.at("trezor", device_simulator.path)
    try:
        with pytest.raises(DeviceError) as rejected:
            approve(store_of(home), device, v2)
    finally:
        device.close()
    assert rejected.value.reason == "device_rejected"
    assert snapshot(home) == before
    assert load_policy(home / POLICY_FILE).version == 1


def test_device_unplugged_mid_signing(
    home: Path, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    v2 = _propose_v2(home, tmp_path)
    before = snapshot(home)
    device = HwiDevice.at("trezor", device_simulator.path)
    device_simulator.confirm = "unplug"
    try:
        with pytest.raises(DeviceError) as unplugged:
            approve(store_of(home), device, v2)
    finally:
        device.close()
    assert unplugged.value.reason == "device_unavailable"
    assert not device_simulator.running  # the cable really was pulled mid-signing
    assert [s.kind for s in screens] == ["sign_message"]
    assert snapshot(home) == before

    device_simulator.confirm = "auto"
    device_simulator.replug(wait=PORT_WAIT)
    done = run(home, "policy", "approve")  # plugged back in, the same proposal goes through
    assert done.returncode == 0, done.stderr
    assert load_policy(home / POLICY_FILE).digest == v2.digest


def test_device_timeout(
    home: Path, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    v2 = _propose_v2(home, tmp_path)
    before = snapshot(home)
    # Nobody presses anything: HWI's debug-link "yes" is ignored, only approve()/reject() count.
    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False
    device = HwiDevice.at("trezor", device_simulator.path, timeout=1.0)
    try:
        with pytest.raises(DeviceError) as timed_out:
            approve(store_of(home), device, v2)
    finally:
        device.close()
    assert timed_out.value.reason == "device_timeout"
    assert "within 1s" in timed_out.value.message
    pending = device_simulator.pending_screen  # still displayed, waiting for a person
    assert pending is not None and pending.field("Message") == approval_message(
        v2, load_policy(home / POLICY_FILE)
    )
    assert device_simulator.reject()  # clean up the abandoned request
    assert device_simulator.pending_screen is None
    for worker in [t for t in threading.enumerate() if t.name == "hwi-call"]:
        worker.join(10)  # the abandoned HWI call ends with the rejection
        assert not worker.is_alive()
    assert snapshot(home) == before


# ---- 7. Trezor's EIP-712 path ---------------------------------------------------------------
def test_eip712_approval_through_trezorlib(
    world: WorldInfo, home: Path, device_simulator: DeviceSimulator, screens: list[Screen], tmp_path: Path
) -> None:
    v2 = _propose_v2(home, tmp_path)
    line = approval_message(v2, load_policy(home / POLICY_FILE))
    before = snapshot(home)
    device_simulator.confirm = "reject"  # first the person says no...
    refused = run(home, "policy", "approve", "--eip712")
    assert refused.returncode == 1 and "[device_rejected]" in refused.stderr
    assert snapshot(home) == before
    device_simulator.confirm = "auto"  # ...then yes
    done = run(home, "policy", "approve", "--eip712")
    assert done.returncode == 0, done.stderr

    approval = PolicyApproval.model_validate_json((home / APPROVAL_FILE).read_bytes())
    assert approval.method == "eip712" and approval.policy_digest == v2.digest
    assert re.fullmatch(r"0x[0-9a-f]{130}", approval.signature)
    enrolled = Enrollment.model_validate_json((home / DEVICE_FILE).read_bytes())
    verify_approval(v2, approval, enrolled)  # recovers the enrolled key's Ethereum address
    assert load_policy(home / POLICY_FILE).digest == v2.digest
    verify = run(home, "policy", "verify")
    assert verify.returncode == 0 and verify.stdout.strip() == f"ok: policy v2 {v2.digest}"

    assert len(screens) == 2 and screens[0] == screens[1]  # the same fields, both times
    typed = screens[1]
    assert typed.kind == "eth_sign_typed_data"
    assert typed.field("Path") == DEFAULT_APPROVAL_PATH
    assert typed.field("Primary type") == "PolicyApproval"
    assert typed.field("message.summary") == line
    assert typed.field("message.version") == "2"
    assert typed.field("message.digest") == "0x" + v2.digest.removeprefix("sha256:")
    assert typed.field("domain.name") == "x402-agent policy"
    assert typed.field("domain.chainId") == str(world.chain_id)

    agent = Agent.open(home)  # and the agent accepts it
    try:
        assert agent.payer.gate.policy.digest == v2.digest
    finally:
        agent.close()


# ---- 8. the agent cannot change its own policy ----------------------------------------------
POLICY_WRITERS = (
    "propose",
    "approve",
    "tighten",
    "install",
    "enroll",
    "write",
    "policy_store",
    "sign_message",
    "unlink",
)


def test_agent_operations_cannot_write_the_policy(world: WorldInfo, home: Path) -> None:
    methods = [name for name in dir(Agent) if not name.startswith("_")]
    assert {"fetch", "afetch", "quote", "receipts", "budget"} <= set(methods)
    writers = [name for name in methods for word in POLICY_WRITERS if word in name.lower()]
    assert writers == [], f"Agent exposes policy-changing operations: {writers}"

    agent = Agent.open(home)
    try:
        public = {name: getattr(agent, name) for name in dir(agent) if not name.startswith("_")}
        for name, value in public.items():
            if name == "approver":  # a payment approver callback (None here), not the policy
                assert value is None
                continue
            assert not any(word in name.lower() for word in POLICY_WRITERS), name
        # What the agent holds of the policy is a read-only view: a Policy, not its store.
        assert isinstance(agent.payer.gate.policy, Policy)
    finally:
        agent.close()

    # Nor does the module behind the agent-facing tools call anything that writes policy files.
    tree = ast.parse(inspect.getsource(operations))
    called = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    called |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    store_writers = {
        "install_approved",
        "install_tightening",
        "propose",
        "enroll",
        "write_json",
        "approve",
        "approve_typed",
        "sign_message",
        "sign_typed_data",
    }
    assert called & store_writers == set()
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module and "device" in module for module in imported)
