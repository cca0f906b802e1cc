"""Session keys of the smart account (issue 12, items 4 and 6), on anvil with the device simulator,
driving the CLI as a user types it.

A rotation is one owner action. Interrupted at each step (the person rejects the screen, the
device is unplugged while it shows it, the relayer has no ETH so the transaction never lands),
the home keeps paying with the old key and records the rotation; the natural retry finishes it,
after which the stolen (old) key can neither pay (its ERC-1271 signature is refused by the
account and by USDC) nor refill (its user operation fails validation). ``revoke`` names its key
by address and refuses the home's own key without ``--current``. Expiries beyond 48 bits are
refused by the CLI and by the contract. An account created with ``--payee`` pays only those.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from x402_agent.chain.account import account_contract, run_owner_action
from x402_agent.chain.factory import create_account_calldata, factory_address
from x402_agent.chain.session_keys import NEXT_KEYSTORE, ROTATION_FILE
from x402_agent.chain.wallet import HotWallet, WalletRefused, account_config
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.device.simulator import DeviceSimulator
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_smart_account_home
from x402_agent.errors import ChainError
from x402_agent.home import AgentHome, open_home
from x402_agent.signer import LocalKeySigner, TokenDomain, TransferAuthorization

CLI = [sys.executable, "-m", "x402_agent.cli"]
ERC1271_MAGIC = bytes.fromhex("1626ba7e")
PORT_WAIT = 10.0


@pytest.fixture
def device(device_simulator: DeviceSimulator) -> Iterator[DeviceSimulator]:
    """The session's simulator; afterwards auto-approving and plugged in again."""
    try:
        yield device_simulator
    finally:
        device_simulator.confirm = "auto"
        if not device_simulator.running:
            device_simulator.replug(wait=PORT_WAIT)


@pytest.fixture
def home(world: WorldInfo, device: DeviceSimulator, tmp_path: Path) -> AgentHome:
    """A home paying from a deployed X402Account owned by the simulator."""
    return provision_smart_account_home(world, tmp_path / "home")


def cli(home: AgentHome, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home.root)}
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def session_key(home: AgentHome, name: str = "session.keystore.json") -> bytes:
    """What a thief on the host copies: the decrypted session key."""
    return LocalKeySigner.from_keystore(home.root / name, home.keystore_password()).private_key_bytes()


def address_of(key: bytes) -> str:
    return str(Account.from_key(key).address)


def w3_of(world: WorldInfo) -> Web3:
    return Web3(Web3.HTTPProvider(world.rpc_url))


def expiry_of(world: WorldInfo, home: AgentHome, key: str) -> int:
    signer = home.config.signer
    assert signer.kind == "smart_account"
    return int(account_contract(w3_of(world), signer.account).functions.sessionKeyExpiry(key).call())


def wallet_with(world: WorldInfo, home: AgentHome, key: bytes) -> HotWallet:
    """The home's account as seen by whoever holds ``key`` (the relayer key: a funded sender)."""
    signer = home.config.signer
    assert signer.kind == "smart_account"
    return HotWallet(
        w3_of(world),
        account_config(signer.setup),
        signer.account,
        signer.vault,
        key,
        relayer=dev_account(5),
    )


def signed_payment(world: WorldInfo, wallet: HotWallet, to: str, value: int = 1_000) -> tuple[bytes, bytes]:
    """(EIP-3009 digest, ERC-1271 envelope) of a payment signed with the wallet's session key."""
    now = int(wallet.w3.eth.get_block("latest")["timestamp"])
    usdc = world.usdc
    authorization = TransferAuthorization(
        TokenDomain(usdc.name, usdc.version, world.chain_id, usdc.address),
        wallet.account,
        to,
        value,
        0,
        now + 120,
        "0x" + secrets.token_hex(32),
    )
    signed = wallet.sign_authorization(authorization)
    return authorization.digest(), bytes.fromhex(signed.signature.removeprefix("0x"))


