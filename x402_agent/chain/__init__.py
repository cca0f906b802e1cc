"""On-chain parts of the hot wallet: the ERC-4337 EntryPoint and user operations."""

from .entrypoint import (
    CREATE2_DEPLOYER,
    ENTRY_POINT_V07,
    ENTRY_POINT_V07_SALT,
    create2_address,
    deploy_entry_point_v07,
    entry_point_v07_abi,
)
from .userop import PackedUserOperation, pack_account_gas_limits, pack_gas_fees, user_op_hash_v07

__all__ = [
    "CREATE2_DEPLOYER",
    "ENTRY_POINT_V07",
    "ENTRY_POINT_V07_SALT",
    "PackedUserOperation",
    "create2_address",
    "deploy_entry_point_v07",
    "entry_point_v07_abi",
    "pack_account_gas_limits",
    "pack_gas_fees",
    "user_op_hash_v07",
]
