"""The local signer against the x402 SDK's EIP-712 hashing and eth-account's signing."""

from __future__ import annotations

from eth_account import Account
from eth_typing import Hash32
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Authorization

from x402_agent.signer import LocalKeySigner, TokenDomain, TransferAuthorization

ACCOUNT = Account.from_key("0x" + "11" * 32)
addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
uint256 = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=60, deadline=None)
@given(
    to=addresses,
    contract=addresses,
    value=uint256,
    after=uint256,
    before=uint256,
    nonce=st.binary(min_size=32, max_size=32),
    chain_id=st.integers(1, 2**63),
    name=st.text(min_size=1, max_size=20),
    version=st.text(min_size=1, max_size=5),
)
def test_digest_and_signature_match_the_sdk_and_eth_account(
    to: str,
    contract: str,
    value: int,
    after: int,
    before: int,
    nonce: bytes,
    chain_id: int,
    name: str,
    version: str,
) -> None:
    auth = TransferAuthorization(
        TokenDomain(name, version, chain_id, contract),
        ACCOUNT.address,
        to,
        value,
        after,
        before,
        "0x" + nonce.hex(),
    )
    expected = hash_eip3009_authorization(
        ExactEIP3009Authorization(
            from_address=ACCOUNT.address,
            to=to,
            value=str(value),
            valid_after=str(after),
            valid_before=str(before),
            nonce="0x" + nonce.hex(),
        ),
        chain_id,
        contract,
        name,
        version,
    )
    assert auth.digest() == expected
    signed = LocalKeySigner(ACCOUNT).sign_authorization(auth)
    # RFC 6979 signatures are deterministic: byte-for-byte what eth-account produces.
    assert signed.signature == "0x" + bytes(ACCOUNT.unsafe_sign_hash(Hash32(expected)).signature).hex()
