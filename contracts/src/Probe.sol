// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {PackedUserOperation} from "@account-abstraction/contracts/interfaces/PackedUserOperation.sol";
import {UserOperationLib} from "@account-abstraction/contracts/core/UserOperationLib.sol";

/// Toolchain probe: exposes the v0.7 EntryPoint's inner user-operation hash.
contract Probe {
    using UserOperationLib for PackedUserOperation;

    function innerHash(PackedUserOperation calldata op) external pure returns (bytes32) {
        return op.hash();
    }
}
