"""Signers of EIP-3009 transfer authorizations.

The payment flow only knows ``PaymentSigner``: a payer address and a method that signs one
authorization. A local key signs it with ECDSA; the ERC-4337 session key of a smart account
plugs in behind the same interface (its signature is an envelope the account checks on chain).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


@dataclass(frozen=True)
class TokenDomain:
    """The EIP-712 domain of the token contract that will execute the transfer."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str


@dataclass(frozen=True)
class TransferAuthorization:
    """EIP-3009 TransferWithAuthorization fields, integers kept as integers."""

    token: TokenDomain
    from_address: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str  # 0x + 64 hex digits

    def digest(self) -> bytes:
        """EIP-712 digest, computed by the x402 SDK's own hashing."""
        from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
        from x402.mechanisms.evm.types import ExactEIP3009Authorization

        return hash_eip3009_authorization(
            ExactEIP3009Authorization(
                from_address=self.from_address, to=self.to, value=str(self.value),
                valid_after=str(self.valid_after), valid_before=str(self.valid_before),
                nonce=self.nonce,
            ),
            self.token.chain_id, self.token.verifying_contract, self.token.name,
            self.token.version,
        )


@dataclass(frozen=True)
class SignedAuthorization:
    authorization: TransferAuthorization
    signature: str  # 0x-hex; 65 bytes for an EOA, longer for contract accounts


class PaymentSigner(Protocol):
    @property
    def address(self) -> str:
        """The payer: the address whose tokens move (an EOA or a smart account)."""
        ...

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization: ...


class LocalKeySigner:
    """Signs with a secp256k1 key held in memory (decrypted from an eth-account keystore)."""

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def from_keystore(cls, path: Path, password: str) -> LocalKeySigner:
        from eth_account import Account

        try:
            keystore = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read keystore {path}", reason="keystore_unreadable") from exc
        try:
            key = Account.decrypt(keystore, password)
        except ValueError as exc:
            # Never echo the password or the underlying message, which may describe key material.
            raise ConfigError(f"cannot decrypt keystore {path}: wrong password?",
                              reason="keystore_locked") from exc
        return cls(Account.from_key(key))

    @property
    def address(self) -> str:
        return str(self._account.address)

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization:
        from eth_typing import Hash32

        signed = self._account.unsafe_sign_hash(Hash32(authorization.digest()))
        return SignedAuthorization(authorization, "0x" + bytes(signed.signature).hex())

    def __repr__(self) -> str:
        return f"LocalKeySigner({self.address})"


def write_keystore(path: Path, private_key: str, password: str, *, iterations: int | None = None
                   ) -> str:
    """Encrypt a key into an eth-account (v3) keystore file readable only by its owner."""
    from eth_account import Account
    from eth_typing import HexStr

    keystore = Account.encrypt(HexStr(private_key), password, kdf="scrypt", iterations=iterations)
    path.write_text(json.dumps(keystore))
    path.chmod(0o600)
    return str(Account.from_key(private_key).address)
