"""What clear signing costs: gas of each owner action, clear-signed versus blind, and the device
round trip of each owner action on the simulator.

In one run, on one local world (anvil, Circle's USDC, the device simulator approving by itself):
- the blind contracts (the account, vault and factory of commit d37c352, whose device signed a
  hash of the calldata) are built from that revision's sources with the same build code and
  deployed beside today's; both accounts and vaults are owned by the simulator's key;
- each owner action is signed on the simulator and relayed on both: gas of the whole
  ``ownerCall`` transaction, Bitcoin-message (HWI) and EIP-712 (trezorlib) signatures;
- the round trip host -> device -> signature of each action, p50 over ``--rounds`` runs: the
  clear text through HWI, its typed data through trezorlib, and the blind line through HWI;
  and the host's time to build the words (ABI decoding and the token reads).

    .venv/bin/python bench/bench_owner_actions.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from x402_agent.chain.account import (
    ACCOUNT_TAG,
    VAULT_TAG,
    SignLine,
    decode_hwi_signature,
    owned_contract,
    owner_action_line,
    owner_action_typed_data,
    send_transaction,
    sign_owner_action,
)
from x402_agent.chain.factory import AccountConfig, create_account, deploy_factory
from x402_agent.chain.owner_text import EIP712_DOMAIN
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.device.signers import TypedSigner
from x402_agent.device.trezor import owner_signer, sign_typed_data
from x402_agent.devnet import LocalWorld
from x402_agent.devnet.anvil import dev_account
from x402_agent.devnet.provision import fund
from x402_agent.paths import PROJECT_ROOT

BLIND_REVISION = "d37c352"
SOURCES = ("AllowanceVault", "Interfaces", "OwnerCalls", "Probe", "X402Account", "X402AccountFactory")
USDC = 10**6
RELAYER = dev_account(2)


def build_blind(scratch: Path) -> dict[str, dict[str, Any]]:
    """The blind revision's contracts, compiled by contracts/build.py with today's settings."""
    sys.path.insert(0, str(PROJECT_ROOT / "contracts"))
    import build  # contracts/build.py

    # The sources must sit inside the repository (imports are resolved against it).
    src = Path(tempfile.mkdtemp(prefix="blind-src-", dir=PROJECT_ROOT / "contracts"))
    try:
        for name in SOURCES:
            text = subprocess.run(
                ["git", "show", f"{BLIND_REVISION}:contracts/src/{name}.sol"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (src / f"{name}.sol").write_text(text)
        build.build(scratch, src)
    finally:
        shutil.rmtree(src)
    return {p.stem: json.loads(p.read_text()) for p in scratch.glob("*.json")}


def deploy_blind(
    w3: Web3, built: dict[str, dict[str, Any]], config: AccountConfig
) -> tuple[Contract, Contract]:
    """The blind factory (plain CREATE), then an account and vault from it."""
    factory_art = built["X402AccountFactory"]
    entry_point = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
    factory = w3.eth.contract(abi=factory_art["abi"], bytecode=factory_art["bytecode"])
    tx = factory.constructor(entry_point).build_transaction({"from": RELAYER.address, "gas": 15_000_000})
    receipt = send_transaction(w3, RELAYER, {"data": tx["data"], "gas": 15_000_000})
    factory = w3.eth.contract(address=receipt["contractAddress"], abi=factory_art["abi"])
    old_config = config.as_tuple()[:8]  # the blind factory's Config has no payee list
    salt = keccak(b"blind")
    send_transaction(
        w3,
        RELAYER,
        {"to": factory.address, "data": factory.encode_abi("createAccount", args=[old_config, salt])},
    )
    account, vault = factory.functions.addresses(old_config, salt).call()
    return (
        w3.eth.contract(address=account, abi=built["X402Account"]["abi"]),
        w3.eth.contract(address=vault, abi=built["AllowanceVault"]["abi"]),
    )


def blind_line(contract: Contract, tag: str, action: str, data: bytes, nonce: int, chain_id: int) -> str:
    """What the blind revision's device signed: a hash of the calldata."""
    where = f"chain {chain_id} account {contract.address.lower()}"
    return f"{tag} {action} 0x{keccak(data).hex()} nonce {nonce} {where}"


