"""Owner actions are signed clear (issue 12 item 1): what the device shows is built from the
action's arguments and rebuilt by the contract before it checks the signature.

A compromised host swaps an argument (the recipient of a withdrawal, bounds raised instead of
lowered, another session key revoked): the device simulator shows the swapped value, the person
at the device (a script that reads every page of the screen through the simulator's observer
and approves only when the values it asked for are there) rejects, and nothing moves on chain.
With the true values it goes through. A signature over the true text does not authorise the
swapped call. All of it through HWI (a Bitcoin signed message) and through trezorlib (EIP-712).
Real parts throughout: anvil, Circle's FiatToken, the factory's clones, the simulator speaking
the Trezor wire protocol to unmodified HWI and trezorlib.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from chain_reads import token_balance
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError

from x402_agent.chain.account import (
    ACCOUNT_TAG,
    OWNER_ACTIONS,
    VAULT_TAG,
    OwnerSigner,
    describe_owner_action,
    encode_action,
    owned_contract,
    owner_action_line,
    owner_action_typed_data,
    owner_call,
    run_owner_action,
    sign_owner_action,
)
from x402_agent.chain.factory import AccountConfig, create_account, deploy_factory
from x402_agent.chain.owner_text import MAX_MESSAGE_BYTES, OwnerActionTooLong, units
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, DeviceError, HwiDevice
from x402_agent.device.simulator import DeviceSimulator, Screen
from x402_agent.device.simulator.workflow import CONTINUED
from x402_agent.device.trezor import owner_signer
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import fund
from x402_agent.reasons import Reason

VAULT_FUNDS = 16_000_000  # 16 USDC, the whole vault
CAP = 1_000_000
WINDOW = 3600
SCREEN_WAIT = 60.0
SCHEMES = ("hwi", "trezorlib")


@dataclass
class Wallet:
    world: WorldInfo
    w3: Web3
    account: Contract
    vault: Contract
    usdc: str
    session_key: str
    device: HwiDevice
    transport: str

    def signer(self, scheme: str) -> OwnerSigner:
        if scheme == "hwi":  # the text as a Bitcoin signed message, through unmodified HWI
            return lambda line: self.device.sign_message(line, DEFAULT_APPROVAL_PATH)
        return owner_signer(DEFAULT_APPROVAL_PATH, self.transport)  # EIP-712 through trezorlib

    def contract(self, tag: str) -> Contract:
        return self.account if tag == ACCOUNT_TAG else self.vault


@pytest.fixture(scope="module")
def wallet(world: WorldInfo, device_simulator: DeviceSimulator) -> Iterator[Wallet]:
    """An account and vault whose owner is the simulator's enrolled key; 16 USDC in the vault."""
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    device = HwiDevice.at("trezor", world.device_path)
    try:
        owner = device.enroll(DEFAULT_APPROVAL_PATH).eth_address
        session = Account.create().address
        now = w3.eth.get_block("latest")["timestamp"]
        deploy_factory(w3, dev_account(0))
        config = AccountConfig(
            owner,
            session,
            now + 7 * 86400,
            world.usdc.address,
            CAP,
            WINDOW,
            CAP,
            86400,
            salt=keccak(b"clear"),
        )
        account, vault, _ = create_account(w3, config, dev_account(0))
        fund(world, vault, usdc=VAULT_FUNDS)
        yield Wallet(
            world,
            w3,
            owned_contract(w3, account, ACCOUNT_TAG),
            owned_contract(w3, vault, VAULT_TAG),
            to_checksum_address(world.usdc.address),
            session,
            device,
            world.device_path,
        )
    finally:
        device.close()


class Person:
    """Someone at the device who asked for one thing: reads the shown screen page by page
    (through the simulator's observer), puts the lines back together (a piece ending in
    CONTINUED goes on on the next line), and approves only when every line it expects is there."""

    def __init__(self, simulator: DeviceSimulator) -> None:
        self.simulator = simulator
        self.read: list[str] = []  # the pages of the last screen attended, in order
        self.screens: list[Screen] = []

    def _page(self, screen: Screen, index: int) -> None:
        self.read.append(screen.pages[index])

    def attend(self, expected: Sequence[str]) -> bool:
        screen = self.simulator.wait_for_screen(timeout=SCREEN_WAIT)
        assert screen is not None, "nothing was shown on the device"
        self.screens.append(screen)
        self.read = [screen.pages[self.simulator.page]]
        while self.simulator.next_page():
            pass  # each turn shows the next page to the observer (_page)
        lines = self.lines()
        agreed = all(_has_lines(lines, item.split("\n")) for item in expected)
        assert (self.simulator.approve if agreed else self.simulator.reject)()
        return agreed

    def lines(self) -> list[str]:
        whole: list[str] = []
        carry = ""
        for page in self.read:
            for piece in page.split("\n"):
                if piece.endswith(CONTINUED):
                    carry += piece.removesuffix(CONTINUED)
                else:
                    whole.append(carry + piece)
                    carry = ""
        return whole


