"""Policy approvals: the short message a hardware wallet signs, and its verification.

Only a signature from the enrolled device key makes a policy effective. The device signs a
short, readable line that ends with the policy's sha256 digest, so what the person reads on the
screen is bound to every byte of the policy. Two signature methods are accepted:

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

from .errors import X402AgentError
from .money import format_units
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


def _lifetime(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _money(atomic: int, decimals: int) -> str:
    """Exact, with at least cents: 5000000 at 6 decimals -> '5.00', 1500 -> '0.0015'."""
    whole, _, frac = format_units(atomic, decimals).partition(".")
    return f"{whole}.{frac.ljust(2, '0')}" if decimals >= 2 else whole


def _short(address: str) -> str:
    return f"{address[:4]}..{address[-2:]}".lower()


def approval_message(policy: Policy) -> str:
    """One line a device screen can show: the limits a person cares about, then the digest
    that binds the whole document, e.g. ``x402-agent policy v7 acct 0x12..ab chain 8453:
    daily 5.00 USDC, per-request 0.10, session 1.00/1h, sha256:<64 hex>``."""
    head = f"x402-agent policy v{policy.version}"
    if policy.account:
        head += f" acct {_short(policy.account)}"
    if policy.chain_id:
        head += f" chain {policy.chain_id}"
    parts = []
    for asset in policy.assets:
        limits = [f"per-request {_money(asset.per_request_max, asset.decimals)}"]
        if asset.daily_max is not None:
            limits.insert(0, f"daily {_money(asset.daily_max, asset.decimals)} {asset.symbol}")
        else:
            limits[0] = f"{asset.symbol} {limits[0]}"
        for name, session in sorted(policy.sessions.items()):
            for key, amount in session.allowance.items():
                if policy.asset(key) == asset:
                    label = "session" if name == "default" else f"session {name}"
                    limits.append(
                        f"{label} {_money(amount, asset.decimals)}/{_lifetime(session.lifetime_seconds)}"
                    )
        parts.append(", ".join(limits))
    return f"{head}: {'; '.join(parts)}, {policy.digest}"


def bitcoin_message_digest(message: str) -> bytes:
    data = message.encode()
    if len(data) >= 0xFD:
        raise PolicyRejected("approval line too long for a signed message", reason=Reason.POLICY_INVALID)
    payload = _BITCOIN_PREFIX + bytes([len(data)]) + data
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
    if approval.message != approval_message(policy):
        raise PolicyRejected("the approved line does not describe this policy", reason=Reason.POLICY_TAMPERED)
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
