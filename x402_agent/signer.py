"""Signers of payments: EIP-3009 transfer authorizations, Permit2 witness transfers.

The payment flow only knows ``PaymentSigner``: a payer address and a method that signs one
authorization. A local key signs it with ECDSA; the ERC-4337 session key of a smart account
plugs in behind the same interface (its signature is an envelope the account checks on chain).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, TypeVar, runtime_checkable

from eth_utils.crypto import keccak

from .errors import ConfigError
from .reasons import Reason

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


@dataclass(frozen=True)
class TokenDomain:
    """The EIP-712 domain of the token contract that will execute the transfer."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str


_DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_AUTHORIZATION_TYPEHASH = keccak(
    b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    b"uint256 validBefore,bytes32 nonce)"
)


def _word(value: int | str) -> bytes:
    """ABI-encode a uint256 or an address as one 32-byte word."""
    number = int(value, 16) if isinstance(value, str) else value
    return number.to_bytes(32, "big")


@cache
def _domain_separator(token: TokenDomain) -> bytes:
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(token.name.encode())
        + keccak(token.version.encode())
        + _word(token.chain_id)
        + _word(token.verifying_contract)
    )


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
        """EIP-712 digest of TransferWithAuthorization (equal to the x402 SDK's; tested)."""
        struct = keccak(
            _AUTHORIZATION_TYPEHASH
            + _word(self.from_address)
            + _word(self.to)
            + _word(self.value)
            + _word(self.valid_after)
            + _word(self.valid_before)
            + bytes.fromhex(self.nonce.removeprefix("0x"))
        )
        return keccak(b"\x19\x01" + _domain_separator(self.token) + struct)


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


@runtime_checkable
class Permit2Signer(Protocol):
    """A payer that can sign a Permit2 PermitWitnessTransferFrom (exact and upto over Permit2)."""

    def sign_permit2(self, authorization: Any, chain_id: int) -> str:
        """The payload's ``signature`` for the SDK's ``ExactPermit2Authorization`` or
        ``UptoPermit2Authorization`` (0x-hex)."""
        ...


def eip191_hash(message: str) -> bytes:
    """The EIP-191 (personal_sign) hash of a text message: what a sign-in signature covers."""
    data = message.encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


@runtime_checkable
class SignInSigner(Protocol):
    """A payer that can sign a sign-in-with-x message (EIP-4361 text) as the paying address:
    a plain key with EIP-191, a smart account with an envelope its ERC-1271 check accepts."""

    @property
    def address(self) -> str: ...

    def sign_in_message(self, message: str) -> str:
        """The signature (0x-hex) the server verifies for this payer and ``message``."""
        ...


@runtime_checkable
class TransactionSender(Protocol):
    """A payer that signs its own transactions (a plain key; it pays their gas): used to
    approve Permit2 for a bounded amount before a Permit2 payment."""

    def sign_transaction(self, transaction: dict[str, Any]) -> str:
        """The raw signed transaction, 0x-hex, ready for eth_sendRawTransaction."""
        ...


@runtime_checkable
class Permit2AllowanceKeeper(Protocol):
    """A payer that raises its own Permit2 allowance, within its bounds (the smart account:
    through its top-up); a blocking call."""

    def ensure_permit2_allowance(self, needed: int) -> None: ...


def permit2_typed_data(authorization: Any, chain_id: int) -> dict[str, Any]:
    """The full EIP-712 message of a Permit2 witness transfer from the SDK's
    ``ExactPermit2Authorization`` or ``UptoPermit2Authorization`` (an upto witness carries
    ``facilitator``)."""
    witness = authorization.witness
    return permit2_message(
        chain_id,
        token=authorization.permitted.token,
        amount=int(authorization.permitted.amount),
        spender=authorization.spender,
        nonce=int(authorization.nonce),
        deadline=int(authorization.deadline),
        to=witness.to,
        valid_after=int(witness.valid_after),
        facilitator=getattr(witness, "facilitator", None),
    )


def permit2_message(
    chain_id: int,
    *,
    token: str,
    amount: int,
    spender: str,
    nonce: int,
    deadline: int,
    to: str,
    valid_after: int,
    facilitator: str | None,
) -> dict[str, Any]:
    """PermitWitnessTransferFrom with the SDK's own witness types (the upto witness when a
    ``facilitator`` is named): Permit2's domain has no version."""
    from x402.mechanisms.evm.constants import (
        PERMIT2_ADDRESS,
        PERMIT2_WITNESS_TYPES,
        UPTO_PERMIT2_WITNESS_TYPES,
    )

    witness: dict[str, Any] = {"to": to, "validAfter": valid_after}
    types = PERMIT2_WITNESS_TYPES
    if facilitator is not None:
        witness["facilitator"] = facilitator
        types = UPTO_PERMIT2_WITNESS_TYPES
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **types,
        },
        "primaryType": "PermitWitnessTransferFrom",
        "domain": {"name": "Permit2", "chainId": chain_id, "verifyingContract": PERMIT2_ADDRESS},
        "message": {
            "permitted": {"token": token, "amount": amount},
            "spender": spender,
            "nonce": nonce,
            "deadline": deadline,
            "witness": witness,
        },
    }


