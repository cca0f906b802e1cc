"""Drive the owner actions of an X402Account (or its AllowanceVault) with Bitcoin-message
signatures.

The owner of an account is a hardware key: each owner action is an ASCII line the device signs
as a Bitcoin signed message (HWI's base64 ``header || r || s``); anyone may relay the signed
call. ``sign_line`` is any callable that returns such a signature for a line, e.g.
``lambda line: HwiDevice.at("trezor", path).sign_message(line, key_path)``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from functools import cache
from typing import Any

from eth_abi.abi import decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError

from ..device.signers import OwnerSigner, SignLine, TypedSigner
from ..paths import PROJECT_ROOT
from .owner_text import ACCOUNT_TAG, DESCRIBERS, VAULT_TAG, Chain, OwnerAction, describe

_BUILD = PROJECT_ROOT / "contracts" / "build"
_TX_GAS = 3_000_000
# The owner actions each contract describes (OwnerActionText), by tag.
OWNER_ACTIONS = {tag: frozenset(describers) for tag, describers in DESCRIBERS.items()}
_CONTRACT_OF_TAG = {ACCOUNT_TAG: "X402Account", VAULT_TAG: "AllowanceVault"}


@cache
def artifact(name: str) -> dict[str, Any]:
    """A built contract (abi, bytecode) from contracts/build."""
    built: dict[str, Any] = json.loads((_BUILD / f"{name}.json").read_text())
    return built


def account_abi() -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = artifact("X402Account")["abi"]
    return abi


def account_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=to_checksum_address(address), abi=account_abi())


def owned_contract(w3: Web3, address: str, tag: str = ACCOUNT_TAG) -> Contract:
    """The account (tag ``x402-account``) or vault (``x402-vault``) at ``address``."""
    return w3.eth.contract(address=to_checksum_address(address), abi=artifact(_CONTRACT_OF_TAG[tag])["abi"])


def _as_account(key: LocalAccount | str | bytes) -> LocalAccount:
    if isinstance(key, LocalAccount):
        return key
    account: LocalAccount = Account.from_key(key)
    return account


def _max_fee(w3: Web3) -> int:
    return 2 * int(w3.eth.gas_price) + 1


def max_transaction_cost(w3: Web3) -> int:
    """What the node requires the sender of a ``send_transaction`` to hold (its gas limit times
    its maximum fee), so a caller can say "too little ETH" before the node's own wording."""
    return _TX_GAS * _max_fee(w3)


def send_transaction(w3: Web3, sender: LocalAccount | str | bytes, tx: dict[str, Any]) -> Any:
    """Sign and send ``tx`` from ``sender``; return the receipt, raising if it reverted."""
    signer = _as_account(sender)
    full = {
        "chainId": w3.eth.chain_id,
        "from": signer.address,
        "nonce": w3.eth.get_transaction_count(signer.address, "pending"),
        "gas": _TX_GAS,
        "maxFeePerGas": _max_fee(w3),
        "maxPriorityFeePerGas": 1,
        **tx,
    }
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signer.sign_transaction(full).raw_transaction)
    )
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {receipt['transactionHash'].hex()} reverted")
    return receipt


def encode_action(w3: Web3, target: str, action: str, args: Sequence[Any], tag: str = ACCOUNT_TAG) -> bytes:
    """The calldata of owner action ``action(args...)`` on the account or vault ``target``."""
    if action not in OWNER_ACTIONS[tag]:
        raise ValueError(f"{action!r} is not an owner action of {_CONTRACT_OF_TAG[tag]}")
    encoded = owned_contract(w3, target, tag).encode_abi(action, args=list(args))
    return bytes.fromhex(encoded.removeprefix("0x"))


class _Web3Chain(Chain):
    """The chain reads of the owner-action words, through web3 at the latest block."""

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3

    def code(self, address: str) -> bytes:
        return bytes(self._w3.eth.get_code(to_checksum_address(address)))

    def call(self, address: str, data: bytes) -> bytes | None:
        try:
            return bytes(self._w3.eth.call({"to": to_checksum_address(address), "data": data}))
        except ContractLogicError:
            return None


@cache
def _owner_functions(tag: str) -> dict[bytes, dict[str, Any]]:
    """The ABI entry of each owner action of the ``tag`` contract, by selector (decoding with
    eth_abi here, instead of building a web3 contract per call, takes the host's share of an
    owner action from ~40 ms to a few)."""
    abi = artifact(_CONTRACT_OF_TAG[tag])["abi"]
    return {
        function_abi_to_4byte_selector(entry): entry
        for entry in abi
        if entry.get("type") == "function" and entry["name"] in OWNER_ACTIONS[tag]
    }


