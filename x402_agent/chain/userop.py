"""ERC-4337 v0.7 packed user operations and their hash, as the v0.7 EntryPoint computes it."""

from __future__ import annotations

from collections.abc import Mapping
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


# paymaster (20 bytes) | paymasterVerificationGasLimit (16) | paymasterPostOpGasLimit (16) | data
_PAYMASTER_DATA_OFFSET = 52


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _bytes(value: str | None) -> bytes:
    return bytes.fromhex(value.removeprefix("0x")) if value else b""


def _quantity(value: str | int | None) -> int:
    if value is None:
        return 0
    return value if isinstance(value, int) else int(value, 16)


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

    @property
    def verification_gas_limit(self) -> int:
        return unpack_128x2(self.accountGasLimits)[0]

    @property
    def call_gas_limit(self) -> int:
        return unpack_128x2(self.accountGasLimits)[1]

    @property
    def max_priority_fee_per_gas(self) -> int:
        return unpack_128x2(self.gasFees)[0]

    @property
    def max_fee_per_gas(self) -> int:
        return unpack_128x2(self.gasFees)[1]

    def to_rpc(self) -> dict[str, str]:
        """The v0.7 JSON-RPC form bundlers take (ERC-7769): unpacked fields, hex quantities.

        ``initCode`` splits into ``factory`` + ``factoryData`` and ``paymasterAndData`` into
        ``paymaster``, its two gas limits and ``paymasterData``; both are left out when empty.
        """
        rpc = {
            "sender": to_checksum_address(self.sender),
            "nonce": hex(self.nonce),
            "callData": _hex(self.callData),
            "callGasLimit": hex(self.call_gas_limit),
            "verificationGasLimit": hex(self.verification_gas_limit),
            "preVerificationGas": hex(self.preVerificationGas),
            "maxFeePerGas": hex(self.max_fee_per_gas),
            "maxPriorityFeePerGas": hex(self.max_priority_fee_per_gas),
            "signature": _hex(self.signature),
        }
        if self.initCode:
            if len(self.initCode) < 20:
                raise ValueError("initCode is a 20-byte factory address followed by its calldata")
            rpc["factory"] = to_checksum_address(self.initCode[:20])
            rpc["factoryData"] = _hex(self.initCode[20:])
        if self.paymasterAndData:
            pad = self.paymasterAndData
            if len(pad) < _PAYMASTER_DATA_OFFSET:
                raise ValueError("paymasterAndData is paymaster (20 bytes), two uint128 gas limits, data")
            rpc["paymaster"] = to_checksum_address(pad[:20])
            rpc["paymasterVerificationGasLimit"] = hex(int.from_bytes(pad[20:36], "big"))
            rpc["paymasterPostOpGasLimit"] = hex(int.from_bytes(pad[36:52], "big"))
            rpc["paymasterData"] = _hex(pad[_PAYMASTER_DATA_OFFSET:])
        return rpc

    @classmethod
    def from_rpc(cls, rpc: Mapping[str, Any]) -> PackedUserOperation:
        """The inverse of ``to_rpc``."""
        factory = rpc.get("factory")
        init_code = _bytes(factory) + _bytes(rpc.get("factoryData")) if factory else b""
        paymaster = rpc.get("paymaster")
        paymaster_and_data = (
            _bytes(paymaster)
            + _quantity(rpc.get("paymasterVerificationGasLimit")).to_bytes(16, "big")
            + _quantity(rpc.get("paymasterPostOpGasLimit")).to_bytes(16, "big")
            + _bytes(rpc.get("paymasterData"))
        ) if paymaster else b""  # fmt: skip
        return cls(
            sender=to_checksum_address(rpc["sender"]),
            nonce=_quantity(rpc["nonce"]),
            initCode=init_code,
            callData=_bytes(rpc["callData"]),
            accountGasLimits=pack_account_gas_limits(
                _quantity(rpc["verificationGasLimit"]), _quantity(rpc["callGasLimit"])
            ),
            preVerificationGas=_quantity(rpc["preVerificationGas"]),
            gasFees=pack_gas_fees(_quantity(rpc["maxPriorityFeePerGas"]), _quantity(rpc["maxFeePerGas"])),
            paymasterAndData=paymaster_and_data,
            signature=_bytes(rpc.get("signature")),
        )

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