@runtime_checkable
class OnChainGuard(Protocol):
    """A payer whose account enforces bounds on chain (the smart-account hot wallet). The flow
    asks it before reserving, so what the chain would refuse is never counted or signed, and
    after reserving, so the hot balance covers every payment in flight."""

    def check_payment(self, asset: str, pay_to: str, amount: int, window: int) -> None: ...

    def ensure_funds(self, needed: int) -> None: ...


Capability = TypeVar("Capability")
_provided: dict[tuple[type, type], bool] = {}


def provides(signer: object, capability: type[Capability]) -> TypeGuard[Capability]:
    """``isinstance(signer, capability)`` for one of the protocols above, remembered per class:
    Python 3.11 looks up every member of a runtime-checkable protocol at each check (about
    10 us), several times per payment, and a payer's capabilities are its class's methods."""
    key = (type(signer), capability)
    found = _provided.get(key)
    if found is None:
        found = _provided[key] = isinstance(signer, capability)
    return found


class LocalKeySigner:
    """Signs with a secp256k1 key held in memory (decrypted from an eth-account keystore)."""

    def __init__(self, account: LocalAccount) -> None:
        from coincurve import PrivateKey

        self._address = str(account.address)
        self._key = PrivateKey(bytes(account.key))

    @classmethod
    def from_keystore(cls, path: Path, password: str) -> LocalKeySigner:
        from eth_account import Account

        try:
            keystore = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read keystore {path}", reason=Reason.KEYSTORE_UNREADABLE) from exc
        try:
            key = Account.decrypt(keystore, password)
        except ValueError as exc:
            # Never echo the password or the underlying message, which may describe key material.
            raise ConfigError(
                f"cannot decrypt keystore {path}: wrong password?", reason=Reason.KEYSTORE_LOCKED
            ) from exc
        return cls(Account.from_key(key))

    @property
    def address(self) -> str:
        return self._address

    def private_key_bytes(self) -> bytes:
        """The raw key, for a signer built on it (a smart account's session key); never log it."""
        return bytes(self._key.secret)

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization:
        return SignedAuthorization(authorization, self._sign_digest(authorization.digest()))

    def sign_typed_data(self, typed_data: dict[str, Any]) -> str:
        """An EIP-712 signature (65 bytes, 0x-hex) of a full typed-data message."""
        from eth_account.messages import encode_typed_data

        signable = encode_typed_data(full_message=typed_data)
        return self._sign_digest(keccak(b"\x19" + signable.version + signable.header + signable.body))

    def sign_permit2(self, authorization: Any, chain_id: int) -> str:
        if authorization.from_address.lower() != self._address.lower():
            raise ValueError("this key only signs payments from its own address")
        return self.sign_typed_data(permit2_typed_data(authorization, chain_id))

    def sign_in_message(self, message: str) -> str:
        """EIP-191 (personal_sign) of a sign-in message, as a server recovers it."""
        return self._sign_digest(eip191_hash(message))

    def sign_transaction(self, transaction: dict[str, Any]) -> str:
        from eth_account import Account

        signed = Account.sign_transaction(transaction, self._key.secret)
        return "0x" + bytes(signed.raw_transaction).hex()

    def _sign_digest(self, digest: bytes) -> str:
        # coincurve signs the digest as given (hasher=None) and returns r || s || recid, with s
        # already low (libsecp256k1 normalises); Ethereum wants v = 27 + recid.
        raw = self._key.sign_recoverable(digest, hasher=None)
        return "0x" + (raw[:64] + bytes([27 + raw[64]])).hex()

    def __repr__(self) -> str:
        return f"LocalKeySigner({self.address})"


def write_keystore(path: Path, private_key: str, password: str, *, iterations: int | None = None) -> str:
    """Encrypt a key into an eth-account (v3) keystore file readable only by its owner."""
    from eth_account import Account
    from eth_typing import HexStr

    keystore = Account.encrypt(HexStr(private_key), password, kdf="scrypt", iterations=iterations)
    path.write_text(json.dumps(keystore))
    path.chmod(0o600)
    return str(Account.from_key(private_key).address)
