"""Approval lines and their verification, with keys made here (the device path is tested in
test_device.py through HWI and the simulator)."""

from __future__ import annotations

import base64

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data

from x402_agent.approval import (
    Enrollment,
    PolicyApproval,
    PolicyRejected,
    approval_message,
    bitcoin_message_digest,
    eip712_policy_digest,
    eip712_policy_typed_data,
    verify_approval,
)
from x402_agent.policy import Policy

KEY = PrivateKey(bytes.fromhex("22" * 32))
OTHER = PrivateKey(bytes.fromhex("33" * 32))
USDC = {
    "network": "eip155:8453",
    "address": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
    "symbol": "USDC",
    "decimals": 6,
    "eip712_name": "USD Coin",
    "eip712_version": "2",
    "per_request_max": 100_000,
    "daily_max": 5_000_000,
}
POLICY = Policy.model_validate(
    {
        "version": 7,
        "account": "0x1200000000000000000000000000000000000Ab0",
        "chain_id": 8453,
        "assets": [USDC],
        "sessions": {"default": {"lifetime_seconds": 3600, "allowance": {"USDC": 1_000_000}}},
    }
)


def enrollment(key: PrivateKey = KEY) -> Enrollment:
    return Enrollment(
        fingerprint="5c9e228d", path="m/44'/1'/402'/0/0", pubkey=key.public_key.format(compressed=True).hex()
    )


def bitcoin_signed(policy: Policy, key: PrivateKey = KEY, message: str | None = None) -> PolicyApproval:
    line = message or approval_message(policy)
    raw = key.sign_recoverable(bitcoin_message_digest(line), hasher=None)
    signature = base64.b64encode(bytes([31 + raw[64]]) + raw[:64]).decode()
    return PolicyApproval(
        method="bitcoin_message",
        policy_version=policy.version,
        policy_digest=policy.digest,
        message=line,
        signature=signature,
        fingerprint="5c9e228d",
        path="m/44'/1'/402'/0/0",
    )


def test_the_text_lists_every_limit_and_ends_with_the_digest() -> None:
    text = approval_message(POLICY)
    lines = text.splitlines()
    assert lines[0] == "x402-agent policy v7 (first approval)"
    assert lines[1] == "account: 0x1200000000000000000000000000000000000ab0, chain 8453"
    assert (
        "pay USDC on eip155:8453 token 0x833589fcd6edb6e08f4c7c32d4f71b54bda02913: decimals 6, "
        "per-request 0.10, daily 5.00, device approval above never, schemes exact"
    ) in lines
    assert "session default: lifetime 1h, USDC@eip155:8453 1.00, scope any" in lines
    assert lines[-1] == POLICY.digest
    assert len(text.encode()) <= 1024


def test_a_legacy_one_line_approval_still_verifies() -> None:
    """Approvals signed before every field was shown: the one-line summary, checked as such."""
    line = (
        "x402-agent policy v7 acct 0x12..b0 chain 8453: daily 5.00 USDC, "
        f"per-request 0.10, session 1.00/1h, {POLICY.digest}"
    )
    verify_approval(POLICY, bitcoin_signed(POLICY, message=line), enrollment())
    with pytest.raises(PolicyRejected) as tampered:  # the one line must still match the policy
        verify_approval(POLICY, bitcoin_signed(POLICY, message=line.replace("5.00", "9.00")), enrollment())
    assert tampered.value.reason == "policy_tampered"


def test_a_device_signature_over_the_line_verifies() -> None:
    verify_approval(POLICY, bitcoin_signed(POLICY), enrollment())


def test_eip712_approval_matches_eth_account_and_verifies() -> None:
    account = Account.from_key(KEY.secret)
    line = approval_message(POLICY)
    typed = eip712_policy_typed_data(POLICY, line)
    signed = account.sign_message(encode_typed_data(full_message=typed))
    assert signed.message_hash == eip712_policy_digest(POLICY, line)
    approval = PolicyApproval(
        method="eip712",
        policy_version=7,
        policy_digest=POLICY.digest,
        message=line,
        signature="0x" + bytes(signed.signature).hex(),
        fingerprint="5c9e228d",
        path="m/44'/60'/0'/0/0",
    )
    verify_approval(POLICY, approval, enrollment())
    with pytest.raises(PolicyRejected) as wrong:
        verify_approval(POLICY, approval, enrollment(OTHER))
    assert wrong.value.reason == "policy_wrong_key"


def test_tampered_policy_is_rejected() -> None:
    approval = bitcoin_signed(POLICY)
    looser = POLICY.model_copy(update={"max_payments_per_minute": 1000})
    with pytest.raises(PolicyRejected) as tampered:
        verify_approval(looser, approval, enrollment())
    assert tampered.value.reason == "policy_tampered"


def test_another_key_is_rejected() -> None:
    with pytest.raises(PolicyRejected) as wrong:
        verify_approval(POLICY, bitcoin_signed(POLICY, OTHER), enrollment())
    assert wrong.value.reason == "policy_wrong_key"


def test_a_signature_over_another_line_is_rejected() -> None:
    forged = bitcoin_signed(POLICY, message="x402-agent policy v7: anything goes")
    with pytest.raises(PolicyRejected) as tampered:
        verify_approval(POLICY, forged, enrollment())
    assert tampered.value.reason == "policy_tampered"


@pytest.mark.parametrize(
    "signature",
    [
        "not base64!",
        base64.b64encode(b"\x1f" + b"\0" * 10).decode(),
        base64.b64encode(b"\x05" + b"\1" * 64).decode(),
    ],
)
def test_malformed_signatures_are_rejected(signature: str) -> None:
    approval = bitcoin_signed(POLICY).model_copy(update={"signature": signature})
    with pytest.raises(PolicyRejected):
        verify_approval(POLICY, approval, enrollment())
