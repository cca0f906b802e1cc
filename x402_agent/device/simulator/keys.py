"""BIP-39 seeds and BIP-32 secp256k1 derivation for the simulator.

NOT SECURE: private keys live in ordinary process memory. ``Node`` never prints its private key
(its ``repr`` shows only public data), and nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from coincurve import PrivateKey
from trezorlib.tools import HARDENED_FLAG, b58check_encode, hash_160

# The standard test seed of the Trezor test suites.
TEST_MNEMONIC = "all all all all all all all all all all all all"

_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def check_mnemonic(mnemonic: str) -> None:
    """Raise ``ValueError`` unless ``mnemonic`` is a valid English BIP-39 phrase (words and checksum)."""
    from mnemonic import Mnemonic

    if not Mnemonic("english").check(" ".join(mnemonic.split())):
        raise ValueError("not a valid BIP-39 mnemonic (unknown word or bad checksum)")


def mnemonic_to_seed(mnemonic: str, passphrase: str = "") -> bytes:
    """BIP-39 seed: PBKDF2-HMAC-SHA512, 2048 rounds, salt "mnemonic" + passphrase (both NFKD)."""
    words = unicodedata.normalize("NFKD", " ".join(mnemonic.split()))
    salt = unicodedata.normalize("NFKD", "mnemonic" + passphrase)
    return hashlib.pbkdf2_hmac("sha512", words.encode(), salt.encode(), 2048)


def format_path(address_n: Sequence[int]) -> str:
    """``[0x8000002c, 0x80000000, 0]`` -> ``"m/44'/0'/0"``."""
    parts = ["m"]
    for index in address_n:
        if index & HARDENED_FLAG:
            parts.append(f"{index & ~HARDENED_FLAG}'")
        else:
            parts.append(str(index))
    return "/".join(parts)


@dataclass(frozen=True)
class Node:
    """A BIP-32 secp256k1 node (private). Its repr shows public data only."""

    depth: int
    parent_fingerprint: int
    child_num: int
    chain_code: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    public_key: bytes = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> Node:
        digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
        return cls._make(0, 0, 0, digest[32:], digest[:32])

    @classmethod
    def _make(cls, depth: int, parent_fp: int, child_num: int, chain_code: bytes, secret: bytes) -> Node:
        public = PrivateKey(secret).public_key.format(compressed=True)
        return cls(depth, parent_fp, child_num, chain_code, secret, public)

    @property
    def fingerprint(self) -> int:
        """This node's own fingerprint (first 4 bytes of HASH160 of its public key), as an int."""
        return int.from_bytes(hash_160(self.public_key)[:4], "big")

    @property
    def uncompressed_public_key(self) -> bytes:
        return PrivateKey(self.private_key).public_key.format(compressed=False)

    def child(self, index: int) -> Node:
        """CKDpriv of BIP-32."""
        if not 0 <= index < 1 << 32:
            raise ValueError("child index out of range")
        if index & HARDENED_FLAG:
            data = b"\x00" + self.private_key + index.to_bytes(4, "big")
        else:
            data = self.public_key + index.to_bytes(4, "big")
        digest = hmac.new(self.chain_code, data, hashlib.sha512).digest()
        tweak = int.from_bytes(digest[:32], "big")
        secret = (tweak + int.from_bytes(self.private_key, "big")) % _CURVE_ORDER
        if tweak >= _CURVE_ORDER or secret == 0:  # probability below 2**-127
            raise ValueError("invalid child key at this index; use the next one")
        return Node._make(self.depth + 1, self.fingerprint, index, digest[32:], secret.to_bytes(32, "big"))

    def derive(self, address_n: Sequence[int]) -> Node:
        node = self
        for index in address_n:
            node = node.child(index)
        return node

    def serialize_public(self, version: int) -> str:
        """Base58Check extended public key with the given 4-byte version (xpub, ypub, tpub...)."""
        payload = (
            version.to_bytes(4, "big")
            + bytes([self.depth & 0xFF])
            + self.parent_fingerprint.to_bytes(4, "big")
            + self.child_num.to_bytes(4, "big")
            + self.chain_code
            + self.public_key
        )
        return b58check_encode(payload)

    def sign_digest(self, digest: bytes) -> tuple[bytes, int]:
        """Deterministic (RFC 6979) low-S ECDSA over a 32-byte digest: ``(r || s, recovery id)``."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        signature = PrivateKey(self.private_key).sign_recoverable(digest, hasher=None)
        return signature[:64], signature[64]


class Keychain:
    """The seed's master node plus a cache of derived nodes."""

    def __init__(self, mnemonic: str, passphrase: str = "") -> None:
        check_mnemonic(mnemonic)
        self._master = Node.from_seed(mnemonic_to_seed(mnemonic, passphrase))
        self._cache: dict[tuple[int, ...], Node] = {(): self._master}

    @property
    def master_fingerprint(self) -> int:
        return self._master.fingerprint

    def derive(self, address_n: Sequence[int]) -> Node:
        path = tuple(address_n)
        node = self._cache.get(path)
        if node is None:
            node = self.derive(path[:-1]).child(path[-1])
            if len(self._cache) < 4096:
                self._cache[path] = node
        return node
