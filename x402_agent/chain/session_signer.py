"""A session key of an X402Account as a ``PaymentSigner``.

The payer is the smart account. The session key signs the token's EIP-712 digest of the
TransferWithAuthorization; the signature handed to x402 is the ERC-1271 envelope
``abi.encode(token, from, to, value, validAfter, validBefore, nonce, sig65)`` that the account's
``isValidSignature`` decodes and checks against its on-chain policy. A facilitator that sees
code at ``from`` settles through FiatToken's ``bytes signature`` overload, which calls it.

Permit2 (x402 ``exact`` over Permit2 and ``upto``): the session key signs
``keccak256(abi.encode(account, digest))`` where ``digest`` is Permit2's EIP-712 hash of the
PermitWitnessTransferFrom (Permit2's digest does not name the owner; binding the account keeps a
key registered on two accounts from having one's permit spent from the other). The signature
handed to x402 is the 321-byte envelope :func:`permit2_envelope` builds, which the account's
``isValidSignature`` checks against its policy (token, cap, x402 proxy as spender, payee, window)
and against the digest it rebuilds from the envelope.

Sign-in (sign-in-with-x): the account accepts the EIP-191 hash of an EIP-4361 message that signs
in as itself, carried in the envelope :func:`sign_in_envelope` builds (the session key signs
``keccak256(abi.encode(account, hash))``); no payment or approval digest can take that path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coincurve import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ..signer import SignedAuthorization, TransferAuthorization, eip191_hash, permit2_message

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


@dataclass(frozen=True)
class Permit2Transfer:
    """The fields of a PermitWitnessTransferFrom to an x402 Permit2 proxy.

    ``facilitator`` is the ``upto`` witness's facilitator; ``None`` for ``exact`` (whose witness
    has none). Amounts, nonce and times are integers; addresses are hex strings.
    """

    token: str
    amount: int
    spender: str
    nonce: int
    deadline: int
    to: str
    valid_after: int
    facilitator: str | None = None

    @classmethod
    def from_sdk(cls, authorization: Any) -> Permit2Transfer:
        """From the SDK's ``ExactPermit2Authorization`` or ``UptoPermit2Authorization``
        (``x402.mechanisms.evm.types``; an upto witness carries ``facilitator``)."""
        witness = authorization.witness
        return cls(
            token=to_checksum_address(authorization.permitted.token),
            amount=int(authorization.permitted.amount),
            spender=to_checksum_address(authorization.spender),
            nonce=int(authorization.nonce),
            deadline=int(authorization.deadline),
            to=to_checksum_address(witness.to),
            valid_after=int(witness.valid_after),
            facilitator=getattr(witness, "facilitator", None),
        )

    def digest(self, chain_id: int) -> bytes:
        """Permit2's EIP-712 digest, with the witness types exactly as the SDK signs them."""
        from eth_account.messages import encode_typed_data

        signable = encode_typed_data(
            full_message=permit2_message(
                chain_id,
                token=self.token,
                amount=self.amount,
                spender=self.spender,
                nonce=self.nonce,
                deadline=self.deadline,
                to=self.to,
                valid_after=self.valid_after,
                facilitator=None if self.facilitator is None else to_checksum_address(self.facilitator),
            )
        )
        return keccak(b"\x19\x01" + signable.header + signable.body)


def permit2_session_hash(account: str, digest: bytes) -> bytes:
    """What the session key signs for a Permit2 digest: ``keccak256(abi.encode(account, digest))``."""
    return keccak(_word(to_checksum_address(account)) + digest)


# The account's SIGN_IN_TAG: the first word of a sign-in envelope.
SIGN_IN_TAG = keccak(b"x402-agent sign-in envelope v1")


def sign_in_envelope(message: str, signature65: bytes) -> bytes:
    """What the account's ``isValidSignature`` takes for a sign-in: tag, signature, message."""
    return SIGN_IN_TAG + signature65 + message.encode()


def permit2_envelope(transfer: Permit2Transfer, signature65: bytes) -> bytes:
    """The 321-byte ERC-1271 envelope: token, amount, spender, nonce, deadline, to, facilitator
    (zero for exact), validAfter as 32-byte words, then the 65-byte session signature."""
    if len(signature65) != 65:
        raise ValueError("a session signature is 65 bytes (r || s || v)")
    return (
        _word(transfer.token)
        + _word(transfer.amount)
        + _word(transfer.spender)
        + _word(transfer.nonce)
        + _word(transfer.deadline)
        + _word(transfer.to)
        + _word(transfer.facilitator or 0)
        + _word(transfer.valid_after)
        + signature65
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

    def sign_permit2(self, authorization: Any, chain_id: int) -> str:
        """The x402 payload's ``signature`` for a Permit2 payment from this account.

        ``authorization`` is the SDK's ``ExactPermit2Authorization`` or
        ``UptoPermit2Authorization`` whose ``from_address`` is this account (or a
        :class:`Permit2Transfer`); ``chain_id`` is the payment network's. Returns ``0x`` + the
        321-byte envelope hex: put it where the SDK puts a plain key's 65-byte signature. The
        account must be deployed (Permit2 has no ERC-6492 path).
        """
        if isinstance(authorization, Permit2Transfer):
            transfer = authorization
        else:
            if authorization.from_address.lower() != self._address.lower():
                raise ValueError("this session key only signs payments from its own account")
            transfer = Permit2Transfer.from_sdk(authorization)
        digest = transfer.digest(chain_id)
        signature = self._sign_digest(permit2_session_hash(self._address, digest))
        return "0x" + permit2_envelope(transfer, signature).hex()

    def sign_in_message(self, message: str) -> str:
        """The account's sign-in envelope for ``message`` (an EIP-4361 text naming this account);
        a server checks it through ERC-1271 on the message's EIP-191 hash."""
        signature = self._sign_digest(permit2_session_hash(self._address, eip191_hash(message)))
        return "0x" + sign_in_envelope(message, signature).hex()

    def sign_user_op_hash(self, user_op_hash: bytes) -> bytes:
        """EIP-191 signature of a userOpHash (the account accepts it for refills only)."""
        return self._sign_digest(keccak(b"\x19Ethereum Signed Message:\n32" + user_op_hash))

    def __repr__(self) -> str:
        return f"SessionKeySigner(account={self._address}, key={self.session_address})"
