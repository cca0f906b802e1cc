"""X402AccountFactory: the account and its vault as clones at addresses that commit to their config.

The factory itself sits at a deterministic address (CREATE2 deployer, zero salt, bound to
EntryPoint v0.7), so an ERC-6492 facilitator can list it once per chain. An account can pay
before it exists: its signatures are wrapped in ERC-6492 with the factory call that deploys it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from .account import artifact, send_transaction
from .entrypoint import CREATE2_DEPLOYER, ENTRY_POINT_V07, create2_address

_CONFIG_TYPES = ["(address,address,uint64,address,uint256,uint64,uint128,uint64,address[])", "bytes32"]
# An EIP-1167 minimal proxy's creation code around its implementation (OpenZeppelin Clones).
_CLONE_HEAD = bytes.fromhex("3d602d80600a3d3981f3363d3d373d3d3d363d73")
_CLONE_TAIL = bytes.fromhex("5af43d82803e903d91602b57fd5bf3")

FACTORY_SALT = bytes(32)
# ERC-6492's magic suffix: a signature from a contract that may not be deployed yet.
ERC6492_MAGIC = bytes.fromhex("6492" * 16)


@dataclass(frozen=True)
class AccountConfig:
    """Everything an account is created with; its address commits to all of it."""

    owner: str  # the hardware key's address
    session_key: str
    session_expiry: int
    token: str
    max_value: int  # per payment, atomic units
    max_window: int  # seconds
    allowance: int  # per period, atomic units
    period: int  # seconds
    salt: bytes = bytes(32)
    # Empty: the account pays any payee (the agent's policy still restricts); else only these.
    payees: tuple[str, ...] = ()

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            to_checksum_address(self.owner),
            to_checksum_address(self.session_key),
            self.session_expiry,
            to_checksum_address(self.token),
            self.max_value,
            self.max_window,
            self.allowance,
            self.period,
            [to_checksum_address(payee) for payee in self.payees],
        )


def owner_text_init_code() -> bytes:
    return bytes.fromhex(artifact("OwnerActionText")["bytecode"].removeprefix("0x"))


def owner_text_address() -> ChecksumAddress:
    """OwnerActionText (the owner actions' words, stateless), through the CREATE2 deployer."""
    return create2_address(CREATE2_DEPLOYER, FACTORY_SALT, owner_text_init_code())


def factory_init_code() -> bytes:
    art = artifact("X402AccountFactory")
    args = encode(["address", "address"], [ENTRY_POINT_V07, owner_text_address()])
    return bytes.fromhex(art["bytecode"].removeprefix("0x")) + args


def factory_address() -> ChecksumAddress:
    return create2_address(CREATE2_DEPLOYER, FACTORY_SALT, factory_init_code())


def factory_contract(w3: Web3) -> Contract:
    return w3.eth.contract(address=factory_address(), abi=artifact("X402AccountFactory")["abi"])


def deploy_factory(w3: Web3, funder: LocalAccount) -> ChecksumAddress:
    """Deploy EntryPoint v0.7, OwnerActionText and the factory unless they are there; return the
    factory address (``factory_deploy.deploy_factory_once``: its checks, and what it sent)."""
    from .factory_deploy import deploy_factory_once  # it builds on this module

    return deploy_factory_once(w3, funder).factory


def predicted_addresses(w3: Web3, config: AccountConfig) -> tuple[ChecksumAddress, ChecksumAddress]:
    """(account, vault) for ``config``, deployed or not (the factory must be deployed)."""
    account, vault = factory_contract(w3).functions.addresses(config.as_tuple(), config.salt).call()
    return to_checksum_address(account), to_checksum_address(vault)


def _created_by(deployer: str, nonce: int) -> ChecksumAddress:
    """CREATE's address for a contract's ``nonce`` (1 or 2: the factory's implementations)."""
    raw = bytes.fromhex(deployer.removeprefix("0x"))
    return to_checksum_address(keccak(bytes([0xD6, 0x94]) + raw + bytes([nonce]))[12:])


def implementation_addresses() -> tuple[ChecksumAddress, ChecksumAddress]:
    """(account, vault) implementations: the factory's constructor creates the account's
    (nonce 1), then the vault's (nonce 2)."""
    factory = factory_address()
    return _created_by(factory, 1), _created_by(factory, 2)


def counterfactual_addresses(config: AccountConfig) -> tuple[ChecksumAddress, ChecksumAddress]:
    """(account, vault) for ``config``, computed here as the factory does, with no chain read: a
    lying RPC endpoint cannot make an address commit to another owner."""
    factory = factory_address()
    salt = keccak(encode(_CONFIG_TYPES, [config.as_tuple(), config.salt]))
    account, vault = (
        create2_address(factory, salt, _CLONE_HEAD + bytes.fromhex(implementation[2:]) + _CLONE_TAIL)
        for implementation in implementation_addresses()
    )
    return account, vault


def create_account_calldata(w3: Web3, config: AccountConfig) -> bytes:
    encoded = factory_contract(w3).encode_abi("createAccount", args=[config.as_tuple(), config.salt])
    return bytes.fromhex(encoded.removeprefix("0x"))


def create_sender_calldata(w3: Web3, config: AccountConfig) -> bytes:
    """``createSender``: the account alone, for a user operation's initCode (ERC-7562 allows the
    factory only the sender's CREATE2 there); its first refill has the vault created."""
    encoded = factory_contract(w3).encode_abi("createSender", args=[config.as_tuple(), config.salt])
    return bytes.fromhex(encoded.removeprefix("0x"))


def create_account(
    w3: Web3, config: AccountConfig, funder: LocalAccount
) -> tuple[ChecksumAddress, ChecksumAddress, int]:
    """Deploy the account and its vault (idempotent); (account, vault, gas used, 0 if present)."""
    account, vault = predicted_addresses(w3, config)
    if w3.eth.get_code(account):
        return account, vault, 0
    receipt = send_transaction(
        w3, funder, {"to": factory_address(), "data": create_account_calldata(w3, config)}
    )
    return account, vault, int(receipt["gasUsed"])


def erc6492_wrap(factory: str, factory_calldata: bytes, signature: bytes) -> bytes:
    """``abi.encode(factory, calldata, signature) ++ magic``: a counterfactual account's signature."""
    return (
        encode(["address", "bytes", "bytes"], [to_checksum_address(factory), factory_calldata, signature])
        + ERC6492_MAGIC
    )


__all__ = [
    "ERC6492_MAGIC",
    "FACTORY_SALT",
    "AccountConfig",
    "counterfactual_addresses",
    "create_account",
    "create_account_calldata",
    "create_sender_calldata",
    "deploy_factory",
    "erc6492_wrap",
    "factory_address",
    "factory_contract",
    "implementation_addresses",
    "predicted_addresses",
]
