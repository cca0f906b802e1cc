"""Bitcoin for the simulator: coins, addresses, extended-key versions, signed messages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from trezorlib.messages import FailureType, InputScriptType
from trezorlib.tools import b58check_encode, hash_160

from .keys import Node
from .workflow import WorkflowFailure


@dataclass(frozen=True)
class Coin:
    name: str
    address_type: int
    address_type_p2sh: int
    bech32_prefix: str
    xpub_magic: int
    xpub_magic_segwit_p2sh: int
    xpub_magic_segwit_native: int


COINS = {
    coin.name: coin
    for coin in (
        Coin("Bitcoin", 0x00, 0x05, "bc", 0x0488B21E, 0x049D7CB2, 0x04B24746),
        Coin("Testnet", 0x6F, 0xC4, "tb", 0x043587CF, 0x044A5262, 0x045F1CF6),
        Coin("Regtest", 0x6F, 0xC4, "bcrt", 0x043587CF, 0x044A5262, 0x045F1CF6),
    )
}

_SIGNED_MESSAGE_PREFIX = b"\x18Bitcoin Signed Message:\n"


def get_coin(name: str | None) -> Coin:
    coin = COINS.get(name or "Bitcoin")
    if coin is None:
        raise WorkflowFailure(FailureType.DataError, f"Unsupported coin: {name} (simulator)")
    return coin


def xpub_version(coin: Coin, script_type: InputScriptType | None, ignore_xpub_magic: bool) -> int:
    if ignore_xpub_magic:
        return coin.xpub_magic
    if script_type == InputScriptType.SPENDP2SHWITNESS:
        return coin.xpub_magic_segwit_p2sh
    if script_type == InputScriptType.SPENDWITNESS:
        return coin.xpub_magic_segwit_native
    return coin.xpub_magic


def address(coin: Coin, public_key: bytes, script_type: InputScriptType | None) -> str:
    """Single-key address of the given script type (P2PKH, P2SH-P2WPKH or P2WPKH)."""
    key_hash = hash_160(public_key)
    if script_type in (None, InputScriptType.SPENDADDRESS):
        return b58check_encode(bytes([coin.address_type]) + key_hash)
    if script_type == InputScriptType.SPENDP2SHWITNESS:
        redeem_script = b"\x00\x14" + key_hash
        return b58check_encode(bytes([coin.address_type_p2sh]) + hash_160(redeem_script))
    if script_type == InputScriptType.SPENDWITNESS:
        return segwit_address(coin.bech32_prefix, 0, key_hash)
    raise WorkflowFailure(
        FailureType.DataError, f"Script type {_name(script_type)} is not supported by the simulator"
    )


def _name(script_type: InputScriptType | None) -> str:
    return script_type.name if isinstance(script_type, InputScriptType) else str(script_type)


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def message_digest(message: bytes) -> bytes:
    """sha256d(varint-prefixed "Bitcoin Signed Message:\\n" || varint(len) || message)."""
    data = _SIGNED_MESSAGE_PREFIX + _varint(len(message)) + message
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def sign_message(
    node: Node, message: bytes, script_type: InputScriptType | None, no_script_type: bool
) -> bytes:
    """65-byte signature: header || r || s, header = 27 + recid + 4 (compressed key), plus 4 for
    P2SH-P2WPKH or 8 for P2WPKH unless ``no_script_type`` (as the firmware does)."""
    rs, recid = node.sign_digest(message_digest(message))
    header = 27 + 4 + recid
    if not no_script_type:
        if script_type == InputScriptType.SPENDP2SHWITNESS:
            header += 4
        elif script_type == InputScriptType.SPENDWITNESS:
            header += 8
        elif script_type not in (None, InputScriptType.SPENDADDRESS):
            raise WorkflowFailure(FailureType.DataError, f"Unsupported script type {_name(script_type)}")
    return bytes([header]) + rs


# ---- bech32 (BIP-173), witness version 0 only --------------------------------------------------
_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for i, generator in enumerate(_BECH32_GENERATOR):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def _regroup_8_to_5(data: bytes) -> list[int]:
    accumulator, bits, out = 0, 0, []
    for byte in data:
        accumulator = (accumulator << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((accumulator >> bits) & 31)
    if bits:
        out.append((accumulator << (5 - bits)) & 31)
    return out


def segwit_address(hrp: str, witness_version: int, program: bytes) -> str:
    if witness_version != 0:
        raise ValueError("only witness version 0 (bech32) is implemented")
    data = [witness_version, *_regroup_8_to_5(program)]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    polymod = _bech32_polymod(expanded + data + [0] * 6) ^ 1
    checksum = [(polymod >> (5 * (5 - i))) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in data + checksum)