def blind_typed(
    tag: str, action: str, data: bytes, nonce: int, chain_id: int, address: str
) -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": EIP712_DOMAIN,
            "OwnerCall": [
                {"name": "action", "type": "string"},
                {"name": "data", "type": "bytes"},
                {"name": "nonce", "type": "uint256"},
            ],
        },
        "primaryType": "OwnerCall",
        "domain": {"name": tag, "version": "1", "chainId": chain_id, "verifyingContract": address},
        "message": {"action": action, "data": "0x" + data.hex(), "nonce": nonce},
    }


def actions(w3: Web3, usdc: str, account: str, vault: str) -> list[tuple[str, str, list[Any]]]:
    """(tag, action, args) in an order that leaves each contract as it was where it matters
    (setVault sets the same vault; the session key set is revoked later)."""
    now = int(w3.eth.get_block("latest")["timestamp"])
    key, payee, to = (Account.create().address for _ in range(3))
    transfer = bytes.fromhex(
        w3.eth.contract(address=to_checksum_address(usdc), abi=_TRANSFER).encode_abi("transfer", [to, 1])[2:]
    )
    return [
        (ACCOUNT_TAG, "setPolicy", [USDC // 2, 600, True]),
        (ACCOUNT_TAG, "setToken", [usdc, True]),
        (ACCOUNT_TAG, "setPayee", [payee, True]),
        (ACCOUNT_TAG, "setSessionKey", [key, now + 86400]),
        (ACCOUNT_TAG, "revokeSessionKey", [key]),
        (ACCOUNT_TAG, "setVault", [vault]),
        (ACCOUNT_TAG, "withdraw", [usdc, to, USDC]),
        (ACCOUNT_TAG, "execute", [usdc, 0, transfer]),
        (VAULT_TAG, "setAllowance", [2 * USDC, 86400]),
        (VAULT_TAG, "withdraw", [to, USDC]),
    ]


_TRANSFER = [
    {
        "type": "function",
        "name": "transfer",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
]


def relay(w3: Web3, contract: Contract, data: bytes, nonce: int, signature: bytes) -> int:
    calldata = contract.encode_abi("ownerCall", args=[data, nonce, signature])
    receipt = send_transaction(w3, RELAYER, {"to": contract.address, "data": calldata})
    return int(receipt["gasUsed"])


def p50_ms(n: int, fn: Callable[[], Any]) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e3


def round_trips(
    w3: Web3,
    contract: Contract,
    old: Contract,
    tag: str,
    action: str,
    action_args: list[Any],
    hwi: SignLine,
    typed: TypedSigner,
    rounds: int,
) -> dict[str, float]:
    """Host -> simulator -> signature, p50 ms, of the text already built: the clear text
    through HWI, its typed data through trezorlib (a new trezorlib session each time), the blind
    line through HWI; and apart, the host building the words (the chain reads included)."""
    data = bytes.fromhex(contract.encode_abi(action, args=action_args)[2:])
    line = blind_line(old, tag, action, data, 0, w3.eth.chain_id)
    text = owner_action_line(w3, contract.address, data, 0, tag)
    typed_data = owner_action_typed_data(w3, contract.address, data, 0, tag)
    return {
        "text_bytes": len(text.encode()),
        "words_ms": p50_ms(rounds, lambda: owner_action_line(w3, contract.address, data, 0, tag)),
        "blind_hwi_ms": p50_ms(rounds, lambda: hwi(line)),
        "clear_hwi_ms": p50_ms(rounds, lambda: hwi(text)),
        "clear_trezorlib_ms": p50_ms(rounds, lambda: typed.sign(typed_data)),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("owner action", "action", "<22", ""),
        ("text B", "text_bytes", ">7", ""),
        ("btc blind", "blind_btc_gas", ">10", ""),
        ("btc clear", "clear_btc_gas", ">10", ""),
        ("712 blind", "blind_eip712_gas", ">10", ""),
        ("712 clear", "clear_eip712_gas", ">10", ""),
        ("words ms", "words_ms", ">9", ".1f"),
        ("HWI blind ms", "blind_hwi_ms", ">13", ".1f"),
        ("HWI clear ms", "clear_hwi_ms", ">13", ".1f"),
        ("trezorlib ms", "clear_trezorlib_ms", ">13", ".1f"),
    ]
    print("".join(f"{title:{align}}" for title, _, align, _ in columns))
    for row in rows:
        print("".join(f"{row[key]:{align}{kind}}" for _, key, align, kind in columns))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with LocalWorld() as world, tempfile.TemporaryDirectory() as scratch:
        w3 = Web3(Web3.HTTPProvider(world.rpc_url))
        chain_id = w3.eth.chain_id
        device = HwiDevice.at("trezor", world.device_path)
        owner = device.enroll(DEFAULT_APPROVAL_PATH).eth_address
        now = int(w3.eth.get_block("latest")["timestamp"])
        config = AccountConfig(
            owner, Account.create().address, now + 86400, world.usdc.address, USDC, 3600, USDC, 86400
        )
        deploy_factory(w3, dev_account(0))
        clear_account, clear_vault, _ = create_account(w3, config, dev_account(0))
        blind_account, blind_vault = deploy_blind(w3, build_blind(Path(scratch)), config)
        for holder in (clear_account, clear_vault, blind_account.address, blind_vault.address):
            fund(world, holder, usdc=100 * USDC)
        clear = {
            ACCOUNT_TAG: owned_contract(w3, clear_account, ACCOUNT_TAG),
            VAULT_TAG: owned_contract(w3, clear_vault, VAULT_TAG),
        }
        blind = {ACCOUNT_TAG: blind_account, VAULT_TAG: blind_vault}
        hwi: SignLine = lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH)  # noqa: E731
        typed = owner_signer(DEFAULT_APPROVAL_PATH, world.device_path)
        rows = []
        for tag, action, action_args in actions(w3, world.usdc.address, clear_account, clear_vault):
            row: dict[str, Any] = {"action": f"{tag.removeprefix('x402-')} {action}"}
            for scheme, signer in (("btc", hwi), ("eip712", typed)):
                # clear: today's contracts, the text (or typed data) built from the arguments
                contract = clear[tag]
                data = bytes.fromhex(contract.encode_abi(action, args=action_args)[2:])
                nonce, signature = sign_owner_action(w3, contract.address, action, data, signer, tag=tag)
                row[f"clear_{scheme}_gas"] = relay(w3, contract, data, nonce, signature)
                # blind: the hash of the calldata
                old = blind[tag]
                data = bytes.fromhex(old.encode_abi(action, args=action_args)[2:])
                nonce = old.functions.ownerNonce().call()
                if scheme == "btc":
                    line = blind_line(old, tag, action, data, nonce, chain_id)
                    signature = decode_hwi_signature(device.sign_message(line, DEFAULT_APPROVAL_PATH))
                else:
                    message = blind_typed(tag, action, data, nonce, chain_id, old.address)
                    signature = bytes.fromhex(
                        sign_typed_data(message, DEFAULT_APPROVAL_PATH, world.device_path)[2:]
                    )
                row[f"blind_{scheme}_gas"] = relay(w3, old, data, nonce, signature)
            row.update(
                round_trips(w3, clear[tag], blind[tag], tag, action, action_args, hwi, typed, args.rounds)
            )
            rows.append(row)
        device.close()
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