def _has_lines(lines: Sequence[str], wanted: Sequence[str]) -> bool:
    return any(list(lines[i : i + len(wanted)]) == list(wanted) for i in range(len(lines)))


@pytest.fixture
def person(device_simulator: DeviceSimulator) -> Iterator[Person]:
    """The simulator waits for the person; HWI's debug-link "yes" counts for nothing."""
    someone = Person(device_simulator)
    previous = device_simulator.on_page
    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False
    device_simulator.on_page = someone._page
    try:
        yield someone
    finally:
        device_simulator.on_page = previous
        device_simulator.confirm, device_simulator.honor_debuglink = "auto", True
        if device_simulator.pending_screen is not None:
            device_simulator.reject()


def _sign_in_background(
    wallet: Wallet, tag: str, data: bytes, scheme: str
) -> tuple[threading.Thread, list[Any]]:
    """The host asks the device to sign ``data`` (blocks until the person decides)."""
    outcome: list[Any] = []
    name = describe_owner_action(wallet.w3, wallet.contract(tag).address, data, tag).name

    def run() -> None:
        try:
            address = wallet.contract(tag).address
            outcome.append(sign_owner_action(wallet.w3, address, name, data, wallet.signer(scheme), tag=tag))
        except Exception as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run, name="compromised-host")
    worker.start()
    return worker, outcome


@dataclass(frozen=True)
class Case:
    """One owner action the person asks for, and what a compromised host sends instead."""

    tag: str
    action: str
    true_args: Callable[[Wallet], list[Any]]
    swapped_args: Callable[[Wallet], list[Any]]
    # the lines the person looks for: on the Bitcoin-message text, and on the EIP-712 fields
    expects: Callable[[Wallet], dict[str, list[str]]]
    state: Callable[[Wallet], Any]  # what must not change when the person says no
    done: Callable[[Any, Any], bool]  # (before, after): what the true action did
    swapped_shows: dict[str, str]  # the swapped value as the screen shows it, per scheme


SAFE = to_checksum_address("0x" + "5afe" * 10)
ATTACKER = to_checksum_address("0x" + "bad0" * 10)
OTHER_KEY = to_checksum_address("0x" + "0e1e" * 10)
ZERO = "0x" + "00" * 20


def _usdc_balances(wallet: Wallet) -> tuple[int, ...]:
    """The vault's, the safe address's and the attacker's USDC."""
    rpc_url = wallet.world.rpc_url
    return tuple(
        token_balance(rpc_url, wallet.usdc, holder) for holder in (wallet.vault.address, SAFE, ATTACKER)
    )


