"""Deploy an X402Account and drive its owner actions with Bitcoin-message signatures.

The owner of an account is a hardware key: each owner action is an ASCII line the device signs
as a Bitcoin signed message (HWI's base64 ``header || r || s``); anyone may relay the signed
call. ``sign_line`` is any callable that returns such a signature for a line, e.g.
``lambda line: HwiDevice.at("trezor", path).sign_message(line, key_path)``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from ..devnet.proc import PROJECT_ROOT
from .entrypoint import ENTRY_POINT_V07, deploy_entry_point_v07

ACCOUNT_TAG = "x402-account"
_BUILD = PROJECT_ROOT / "contracts" / "build"
_TX_GAS = 3_000_000
# The owner actions the contract names (its ``_actionName``), by function name.
ACCOUNT_ACTIONS = frozenset({"setPolicy", "setToken", "setPayee", "setSessionKey",
                             "revokeSessionKey", "setVault", "withdraw", "execute"})

SignLine = Callable[[str], str]


@cache
def _artifact(name: str) -> dict[str, Any]:
    artifact: dict[str, Any] = json.loads((_BUILD / f"{name}.json").read_text())
    return artifact


def account_abi() -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = _artifact("X402Account")["abi"]
    return abi


def account_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=to_checksum_address(address), abi=account_abi())


def _as_account(key: LocalAccount | str | bytes) -> LocalAccount:
    if isinstance(key, LocalAccount):
        return key
    account: LocalAccount = Account.from_key(key)
    return account


def send_transaction(w3: Web3, sender: LocalAccount | str | bytes, tx: dict[str, Any]
                     ) -> Any:
    """Sign and send ``tx`` from ``sender``; return the receipt, raising if it reverted."""
    signer = _as_account(sender)
    full = {
        "chainId": w3.eth.chain_id, "from": signer.address,
        "nonce": w3.eth.get_transaction_count(signer.address, "pending"),
        "gas": _TX_GAS, "maxFeePerGas": 2 * w3.eth.gas_price + 1, "maxPriorityFeePerGas": 1,
        **tx,
    }
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signer.sign_transaction(full).raw_transaction))
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {receipt['transactionHash'].hex()} reverted")
    return receipt


def deploy_account(w3: Web3, owner_address: str, funder_key: LocalAccount | str | bytes
                   ) -> ChecksumAddress:
    """Deploy an X402Account owned by ``owner_address`` (EntryPoint v0.7 first, if missing)."""
    funder = _as_account(funder_key)
    entry_point = deploy_entry_point_v07(w3, funder)
    artifact = _artifact("X402Account")
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    data = factory.constructor(entry_point, to_checksum_address(owner_address)).data_in_transaction
    receipt = send_transaction(w3, funder, {"data": data})
    address = to_checksum_address(receipt["contractAddress"])
    if not w3.eth.get_code(address):
        raise RuntimeError("X402Account deployment left no code")
    return address


def encode_action(w3: Web3, account: str, action: str, args: Sequence[Any]) -> bytes:
    """The calldata of owner action ``action(args...)`` on the account."""
    if action not in ACCOUNT_ACTIONS:
        raise ValueError(f"{action!r} is not an X402Account owner action")
    encoded = account_contract(w3, account).encode_abi(action, args=list(args))
    return bytes.fromhex(encoded.removeprefix("0x"))


def owner_action_line(action: str, data: bytes, nonce: int, chain_id: int, account: str,
                      tag: str = ACCOUNT_TAG) -> str:
    """The line the owner signs (``OwnerCalls.ownerMessage``)."""
    return (f"{tag} {action} 0x{keccak(data).hex()} nonce {nonce} chain {chain_id} "
            f"account {account.lower()}")


def decode_hwi_signature(signature: str) -> bytes:
    """HWI's base64 Bitcoin message signature as the 65 bytes ``header || r || s``."""
    raw = base64.b64decode(signature, validate=True)
    if len(raw) != 65:
        raise ValueError(f"a Bitcoin message signature is 65 bytes, not {len(raw)}")
    return raw


def sign_owner_action(w3: Web3, account: str, action: str, data: bytes, sign_line: SignLine,
                      nonce: int | None = None) -> tuple[int, bytes]:
    """(nonce, 65-byte signature) for an owner action, the line signed by ``sign_line``."""
    if nonce is None:
        nonce = int(account_contract(w3, account).functions.ownerNonce().call())
    line = owner_action_line(action, data, nonce, w3.eth.chain_id, account)
    return nonce, decode_hwi_signature(sign_line(line))


def owner_call(w3: Web3, account: str, action: str, data: bytes, signature: bytes,
               relayer: LocalAccount | str | bytes, nonce: int | None = None) -> Any:
    """Relay a signed owner action (``action`` is checked against ``data``); the receipt."""
    contract = account_contract(w3, account)
    fn, _ = contract.decode_function_input(data)
    if fn.fn_name != action:
        raise ValueError(f"calldata is {fn.fn_name}, not {action}")
    if nonce is None:
        nonce = int(contract.functions.ownerNonce().call())
    call = contract.functions.ownerCall(data, nonce, signature)
    call.call({"from": _as_account(relayer).address})  # surface the revert reason before sending
    calldata = contract.encode_abi("ownerCall", args=[data, nonce, signature])
    return send_transaction(w3, relayer, {"to": contract.address, "data": calldata})


def run_owner_action(w3: Web3, account: str, action: str, args: Sequence[Any],
                     sign_line: SignLine, relayer: LocalAccount | str | bytes) -> Any:
    """Encode, have the owner sign (e.g. on the device), and relay one owner action."""
    data = encode_action(w3, account, action, args)
    nonce, signature = sign_owner_action(w3, account, action, data, sign_line)
    return owner_call(w3, account, action, data, signature, relayer, nonce=nonce)


__all__ = [
    "ACCOUNT_ACTIONS", "ACCOUNT_TAG", "ENTRY_POINT_V07", "account_abi", "account_contract",
    "decode_hwi_signature", "deploy_account", "encode_action", "owner_action_line", "owner_call",
    "run_owner_action", "send_transaction", "sign_owner_action",
]
