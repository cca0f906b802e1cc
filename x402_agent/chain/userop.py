"""ERC-4337 v0.7 packed user operations and their hash, as the v0.7 EntryPoint computes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

_UINT128_MAX = (1 << 128) - 1


def _pack_128x2(high: int, low: int) -> bytes:
    for value in (high, low):
        if not 0 <= value <= _UINT128_MAX:
            raise ValueError(f"{value} does not fit in uint128")
    return ((high << 128) | low).to_bytes(32, "big")


def pack_account_gas_limits(verification_gas_limit: int, call_gas_limit: int) -> bytes:
    """``accountGasLimits``: verificationGasLimit (high 128 bits) | callGasLimit (low 128 bits)."""
    return _pack_128x2(verification_gas_limit, call_gas_limit)


def pack_gas_fees(max_priority_fee_per_gas: int, max_fee_per_gas: int) -> bytes:
    """``gasFees``: maxPriorityFeePerGas (high 128 bits) | maxFeePerGas (low 128 bits)."""
    return _pack_128x2(max_priority_fee_per_gas, max_fee_per_gas)


def unpack_128x2(packed: bytes) -> tuple[int, int]:
    """Split a packed gas field into (high, low)."""
    value = int.from_bytes(packed, "big")
    return value >> 128, value & _UINT128_MAX


@dataclass(frozen=True)
class PackedUserOperation:
    """The v0.7 ``PackedUserOperation`` struct (field names as in Solidity)."""

    sender: str
    nonce: int
    # Field names follow Solidity so the struct maps one to one onto the ABI tuple.
    initCode: bytes
    callData: bytes
    accountGasLimits: bytes
    preVerificationGas: int
    gasFees: bytes
    paymasterAndData: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for name in ("accountGasLimits", "gasFees"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} is 32 bytes")
        for name in ("nonce", "preVerificationGas"):
            if not 0 <= getattr(self, name) < 1 << 256:
                raise ValueError(f"{name} is a uint256")

    def as_tuple(self) -> tuple[Any, ...]:
        """The struct as an ABI tuple, in field order (for contract calls)."""
        return (
            to_checksum_address(self.sender), self.nonce, self.initCode, self.callData,
            self.accountGasLimits, self.preVerificationGas, self.gasFees,
            self.paymasterAndData, self.signature,
        )  # fmt: skip


def user_op_inner_hash_v07(op: PackedUserOperation) -> bytes:
    """``UserOperationLib.hash``: keccak of the packed fields, dynamic ones pre-hashed, no signature."""
    fields = (
        to_checksum_address(op.sender), op.nonce, keccak(op.initCode), keccak(op.callData),
        op.accountGasLimits, op.preVerificationGas, op.gasFees, keccak(op.paymasterAndData),
    )  # fmt: skip
    types = ["address", "uint256", "bytes32", "bytes32", "bytes32", "uint256", "bytes32", "bytes32"]
    return keccak(encode(types, fields))


def user_op_hash_v07(op: PackedUserOperation, entry_point: str, chain_id: int) -> bytes:
    """``EntryPoint.getUserOpHash`` of v0.7: keccak(abi.encode(inner hash, entryPoint, chainId))."""
    return keccak(
        encode(
            ["bytes32", "address", "uint256"],
            [user_op_inner_hash_v07(op), to_checksum_address(entry_point), chain_id],
        )
    )