CASES = {
    "withdraw": Case(
        VAULT_TAG,
        "withdraw",
        lambda w: [SAFE, VAULT_FUNDS],
        lambda w: [ATTACKER, VAULT_FUNDS],
        lambda w: {
            "hwi": ["x402-vault withdraw", "amount 16.000000 USDC", f"to {SAFE.lower()}"],
            "trezorlib": [
                "Primary type:\nWithdraw",
                f"message.to:\n{SAFE}",
                f"message.amount:\n{VAULT_FUNDS}",
            ],
        },
        _usdc_balances,
        lambda before, after: after == (0, before[1] + VAULT_FUNDS, 0),
        {"hwi": f"to {ATTACKER.lower()}", "trezorlib": f"message.to:\n{ATTACKER}"},
    ),
    "bounds": Case(
        ACCOUNT_TAG,
        "setPolicy",
        lambda w: [CAP // 2, 600, True],  # lower: half the cap, ten minutes, listed payees only
        lambda w: [100 * CAP, 86400, False],  # raise
        lambda w: {
            "hwi": [
                "x402-account set bounds",
                f"max per payment {CAP // 2} units of each allowed token (0.500000 USDC)",
                "window 600 s",
                "payees restricted yes",
            ],
            "trezorlib": [
                "Primary type:\nSetPolicy",
                f"message.maxValue:\n{CAP // 2}",
                "message.maxWindow:\n600",
                "message.payeesRestricted:\ntrue",
            ],
        },
        lambda w: (
            w.account.functions.maxValue().call(),
            w.account.functions.maxWindow().call(),
            w.account.functions.payeesRestricted().call(),
        ),
        lambda before, after: before == (CAP, WINDOW, False) and after == (CAP // 2, 600, True),
        {
            "hwi": f"max per payment {100 * CAP} units of each allowed token (100.000000 USDC)",
            "trezorlib": f"message.maxValue:\n{100 * CAP}",
        },
    ),
    "revoke": Case(
        ACCOUNT_TAG,
        "revokeSessionKey",
        lambda w: [w.session_key],  # the stolen key
        lambda w: [OTHER_KEY],
        lambda w: {
            "hwi": ["x402-account revoke session key", f"key {w.session_key.lower()}"],
            "trezorlib": ["Primary type:\nRevokeSessionKey", f"message.key:\n{w.session_key}"],
        },
        lambda w: (
            w.account.functions.sessionKeyExpiry(w.session_key).call(),
            w.account.functions.sessionKeyExpiry(OTHER_KEY).call(),
        ),
        lambda before, after: min(before) > 0 and after == (0, before[1]),  # only the stolen key
        {"hwi": f"key {OTHER_KEY.lower()}", "trezorlib": f"message.key:\n{OTHER_KEY}"},
    ),
}


def _start_from(wallet: Wallet, case_name: str, simulator: DeviceSimulator) -> None:
    """The state each run starts from, whichever ran before: a full vault; the creation bounds;
    the stolen key and the new key both live (the person's own setup, approved as it comes)."""
    if case_name == "withdraw":
        fund(wallet.world, wallet.vault.address, usdc=VAULT_FUNDS - _usdc_balances(wallet)[0])
        return
    expiry = wallet.w3.eth.get_block("latest")["timestamp"] + 7 * 86400
    setup = {
        "bounds": [("setPolicy", [CAP, WINDOW, False])],
        "revoke": [("setSessionKey", [wallet.session_key, expiry]), ("setSessionKey", [OTHER_KEY, expiry])],
    }[case_name]
    simulator.confirm = "auto"
    try:
        for action, args in setup:
            run_owner_action(
                wallet.w3, wallet.account.address, action, args, wallet.signer("hwi"), dev_account(2)
            )
    finally:
        simulator.confirm = "wait"


def _expect_revert(call: Any, error: str) -> None:
    with pytest.raises(ContractLogicError) as refused:
        call.call({"from": dev_account(2).address})
    selector = "0x" + keccak(f"{error}()".encode())[:4].hex()
    assert selector in str(refused.value.data) or selector in str(refused.value), refused.value


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_a_swapped_argument_is_on_the_screen_the_person_rejects_and_the_true_one_goes_through(
    wallet: Wallet, person: Person, device_simulator: DeviceSimulator, scheme: str, case_name: str
) -> None:
    case = CASES[case_name]
    contract = wallet.contract(case.tag)
    expected = case.expects(wallet)[scheme]
    true_data = encode_action(wallet.w3, contract.address, case.action, case.true_args(wallet), case.tag)
    swapped = encode_action(wallet.w3, contract.address, case.action, case.swapped_args(wallet), case.tag)
    _start_from(wallet, case_name, device_simulator)
    before, nonce = case.state(wallet), contract.functions.ownerNonce().call()

    # 1. The compromised host asks the device to sign the swapped call: the screen shows the
    # swapped value, the person rejects, nothing is signed and nothing moves.
    worker, outcome = _sign_in_background(wallet, case.tag, swapped, scheme)
    assert not person.attend(expected)
    assert _has_lines(person.lines(), case.swapped_shows[scheme].split("\n"))  # what it read
    worker.join(SCREEN_WAIT)
    assert isinstance(outcome[0], DeviceError) and outcome[0].reason == Reason.DEVICE_REJECTED
    assert case.state(wallet) == before and contract.functions.ownerNonce().call() == nonce

    # 2. The person asked for the true values and approves them; the host relays the swapped
    # call with that signature: the contract rebuilds the swapped text and refuses it.
    worker, outcome = _sign_in_background(wallet, case.tag, true_data, scheme)
    assert person.attend(expected)
    worker.join(SCREEN_WAIT)
    signed_nonce, signature = outcome[0]
    assert signed_nonce == nonce
    _expect_revert(contract.functions.ownerCall(swapped, nonce, signature), "BadOwnerSignature")
    assert case.state(wallet) == before

    # 3. The true call with its signature goes through.
    owner_call(
        wallet.w3, contract.address, case.action, true_data, signature, dev_account(2), nonce, case.tag
    )
    assert contract.functions.ownerNonce().call() == nonce + 1
    assert case.done(before, case.state(wallet))
    # the whole of what the chain checks was on the screens the person read
    if scheme == "hwi":
        text = contract.functions.ownerMessage(true_data, nonce).call()
        assert person.screens[-1].field("Message") == text
        assert _has_lines(person.lines(), ["Message:", *text.split("\n")])
    else:
        typed = owner_action_typed_data(wallet.w3, contract.address, true_data, nonce, case.tag)
        for field in typed["types"][typed["primaryType"]]:
            value = typed["message"][field["name"]]
            shown = str(value).lower()
            assert _has_lines(
                [line.lower() for line in person.lines()], [f"message.{field['name']}:".lower(), shown]
            )


@pytest.mark.parametrize("tag", [ACCOUNT_TAG, VAULT_TAG])
def test_every_owner_action_has_its_words_and_python_builds_the_contracts_text(
    wallet: Wallet, tag: str
) -> None:
    """Every function the contract runs only for itself (NotSelf when called directly; execute
    answers NotFromEntryPoint) is an owner action with a description, the text Python builds
    is ``ownerMessage`` byte for byte, and its EIP-712 struct is ``ownerTypedDigest``."""
    contract = wallet.contract(tag)
    stranger = {"from": dev_account(3).address}
    owner_only: set[str] = set()
    for entry in contract.abi:
        if entry.get("type") != "function" or entry.get("stateMutability") in ("view", "pure"):
            continue
        try:
            args = [_sample(wallet, i) for i in entry["inputs"]]
            contract.get_function_by_name(entry["name"])(*args).call(stranger)
        except ContractLogicError as exc:
            if any(_selector(e) in str(exc.data) for e in ("NotSelf()", "NotFromEntryPoint()")):
                owner_only.add(entry["name"])
        except Exception:
            continue
    assert owner_only == OWNER_ACTIONS[tag], "an owner action without a description (or a stale one)"
    for name in sorted(owner_only):
        entry = next(e for e in contract.abi if e.get("name") == name)
        data = encode_action(
            wallet.w3, contract.address, name, [_sample(wallet, i) for i in entry["inputs"]], tag
        )
        nonce = 5
        text = owner_action_line(wallet.w3, contract.address, data, nonce, tag)
        assert contract.functions.ownerMessage(data, nonce).call() == text, name
        assert len(text.encode()) <= MAX_MESSAGE_BYTES
        typed = encode_typed_data(
            full_message=owner_action_typed_data(wallet.w3, contract.address, data, nonce, tag)
        )
        digest = keccak(b"\x19" + typed.version + typed.header + typed.body)
        assert contract.functions.ownerTypedDigest(data, nonce).call() == digest, name
        # every argument is on the screen: each address, number and byte string is in the text
        for spec in entry["inputs"]:
            assert any(shown in text for shown in _shown(_sample(wallet, spec))), (name, spec, text)


def _selector(signature: str) -> str:
    return keccak(signature.encode())[:4].hex()


def _sample(wallet: Wallet, spec: dict[str, Any]) -> Any:
    kind, name = spec["type"], spec["name"]
    if kind == "address":
        return wallet.usdc if name == "token" else to_checksum_address(keccak(name.encode())[:20])
    if kind == "bool":
        return True
    if kind.startswith("uint"):
        return 1_234_567 + len(name)
    if kind == "bytes32":
        return keccak(name.encode())
    if kind == "bytes":
        return bytes.fromhex("a9059cbb") + bytes(range(40))
    if kind.endswith("[]"):
        return []
    raise AssertionError(f"no sample for {kind}")


def _shown(value: Any) -> list[str]:
    """The ways the text may write a sample value."""
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, int):
        return [str(value), units(value, 6), units(value, 18)]
    if isinstance(value, bytes):
        return [value.hex()]
    return [str(value).lower()]


def test_a_text_longer_than_a_device_signs_is_refused_before_the_device_and_by_the_contract(
    wallet: Wallet,
) -> None:
    """An execute with long calldata: its whole calldata would be on the screen, and a device
    signs at most 1024 bytes; the host refuses it before asking, the contract refuses the text."""
    contract = wallet.account
    data = encode_action(wallet.w3, contract.address, "execute", [SAFE, 0, bytes(500)])
    with pytest.raises(OwnerActionTooLong) as refused:
        owner_action_line(wallet.w3, contract.address, data, 0)
    assert refused.value.reason == Reason.OWNER_ACTION_TOO_LONG
    with pytest.raises(ContractLogicError) as reverted:
        contract.functions.ownerMessage(data, 0).call()
    assert _selector("OwnerMessageTooLong(uint256)") in str(reverted.value.data)
    # one that fits is signed whole, calldata and all
    fits = encode_action(wallet.w3, contract.address, "execute", [SAFE, 0, bytes(400)])
    text = owner_action_line(wallet.w3, contract.address, fits, 0)
    assert contract.functions.ownerMessage(fits, 0).call() == text and "00" * 400 in text


def test_a_long_text_pages_and_every_page_is_shown_before_the_confirm(
    wallet: Wallet, person: Person, device_simulator: DeviceSimulator
) -> None:
    """A person who presses confirm at once still has every page go by: the confirm button is
    on the last page. The pages hold the whole text."""
    data = encode_action(wallet.w3, wallet.account.address, "execute", [SAFE, 0, bytes(200)])
    worker, outcome = _sign_in_background(wallet, ACCOUNT_TAG, data, "hwi")
    screen = device_simulator.wait_for_screen(timeout=SCREEN_WAIT)
    assert screen is not None and device_simulator.page == 0
    pages = screen.pages
    assert len(pages) > 5  # 18 x 5 characters a page
    person.read = [pages[0]]
    assert device_simulator.approve()  # at once, on the first page
    worker.join(SCREEN_WAIT)
    assert isinstance(outcome[0], tuple)  # signed
    assert person.read == list(pages)  # every page was displayed first, in order
    text = wallet.account.functions.ownerMessage(data, outcome[0][0]).call()
    assert person.lines() == ["Coin:", "Bitcoin", *person.lines()[2:6], "Message:", *text.split("\n")]


def test_a_token_that_names_itself_with_more_than_a_symbol_is_shown_by_its_address_and_units(
    wallet: Wallet,
) -> None:
    """A token whose symbol carries a line of its own ("USDC\\nto <safe>") could forge a line on
    the screen: it is not named, its amount is shown in atomic units, and its address is shown."""
    from x402_agent.devnet.usdc import TokenSpec, deploy_fiat_tokens

    forged = deploy_fiat_tokens(
        wallet.world.rpc_url,
        deployer=dev_account(7),
        proxy_admin=dev_account(8).address,
        lost_and_found=dev_account(8).address,
        tokens=[TokenSpec("USD Coin", f"USDC\nto {SAFE.lower()}", "USD")],
        holder=wallet.account.address,
        holder_amount=VAULT_FUNDS,
    )[0]
    data = encode_action(
        wallet.w3, wallet.account.address, "withdraw", [forged.address, ATTACKER, VAULT_FUNDS]
    )
    text = owner_action_line(wallet.w3, wallet.account.address, data, 0)
    assert wallet.account.functions.ownerMessage(data, 0).call() == text
    lines = text.split("\n")
    assert lines[1:4] == [
        f"amount {VAULT_FUNDS} units",
        f"token {forged.address.lower()}",
        f"to {ATTACKER.lower()}",
    ]
    assert f"to {SAFE.lower()}" not in lines
    # ETH (token address 0), 18 decimals, and a token with no code at all: both sides agree
    for token, shown in (
        (ZERO, "amount 1.500000000000000000 ETH"),
        (OTHER_KEY, f"amount {15 * 10**17} units"),
    ):
        data = encode_action(wallet.w3, wallet.account.address, "withdraw", [token, SAFE, 15 * 10**17])
        text = owner_action_line(wallet.w3, wallet.account.address, data, 0)
        assert wallet.account.functions.ownerMessage(data, 0).call() == text
        assert text.split("\n")[1] == shown


def test_the_simulator_refuses_a_message_longer_than_a_device_signs(wallet: Wallet) -> None:
    """As the firmware: SignMessage takes at most 1024 bytes (the texts stay at 1023 or less)."""
    with pytest.raises(DeviceError):
        wallet.device.sign_message("x" * 1025, DEFAULT_APPROVAL_PATH)
    assert wallet.device.sign_message("x" * 1024, DEFAULT_APPROVAL_PATH)
