"""Policy approvals: the text a hardware wallet shows and signs, and its verification.

Only a signature from the enrolled device key makes a policy effective. The device signs a
text listing every field that widens spending (``approval_text``), its diff against the policy
approved before, ending with the policy's sha256 digest, so what the person reads on the
screens is bound to every byte of the policy. Two signature methods are accepted:

- ``bitcoin_message``: HWI ``signmessage`` (any device HWI supports): sha256d over the Bitcoin
  signed-message prefix, verified by recovering the public key and comparing it with the
  enrolled one;
- ``eip712``: Trezor's typed-data signing of the same line, digest and version, verified by
  recovering the Ethereum address of the enrolled key.

Pure: no device, HTTP or chain imports.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

from eth_utils.crypto import keccak
from pydantic import BaseModel, ConfigDict, Field

from .approval_text import PolicyTextTooLong, approval_text, legacy_line
from .errors import X402AgentError
from .policy import Policy
from .reasons import Reason

_BITCOIN_PREFIX = b"\x18Bitcoin Signed Message:\n"


class PolicyRejected(X402AgentError):
    """The policy is not approved by the enrolled device (or is older than the accepted one)."""

    reason = Reason.POLICY_NOT_APPROVED


class Enrollment(BaseModel):
    """The device key pinned at enrollment: only its signatures approve policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: str = Field(pattern=r"^[0-9a-f]{8}$")
    path: str
    pubkey: str = Field(pattern=r"^0[23][0-9a-f]{64}$", description="compressed secp256k1, hex")
    device_type: str = "trezor"
    model: str | None = None

    @property
    def eth_address(self) -> str:
        from coincurve import PublicKey

        raw = PublicKey(bytes.fromhex(self.pubkey)).format(compressed=False)[1:]
        return "0x" + keccak(raw)[-20:].hex()


class PolicyApproval(BaseModel):
    """``policy.approval.json``: the device's signature over a policy's approval line."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_id: Literal["x402-agent/policy-approval/1"] = Field("x402-agent/policy-approval/1", alias="schema")
    method: Literal["bitcoin_message", "eip712"]
    policy_version: int
    policy_digest: str
    message: str
    signature: str = Field(description="base64 (bitcoin_message) or 0x-hex (eip712)")
    fingerprint: str
    path: str
    # The policy approved before this one, whose diff the text shows (None: nothing to compare).
    previous: Policy | None = None

    @property
    def legacy(self) -> bool:
        """Signed over the one-line summary used before every widening field was shown: such
        approvals still verify (against ``approval_text.legacy_line``); new ones are multi-line."""
        return "\n" not in self.message


def approval_message(policy: Policy, previous: Policy | None = None) -> str:
    """The text the device shows and signs (``approval_text``): every field that widens
    spending, the changes against ``previous`` (the approved policy) marked, the digest last."""
    try:
        return approval_text(policy, previous)
    except PolicyTextTooLong as exc:
        raise PolicyRejected(str(exc), reason=Reason.POLICY_TEXT_TOO_LONG) from exc


def signed_text(policy: Policy, approval: PolicyApproval) -> str:
    """The text an approval must have been signed over, by its format."""
    if approval.legacy:
        return legacy_line(policy)
    return approval_message(policy, approval.previous)


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def bitcoin_message_digest(message: str) -> bytes:
    data = message.encode()
    payload = _BITCOIN_PREFIX + _varint(len(data)) + data
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()


def recover_bitcoin_message_key(message: str, signature_b64: str) -> str:
    """The compressed public key (hex) that made this Bitcoin signed-message signature."""
    from coincurve import PublicKey

    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except ValueError as exc:
        raise PolicyRejected("approval signature is not base64") from exc
    if len(raw) != 65 or not 27 <= raw[0] <= 42:
        raise PolicyRejected("approval signature is not a 65-byte signed-message signature")
    recid = (raw[0] - 27) & 3
    try:
        key = PublicKey.from_signature_and_message(
            raw[1:] + bytes([recid]), bitcoin_message_digest(message), hasher=None
        )
    except ValueError as exc:
        raise PolicyRejected("approval signature does not recover a key") from exc
    return key.format(compressed=True).hex()


def eip712_policy_digest(policy: Policy, message: str) -> bytes:
    """EIP-712 digest of the approval as Trezor signs it (see ``eip712_policy_typed_data``)."""
    domain_type = keccak(b"EIP712Domain(string name,string version,uint256 chainId)")
    approval_type = keccak(b"PolicyApproval(string summary,uint256 version,bytes32 digest)")
    domain = keccak(
        domain_type + keccak(b"x402-agent policy") + keccak(b"1") + (policy.chain_id or 0).to_bytes(32, "big")
    )
    struct = keccak(
        approval_type
        + keccak(message.encode())
        + policy.version.to_bytes(32, "big")
        + bytes.fromhex(policy.digest.removeprefix("sha256:"))
    )
    return keccak(b"\x19\x01" + domain + struct)


def eip712_policy_typed_data(policy: Policy, message: str) -> dict[str, object]:
    """The typed data a Trezor shows field by field; hashes to ``eip712_policy_digest``."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "PolicyApproval": [
                {"name": "summary", "type": "string"},
                {"name": "version", "type": "uint256"},
                {"name": "digest", "type": "bytes32"},
            ],
        },
        "primaryType": "PolicyApproval",
        "domain": {"name": "x402-agent policy", "version": "1", "chainId": policy.chain_id or 0},
        "message": {
            "summary": message,
            "version": policy.version,
            "digest": "0x" + policy.digest.removeprefix("sha256:"),
        },
    }


def _recover_eth(digest: bytes, signature_hex: str) -> str:
    from coincurve import PublicKey

    raw = bytes.fromhex(signature_hex.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (0, 1, 27, 28):
        raise PolicyRejected("approval signature is not a 65-byte Ethereum signature")
    try:
        key = PublicKey.from_signature_and_message(raw[:64] + bytes([raw[64] % 27]), digest, hasher=None)
    except ValueError as exc:
        raise PolicyRejected("approval signature does not recover a key") from exc
    return "0x" + keccak(key.format(compressed=False)[1:])[-20:].hex()


def verify_approval(policy: Policy, approval: PolicyApproval, enrollment: Enrollment) -> None:
    """Raise PolicyRejected unless the enrolled device signed exactly this policy."""
    if approval.policy_digest != policy.digest or approval.policy_version != policy.version:
        raise PolicyRejected(
            "the approval is for another policy (digest or version differ)", reason=Reason.POLICY_TAMPERED
        )
    if approval.message != signed_text(policy, approval):
        raise PolicyRejected("the approved text does not describe this policy", reason=Reason.POLICY_TAMPERED)
    if approval.method == "bitcoin_message":
        signer = recover_bitcoin_message_key(approval.message, approval.signature)
        if signer != enrollment.pubkey:
            raise PolicyRejected(
                "the policy was signed by another key than the enrolled device",
                reason=Reason.POLICY_WRONG_KEY,
            )
    else:
        signer = _recover_eth(eip712_policy_digest(policy, approval.message), approval.signature)
        if signer != enrollment.eth_address.lower():
            raise PolicyRejected(
                "the policy was signed by another key than the enrolled device",
                reason=Reason.POLICY_WRONG_KEY,
            )