def describe_owner_action(w3: Web3, target: str, data: bytes, tag: str = ACCOUNT_TAG) -> OwnerAction:
    """The owner action ``data`` (calldata) on the account or vault ``target``, in words."""
    entry = _owner_functions(tag).get(bytes(data[:4]))
    if entry is None:
        raise ValueError(f"the calldata is no owner action of {_CONTRACT_OF_TAG[tag]}")
    inputs = entry["inputs"]
    values = decode([collapse_if_tuple(i) for i in inputs], bytes(data[4:]))
    return describe(_Web3Chain(w3), tag, target, str(entry["name"]), inputs, values)


def owner_action_line(w3: Web3, target: str, data: bytes, nonce: int, tag: str = ACCOUNT_TAG) -> str:
    """The text the owner signs as a Bitcoin message (``OwnerCalls.ownerMessage``)."""
    return describe_owner_action(w3, target, data, tag).message(nonce, w3.eth.chain_id, target)


def owner_action_typed_data(
    w3: Web3, target: str, data: bytes, nonce: int, tag: str = ACCOUNT_TAG
) -> dict[str, Any]:
    """The EIP-712 struct the owner may sign instead (``OwnerCalls.ownerTypedDigest``)."""
    return describe_owner_action(w3, target, data, tag).typed_data(nonce, w3.eth.chain_id, target)


def decode_hwi_signature(signature: str) -> bytes:
    """HWI's base64 Bitcoin message signature as the 65 bytes ``header || r || s``."""
    raw = base64.b64decode(signature, validate=True)
    if len(raw) != 65:
        raise ValueError(f"a Bitcoin message signature is 65 bytes, not {len(raw)}")
    return raw


def sign_owner_action(
    w3: Web3,
    target: str,
    action: str,
    data: bytes,
    signer: OwnerSigner,
    nonce: int | None = None,
    tag: str = ACCOUNT_TAG,
) -> tuple[int, bytes]:
    """(nonce, 65-byte signature) for an owner action: its text signed as a Bitcoin message by
    a ``SignLine``, or its typed data by a ``TypedSigner``; both show every argument."""
    described = describe_owner_action(w3, target, data, tag)
    if described.name != action:
        raise ValueError(f"calldata is {described.name}, not {action}")
    if nonce is None:
        nonce = int(owned_contract(w3, target, tag).functions.ownerNonce().call())
    if isinstance(signer, TypedSigner):
        signature = bytes.fromhex(signer.sign(described.typed_data(nonce, w3.eth.chain_id, target))[2:])
        if len(signature) != 65:
            raise ValueError(f"an EIP-712 signature is 65 bytes, not {len(signature)}")
        return nonce, signature
    return nonce, decode_hwi_signature(signer(described.message(nonce, w3.eth.chain_id, target)))


def owner_call(
    w3: Web3,
    target: str,
    action: str,
    data: bytes,
    signature: bytes,
    relayer: LocalAccount | str | bytes,
    nonce: int | None = None,
    tag: str = ACCOUNT_TAG,
) -> Any:
    """Relay a signed owner action (``action`` is checked against ``data``); the receipt."""
    contract = owned_contract(w3, target, tag)
    fn, _ = contract.decode_function_input(data)
    if fn.fn_name != action:
        raise ValueError(f"calldata is {fn.fn_name}, not {action}")
    if nonce is None:
        nonce = int(contract.functions.ownerNonce().call())
    call = contract.functions.ownerCall(data, nonce, signature)
    call.call({"from": _as_account(relayer).address})  # surface the revert reason before sending
    calldata = contract.encode_abi("ownerCall", args=[data, nonce, signature])
    return send_transaction(w3, relayer, {"to": contract.address, "data": calldata})


def run_owner_action(
    w3: Web3,
    target: str,
    action: str,
    args: Sequence[Any],
    sign_line: OwnerSigner,
    relayer: LocalAccount | str | bytes,
    tag: str = ACCOUNT_TAG,
) -> Any:
    """Encode, have the owner sign (on the device: ``sign_line`` a Bitcoin message through HWI,
    or a ``TypedSigner`` through trezorlib), and relay one owner action."""
    data = encode_action(w3, target, action, args, tag)
    nonce, signature = sign_owner_action(w3, target, action, data, sign_line, tag=tag)
    return owner_call(w3, target, action, data, signature, relayer, nonce=nonce, tag=tag)


__all__ = [
    "ACCOUNT_TAG",
    "OWNER_ACTIONS",
    "VAULT_TAG",
    "OwnerSigner",
    "SignLine",
    "TypedSigner",
    "account_abi",
    "account_contract",
    "artifact",
    "decode_hwi_signature",
    "describe_owner_action",
    "encode_action",
    "owned_contract",
    "owner_action_line",
    "owner_action_typed_data",
    "owner_call",
    "run_owner_action",
    "send_transaction",
    "sign_owner_action",
]
