"""A session key of an X402Account as a ``PaymentSigner``.

The payer is the smart account. The session key signs the token's EIP-712 digest of the
TransferWithAuthorization; the signature handed to x402 is the ERC-1271 envelope
``abi.encode(token, from, to, value, validAfter, validBefore, nonce, sig65)`` that the account's
``isValidSignature`` decodes and checks against its on-chain policy. A facilitator that sees
code at ``from`` settles through FiatToken's ``bytes signature`` overload, which calls it.
"""

from __future__ import annotations

from coincurve import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ..signer import SignedAuthorization, TransferAuthorization

_SIG_OFFSET = 0x100  # 8 head words: 7 static fields and the offset of the bytes tail


def _word(value: int | str | bytes) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 32:
            raise ValueError("a bytes32 word is 32 bytes")
        return value
    number = int(value, 16) if isinstance(value, str) else value
    return number.to_bytes(32, "big")


def authorization_envelope(authorization: TransferAuthorization, signature65: bytes) -> bytes:
    """The 384-byte ERC-1271 envelope for ``authorization`` and a 65-byte session signature."""
    if len(signature65) != 65:
        raise ValueError("a session signature is 65 bytes (r || s || v)")
    return (
        _word(authorization.token.verifying_contract)
        + _word(authorization.from_address)
        + _word(authorization.to)
        + _word(authorization.value)
        + _word(authorization.valid_after)
        + _word(authorization.valid_before)
        + _word(bytes.fromhex(authorization.nonce.removeprefix("0x")))
        + _word(_SIG_OFFSET)
        + _word(65)
        + signature65
        + b"\x00" * 31
    )


class SessionKeySigner:
    """Signs payments of ``account_address`` with a session key registered on that account."""

    def __init__(self, account_address: str, session_key: bytes | str) -> None:
        raw = (
            bytes.fromhex(session_key.removeprefix("0x"))
            if isinstance(session_key, str)
            else bytes(session_key)
        )
        self._key = PrivateKey(raw)
        self._address = to_checksum_address(account_address)
        public = self._key.public_key.format(compressed=False)[1:]
        self.session_address = to_checksum_address(keccak(public)[-20:])

    @property
    def address(self) -> str:
        return self._address

    def _sign_digest(self, digest: bytes) -> bytes:
        raw = self._key.sign_recoverable(digest, hasher=None)  # r || s || recid
        return raw[:64] + bytes([27 + raw[64]])

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization:
        if authorization.from_address.lower() != self._address.lower():
            raise ValueError("this session key only signs payments from its own account")
        envelope = authorization_envelope(authorization, self._sign_digest(authorization.digest()))
        return SignedAuthorization(authorization, "0x" + envelope.hex())

    def sign_user_op_hash(self, user_op_hash: bytes) -> bytes:
        """EIP-191 signature of a userOpHash (the account accepts it for refills only)."""
        return self._sign_digest(keccak(b"\x19Ethereum Signed Message:\n32" + user_op_hash))

    def __repr__(self) -> str:
        return f"SessionKeySigner(account={self._address}, key={self.session_address})"