def transfer_with_authorization(world: WorldInfo, wallet: HotWallet, to: str, envelope: bytes) -> object:
    """USDC's bytes-signature ``transferWithAuthorization`` for the envelope's own fields."""
    from eth_abi.abi import decode

    token, sender, payee, value, after, before, nonce, _ = decode(
        ["address", "address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"], envelope
    )
    usdc = wallet.w3.eth.contract(
        address=Web3.to_checksum_address(token),
        abi=[
            {
                "name": "transferWithAuthorization",
                "type": "function",
                "stateMutability": "nonpayable",
                "inputs": [
                    {"name": n, "type": t}
                    for n, t in (
                        ("from", "address"),
                        ("to", "address"),
                        ("value", "uint256"),
                        ("validAfter", "uint256"),
                        ("validBefore", "uint256"),
                        ("nonce", "bytes32"),
                        ("signature", "bytes"),
                    )
                ],
                "outputs": [],
            }
        ],
    )
    checksum = Web3.to_checksum_address
    return usdc.functions.transferWithAuthorization(
        checksum(sender), checksum(payee), value, after, before, nonce, envelope
    )


def assert_cannot_pay(world: WorldInfo, home: AgentHome, key: bytes) -> None:
    """The account refuses (ERC-1271) a payment signed with ``key``, and so does USDC."""
    thief = wallet_with(world, home, key)
    payee = dev_account(6).address
    digest, envelope = signed_payment(world, thief, payee)
    account = account_contract(thief.w3, thief.account)
    assert account.functions.isValidSignature(digest, envelope).call() != ERC1271_MAGIC
    with pytest.raises(ContractLogicError, match="invalid signature"):
        transfer_with_authorization(world, thief, payee, envelope).call(  # type: ignore[attr-defined]
            {"from": dev_account(6).address}
        )


def assert_can_pay(world: WorldInfo, home: AgentHome, key: bytes) -> None:
    thief = wallet_with(world, home, key)
    digest, envelope = signed_payment(world, thief, dev_account(6).address)
    assert account_contract(thief.w3, thief.account).functions.isValidSignature(digest, envelope).call() == (
        ERC1271_MAGIC
    )


def assert_cannot_refill(world: WorldInfo, home: AgentHome, key: bytes) -> None:
    """A refill user operation signed with ``key`` fails validation (AA24): nothing moves."""
    thief = wallet_with(world, home, key)
    before = thief.hot_balance()
    with pytest.raises(ChainError) as refused:
        thief.top_up(1_000)
    assert refused.value.reason == "user_op_rejected" and "AA24" in refused.value.message
    assert thief.hot_balance() == before


