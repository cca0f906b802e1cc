"""Request handlers of the simulated device: one function per request message type.

A handler returns either the response (no user interaction) or a ``Workflow`` generator.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from trezorlib import messages as m
from trezorlib.protobuf import MessageType

from . import bitcoin, ethereum
from .keys import Keychain, Node, format_path
from .workflow import Screen, Workflow, WorkflowFailure, confirm

FIRMWARE_VERSION = (2, 10, 0)
DEFAULT_LABEL = "x402-agent SIMULATOR (insecure)"
_MAX_PATH_LENGTH = 16
_MAX_SESSIONS = 10
MAX_MESSAGE_BYTES = 1024  # the firmware refuses longer messages to sign
_CAPABILITIES = (m.Capability.Bitcoin, m.Capability.Crypto, m.Capability.Ethereum)

Response = MessageType | Workflow
Handler = Callable[["Device", Any], Response]


class Device:
    """State of the simulated device: keys, label, sessions."""

    def __init__(self, keychain: Keychain, label: str = DEFAULT_LABEL) -> None:
        self.keychain = keychain
        self.label = insecure_label(label)
        self._sessions: OrderedDict[bytes, None] = OrderedDict()
        self._session_id: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return f"{self.keychain.master_fingerprint:08x}"

    def node(self, address_n: Sequence[int]) -> Node:
        if len(address_n) > _MAX_PATH_LENGTH:
            raise WorkflowFailure(m.FailureType.DataError, "Path too long")
        return self.keychain.derive(address_n)

    # ---- sessions (protocol v1: Initialize resumes a known session id or opens a new one) ------
    def initialize(self, session_id: bytes | None) -> None:
        if session_id is not None and session_id in self._sessions:
            self._sessions.move_to_end(session_id)
        else:
            session_id = os.urandom(32)
            self._sessions[session_id] = None
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
        self._session_id = session_id

    def end_session(self) -> None:
        if self._session_id is not None:
            self._sessions.pop(self._session_id, None)
        self._session_id = None

    def features(self) -> m.Features:
        major, minor, patch = FIRMWARE_VERSION
        return m.Features(
            vendor="trezor.io",
            major_version=major,
            minor_version=minor,
            patch_version=patch,
            bootloader_mode=False,
            device_id=f"SIMULATOR-{self.fingerprint.upper()}",
            pin_protection=False,
            passphrase_protection=False,
            language="en-US",
            label=self.label,
            initialized=True,
            unlocked=True,
            no_backup=True,
            model="T",
            internal_model="T2T1",
            capabilities=list(_CAPABILITIES),
            backup_type=m.BackupType.Bip39,
            session_id=self._session_id,
            passphrase_always_on_device=False,
            safety_checks=m.SafetyCheckLevel.Strict,
            experimental_features=False,
            busy=False,
            unit_btconly=False,
        )


def insecure_label(label: str) -> str:
    """The device label always says it is an insecure simulator."""
    label = label.strip()
    return label if "insecure" in label.lower() else f"{label} (SIMULATOR, insecure)".strip()


def _success(text: str) -> m.Success:
    return m.Success(message=text)


# ---- management -----------------------------------------------------------------------------
def initialize(device: Device, msg: m.Initialize) -> Response:
    device.initialize(msg.session_id)
    return device.features()


def get_features(device: Device, msg: m.GetFeatures) -> Response:
    return device.features()


def end_session(device: Device, msg: m.EndSession) -> Response:
    device.end_session()
    return _success("Session ended")


def cancel(device: Device, msg: m.Cancel) -> Response:
    return m.Failure(code=m.FailureType.ActionCancelled, message="Cancelled")


def no_op(device: Device, msg: MessageType) -> Response:
    # LockDevice (no PIN to lock with), ApplyFlags (nothing to store), SetBusy.
    return _success(type(msg).__name__)


def ping(device: Device, msg: m.Ping) -> Response:
    text = msg.message or ""
    if not msg.button_protection:
        return _success(text)
    return _confirmed(
        Screen("ping", "Confirm", (("Message", text),)),
        m.ButtonRequestType.ProtectCall,
        lambda: _success(text),
    )


def apply_settings(device: Device, msg: m.ApplySettings) -> Response:
    if msg.use_passphrase:
        raise WorkflowFailure(m.FailureType.DataError, "Passphrase is not supported by the simulator")
    fields = tuple((name, str(value)) for name, value in (("Label", msg.label),) if value is not None)

    def apply() -> MessageType:
        if msg.label is not None:
            device.label = insecure_label(msg.label)
        return _success("Settings applied")

    screen = Screen("apply_settings", "Change settings", fields)
    return _confirmed(screen, m.ButtonRequestType.ProtectCall, apply)


# ---- Bitcoin --------------------------------------------------------------------------------
def get_public_key(device: Device, msg: m.GetPublicKey) -> Response:
    if msg.ecdsa_curve_name not in (None, "secp256k1"):
        raise WorkflowFailure(m.FailureType.DataError, f"Unsupported curve: {msg.ecdsa_curve_name}")
    coin = bitcoin.get_coin(msg.coin_name)
    node = device.node(msg.address_n)
    xpub = node.serialize_public(bitcoin.xpub_version(coin, msg.script_type, bool(msg.ignore_xpub_magic)))
    root = device.keychain.master_fingerprint
    response = m.PublicKey(node=_hd_node(node), xpub=xpub, root_fingerprint=root)
    if not msg.show_display:
        return response
    screen = Screen(
        "show_public_key",
        "Public key",
        (("Coin", coin.name), ("Path", format_path(msg.address_n)), ("XPUB", xpub)),
    )
    return _confirmed(screen, m.ButtonRequestType.PublicKey, lambda: response)


def get_address(device: Device, msg: m.GetAddress) -> Response:
    if msg.multisig is not None:
        raise WorkflowFailure(m.FailureType.DataError, "Multisig is not supported by the simulator")
    coin = bitcoin.get_coin(msg.coin_name)
    addr = bitcoin.address(coin, device.node(msg.address_n).public_key, msg.script_type)
    if not msg.show_display:
        return m.Address(address=addr)
    screen = Screen(
        "show_address",
        "Receive address",
        (("Coin", coin.name), ("Path", format_path(msg.address_n)), ("Address", addr)),
    )
    return _confirmed(screen, m.ButtonRequestType.Address, lambda: m.Address(address=addr))


def sign_message(device: Device, msg: m.SignMessage) -> Response:
    if len(msg.message) > MAX_MESSAGE_BYTES:
        raise WorkflowFailure(m.FailureType.DataError, "Message too long")
    coin = bitcoin.get_coin(msg.coin_name)
    node = device.node(msg.address_n)
    addr = bitcoin.address(coin, node.public_key, msg.script_type)
    screen = Screen(
        "sign_message",
        "Sign message",
        (
            ("Coin", coin.name),
            ("Path", format_path(msg.address_n)),
            ("Address", addr),
            ("Message", ethereum.display_message(msg.message)),
        ),
    )

    def signed() -> MessageType:
        signature = bitcoin.sign_message(node, msg.message, msg.script_type, bool(msg.no_script_type))
        return m.MessageSignature(address=addr, signature=signature)

    return _confirmed(screen, m.ButtonRequestType.Other, signed)


# ---- Ethereum -------------------------------------------------------------------------------
def ethereum_get_address(device: Device, msg: m.EthereumGetAddress) -> Response:
    addr = ethereum.address(device.node(msg.address_n))
    if not msg.show_display:
        return m.EthereumAddress(address=addr)
    screen = Screen(
        "eth_show_address", "Ethereum address", (("Path", format_path(msg.address_n)), ("Address", addr))
    )
    return _confirmed(screen, m.ButtonRequestType.Address, lambda: m.EthereumAddress(address=addr))


def ethereum_get_public_key(device: Device, msg: m.EthereumGetPublicKey) -> Response:
    node = device.node(msg.address_n)
    xpub = node.serialize_public(bitcoin.COINS["Bitcoin"].xpub_magic)
    response = m.EthereumPublicKey(node=_hd_node(node), xpub=xpub)
    if not msg.show_display:
        return response
    screen = Screen("show_public_key", "Public key", (("Path", format_path(msg.address_n)), ("XPUB", xpub)))
    return _confirmed(screen, m.ButtonRequestType.PublicKey, lambda: response)


def ethereum_sign_message(device: Device, msg: m.EthereumSignMessage) -> Response:
    node = device.node(msg.address_n)
    addr = ethereum.address(node)
    screen = Screen(
        "eth_sign_message",
        "Sign Ethereum message",
        (
            ("Path", format_path(msg.address_n)),
            ("Address", addr),
            ("Message", ethereum.display_message(msg.message)),
        ),
    )

    def signed() -> MessageType:
        signature = ethereum.sign(node, ethereum.personal_message_digest(msg.message))
        return m.EthereumMessageSignature(signature=signature, address=addr)

    return _confirmed(screen, m.ButtonRequestType.Other, signed)


def ethereum_sign_typed_hash(device: Device, msg: m.EthereumSignTypedHash) -> Response:
    for value in (msg.domain_separator_hash, msg.message_hash):
        if value is not None and len(value) != 32:
            raise WorkflowFailure(m.FailureType.DataError, "Hashes must be 32 bytes")
    node = device.node(msg.address_n)
    addr = ethereum.address(node)
    screen = Screen(
        "eth_sign_typed_hash",
        "Sign typed data hash",
        (
            ("Path", format_path(msg.address_n)),
            ("Address", addr),
            ("Domain hash", "0x" + msg.domain_separator_hash.hex()),
            ("Message hash", "0x" + msg.message_hash.hex() if msg.message_hash else "(none)"),
        ),
    )

    def signed() -> MessageType:
        digest = ethereum.typed_data_digest(msg.domain_separator_hash, msg.message_hash)
        return m.EthereumTypedDataSignature(signature=ethereum.sign(node, digest), address=addr)

    return _confirmed(screen, m.ButtonRequestType.Other, signed)


def ethereum_sign_typed_data(device: Device, msg: m.EthereumSignTypedData) -> Workflow:
    node = device.node(msg.address_n)
    addr = ethereum.address(node)
    hasher = ethereum.TypedDataHasher(msg.primary_type, msg.metamask_v4_compat is not False)
    domain_hash, message_hash = yield from hasher.run()
    if msg.show_message_hash is not None and msg.show_message_hash != message_hash:
        raise WorkflowFailure(m.FailureType.DataError, "Message hash mismatch")
    screen = Screen(
        "eth_sign_typed_data",
        "Sign typed data (EIP-712)",
        (
            ("Path", format_path(msg.address_n)),
            ("Address", addr),
            ("Primary type", msg.primary_type),
            *hasher.shown,
            ("Domain hash", "0x" + domain_hash.hex()),
            ("Message hash", "0x" + message_hash.hex() if message_hash else "(none)"),
        ),
    )
    yield from confirm(screen, m.ButtonRequestType.Other)
    digest = ethereum.typed_data_digest(domain_hash, message_hash)
    return m.EthereumTypedDataSignature(signature=ethereum.sign(node, digest), address=addr)


# ---- helpers --------------------------------------------------------------------------------
def _hd_node(node: Node) -> m.HDNodeType:
    return m.HDNodeType(
        depth=node.depth,
        fingerprint=node.parent_fingerprint,
        child_num=node.child_num,
        chain_code=node.chain_code,
        public_key=node.public_key,
    )


def _confirmed(screen: Screen, code: m.ButtonRequestType, respond: Callable[[], MessageType]) -> Workflow:
    yield from confirm(screen, code)
    return respond()


def is_passive(msg: MessageType) -> bool:
    """Requests that neither show anything nor change what a running workflow is doing: served
    for other hosts while a confirmation waits (see ``DeviceSimulator``)."""
    if isinstance(msg, m.Initialize | m.GetFeatures | m.Cancel | m.LockDevice | m.ApplyFlags | m.EndSession):
        return True
    if isinstance(msg, m.GetPublicKey | m.GetAddress | m.EthereumGetAddress | m.EthereumGetPublicKey):
        return not msg.show_display
    return isinstance(msg, m.Ping) and not msg.button_protection


HANDLERS: dict[type[MessageType], Handler] = {
    m.Initialize: initialize,
    m.GetFeatures: get_features,
    m.EndSession: end_session,
    m.Cancel: cancel,
    m.LockDevice: no_op,
    m.ApplyFlags: no_op,
    m.SetBusy: no_op,
    m.Ping: ping,
    m.ApplySettings: apply_settings,
    m.GetPublicKey: get_public_key,
    m.GetAddress: get_address,
    m.SignMessage: sign_message,
    m.EthereumGetAddress: ethereum_get_address,
    m.EthereumGetPublicKey: ethereum_get_public_key,
    m.EthereumSignMessage: ethereum_sign_message,
    m.EthereumSignTypedHash: ethereum_sign_typed_hash,
    m.EthereumSignTypedData: ethereum_sign_typed_data,
}