def assert_rotated(world: WorldInfo, home: AgentHome, stolen: bytes) -> str:
    """The rotation is done on chain and in the home; the stolen key pays and refills nothing.
    Returns the new key's address."""
    status = cli(home, "wallet", "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    old = address_of(stolen)
    new_key = session_key(home)
    new = address_of(new_key)
    assert new != old
    assert expiry_of(world, home, old) == 0 and expiry_of(world, home, new) > 0
    assert not (home.root / ROTATION_FILE).exists() and not (home.root / NEXT_KEYSTORE).exists()
    assert shown["session_key"] == new and shown["pending_rotation"] is None
    assert_cannot_pay(world, home, stolen)
    assert_cannot_refill(world, home, stolen)
    assert_can_pay(world, home, new_key)
    return new


def assert_pending(world: WorldInfo, home: AgentHome, stolen: bytes) -> str:
    """Interrupted: nothing changed on chain, the home still pays with the old key and reports
    the rotation it has to finish (the new key's address, encrypted keystore kept)."""
    old = address_of(stolen)
    record = json.loads((home.root / ROTATION_FILE).read_text())
    assert record["old_key"] == old and record["new_key"] != old
    assert address_of(session_key(home, NEXT_KEYSTORE)) == record["new_key"]
    assert session_key(home) == stolen  # still the home's key: the account knows no other yet
    assert expiry_of(world, home, old) > 0 and expiry_of(world, home, record["new_key"]) == 0
    status = cli(home, "wallet", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending_rotation"]["new_key"] == record["new_key"]
    assert "has not landed" in status.stderr and "session-key rotate" in status.stderr
    return str(record["new_key"])


def test_rotation_rejected_on_the_device_then_retried(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    stolen = session_key(home)
    shown: list[str] = []
    device.on_screen = lambda screen: shown.append(str(screen.field("Message")))
    try:
        device.confirm = "reject"
        rejected = cli(home, "wallet", "session-key", "rotate")
        assert rejected.returncode != 0 and "[device_rejected]" in rejected.stderr, rejected.stderr
        new = assert_pending(world, home, stolen)
        # A second no, through the other natural retry (revoke the stolen key by address).
        again = cli(home, "wallet", "session-key", "revoke", "--key", address_of(stolen))
        assert again.returncode != 0 and "[device_rejected]" in again.stderr, again.stderr
        assert assert_pending(world, home, stolen) == new  # the same rotation, not a new key
        device.confirm = "auto"
        done = cli(home, "wallet", "session-key", "rotate")
        assert done.returncode == 0, done.stderr
    finally:
        device.on_screen = None
    assert assert_rotated(world, home, stolen) == new
    # One screen per attempt, each the same rotation: the new key, its expiry, the key it revokes.
    assert len(shown) == 3 and len(set(shown)) == 1
    assert f"rotate session key\nnew key {new.lower()}\n" in shown[0]
    assert f"revokes key {address_of(stolen).lower()}\n" in shown[0]


def test_rotation_with_the_device_unplugged_mid_screen_then_retried(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    stolen = session_key(home)
    device.confirm = "unplug"  # the cable comes out while the screen is shown
    gone = cli(home, "wallet", "session-key", "rotate")
    assert gone.returncode != 0 and "[device_" in gone.stderr, gone.stderr
    new = assert_pending(world, home, stolen)
    unreachable = cli(home, "wallet", "session-key", "rotate")  # still unplugged
    assert unreachable.returncode != 0 and "[device_" in unreachable.stderr
    assert assert_pending(world, home, stolen) == new
    device.confirm = "auto"
    device.replug(wait=PORT_WAIT)
    # The natural retry after plugging it back: revoke the stolen key by its address. It finishes
    # the rotation (which is what revokes that key) and never touches the new key.
    retried = cli(home, "wallet", "session-key", "revoke", "--key", address_of(stolen))
    assert retried.returncode == 0, retried.stderr
    assert assert_rotated(world, home, stolen) == new


def test_rotation_with_a_relayer_without_eth_then_retried(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    stolen = session_key(home)
    relayer = LocalKeySigner.from_keystore(home.root / "relayer.keystore.json", home.keystore_password())
    w3 = w3_of(world)
    funded = w3.eth.get_balance(Web3.to_checksum_address(relayer.address))
    w3.provider.make_request("anvil_setBalance", [relayer.address, "0x0"])  # type: ignore[arg-type]
    stuck = cli(home, "wallet", "session-key", "rotate")  # the device signs; nothing can send it
    assert stuck.returncode != 0 and "[owner_action_failed]" in stuck.stderr, stuck.stderr
    assert "fund" in stuck.stderr
    new = assert_pending(world, home, stolen)
    # A payment made meanwhile still works: the old key is the account's until the rotation lands.
    assert_can_pay(world, home, stolen)
    w3.provider.make_request("anvil_setBalance", [relayer.address, hex(funded)])  # type: ignore[arg-type]
    retried = cli(home, "wallet", "session-key", "rotate")
    assert retried.returncode == 0, retried.stderr
    assert assert_rotated(world, home, stolen) == new


def test_a_rotation_that_landed_unseen_is_finished_at_the_next_start(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    """The process died after the transaction landed (here: the rotation relayed from elsewhere
    with the device's signature): the next start sees it on chain and pays with the new key."""
    stolen = session_key(home)
    device.confirm = "reject"
    assert cli(home, "wallet", "session-key", "rotate").returncode != 0
    device.confirm = "auto"
    record = json.loads((home.root / ROTATION_FILE).read_text())
    signer = home.config.signer
    assert signer.kind == "smart_account"
    opened = HwiDevice.at("trezor", world.device_path)
    try:
        run_owner_action(
            w3_of(world),
            signer.account,
            "rotateSessionKey",
            [record["new_key"], record["expiry"], record["old_key"]],
            lambda line: opened.sign_message(line, DEFAULT_APPROVAL_PATH),
            dev_account(5),
        )
    finally:
        opened.close()
    assert (home.root / ROTATION_FILE).exists()  # the home has not looked yet
    assert assert_rotated(world, home, stolen) == record["new_key"]  # `wallet status` finished it


def test_revoke_names_the_key_and_refuses_the_current_one_without_the_flag(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    current = address_of(session_key(home))
    other = Account.create().address
    signer = home.config.signer
    assert signer.kind == "smart_account"
    opened = HwiDevice.at("trezor", world.device_path)
    try:  # a second key the owner once added (another agent's)
        run_owner_action(
            w3_of(world),
            signer.account,
            "setSessionKey",
            [other, 2**40],
            lambda line: opened.sign_message(line, DEFAULT_APPROVAL_PATH),
            dev_account(5),
        )
    finally:
        opened.close()
    shown: list[object] = []
    device.on_screen = shown.append
    try:
        unnamed = cli(home, "wallet", "session-key", "revoke")
        assert unnamed.returncode == 2 and "[invalid_arguments]" in unnamed.stderr
        refused = cli(home, "wallet", "session-key", "revoke", "--key", current)
        assert refused.returncode == 2 and "[session_key_in_use]" in refused.stderr, refused.stderr
        assert "--current" in refused.stderr
        refused_lower = cli(home, "wallet", "session-key", "revoke", "--key", current.lower())
        assert "[session_key_in_use]" in refused_lower.stderr
        bad = cli(home, "wallet", "session-key", "revoke", "--key", "0x1234")
        assert bad.returncode == 2 and "[invalid_address]" in bad.stderr
        assert shown == []  # refused before the device was asked
        assert expiry_of(world, home, current) > 0
        revoked = cli(home, "wallet", "session-key", "revoke", "--key", other)
        assert revoked.returncode == 0, revoked.stderr
        assert expiry_of(world, home, other) == 0 and expiry_of(world, home, current) > 0
        twice = cli(home, "wallet", "session-key", "revoke", "--key", other)
        assert twice.returncode == 0 and "revoked already" in twice.stdout
        assert len(shown) == 1  # nothing signed for a key already revoked
        own = cli(home, "wallet", "session-key", "revoke", "--key", current, "--current")
        assert own.returncode == 0 and "can no longer pay" in own.stdout, own.stderr
        assert expiry_of(world, home, current) == 0
    finally:
        device.on_screen = None


def test_an_expiry_beyond_48_bits_is_refused_by_the_cli_and_the_contract(
    world: WorldInfo, home: AgentHome, device: DeviceSimulator
) -> None:
    stolen = session_key(home)
    too_long = str(2**48 // 86_400 + 1)  # days: now + this is past 2^48-1 seconds
    refused = cli(home, "wallet", "session-key", "rotate", "--session-days", too_long)
    assert refused.returncode == 2 and "[session_expiry_out_of_range]" in refused.stderr, refused.stderr
    assert not (home.root / ROTATION_FILE).exists() and session_key(home) == stolen
    # The contract itself: a signed owner action with such an expiry reverts, for each action.
    signer = home.config.signer
    assert signer.kind == "smart_account"
    w3 = w3_of(world)
    account = account_contract(w3, signer.account)
    error = "0x" + Web3.keccak(text="ExpiryOutOfRange(uint256)")[:4].hex()
    nonce = account.functions.ownerNonce().call()
    opened = HwiDevice.at("trezor", world.device_path)
    try:
        for action, args in (
            ("setSessionKey", [Account.create().address, 2**48]),
            ("rotateSessionKey", [Account.create().address, 2**48, address_of(stolen)]),
        ):
            with pytest.raises((ContractCustomError, ContractLogicError)) as reverted:
                run_owner_action(
                    w3,
                    signer.account,
                    action,
                    args,
                    lambda line: opened.sign_message(line, DEFAULT_APPROVAL_PATH),
                    dev_account(5),
                )
            assert error[2:] in str(reverted.value.args), reverted.value.args
    finally:
        opened.close()
    assert account.functions.ownerNonce().call() == nonce  # nothing went through
    assert expiry_of(world, home, address_of(stolen)) > 0
    # The factory: creating an account whose session expiry does not fit reverts.
    config = dataclasses.replace(account_config(signer.setup), session_expiry=2**48)
    with pytest.raises((ContractCustomError, ContractLogicError)):
        w3.eth.call({"to": factory_address(), "data": create_account_calldata(w3, config)})


def test_an_account_created_with_payees_pays_only_those(
    world: WorldInfo, device: DeviceSimulator, tmp_path: Path
) -> None:
    """`wallet create --payee`: the address commits to the list, the account starts restricted."""
    route = world.route("GET", "/v2/weather")
    assert route.pay_to is not None
    allowed, other = Web3.to_checksum_address(route.pay_to), dev_account(6).address
    base = provision_smart_account_home(world, tmp_path / "base", deploy=False)
    home = base.root
    base_signer = base.config.signer
    assert base_signer.kind == "smart_account"
    bad = cli(base, *_create_args(world), "--payee", "0xnot-an-address")
    assert bad.returncode == 2 and "[invalid_address]" in bad.stderr
    created = cli(base, *_create_args(world), "--payee", allowed, "--payee", allowed.lower())
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout[: created.stdout.rindex("}") + 1])
    assert made["payees"] == [allowed]
    opened = open_home(home)
    signer = opened.config.signer
    assert signer.kind == "smart_account" and signer.setup.payees == [allowed]
    assert signer.account != base_signer.account  # the address commits to the list
    w3 = w3_of(world)
    assert w3.eth.get_code(Web3.to_checksum_address(signer.account)) == b""
    key = session_key(opened)
    counterfactual = wallet_with(world, opened, key)
    assert counterfactual.bounds().payees_restricted  # known before deployment, from the config
    counterfactual.ensure_deployed(dev_account(5))
    account = account_contract(w3, signer.account)
    assert account.functions.payeesRestricted().call()
    assert account.functions.payeeAllowed(allowed).call()
    assert not account.functions.payeeAllowed(other).call()
    wallet = wallet_with(world, opened, key)
    digest, envelope = signed_payment(world, wallet, allowed)
    assert account.functions.isValidSignature(digest, envelope).call() == ERC1271_MAGIC
    digest, envelope = signed_payment(world, wallet, other)
    assert account.functions.isValidSignature(digest, envelope).call() != ERC1271_MAGIC
    # the agent refuses it before signing, too
    with pytest.raises(WalletRefused) as refused:
        wallet.check_payment(world.usdc.address, other, 1_000, 60)
    assert refused.value.reason == "onchain_payee"
    wallet.check_payment(world.usdc.address, allowed, 1_000, 60)


def _create_args(world: WorldInfo) -> list[str]:
    return [
        "wallet",
        "create",
        "--network",
        world.network,
        "--token",
        world.usdc.address,
        "--max-value",
        "100000",
        "--allowance",
        "2000000",
    ]
