// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// Test-only ERC-1271 wallet (tests/test_batch_world.py): a signature is valid when its owner's
/// key signed the digest. The smallest contract payer, to drive the paths a smart account takes
/// (EIP-3009 through ERC-1271, vouchers checked against the payer when payerAuthorizer is zero).
contract OwnerSigned1271 {
    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 digest, bytes calldata signature) external view returns (bytes4) {
        (address signer, ECDSA.RecoverError error,) = ECDSA.tryRecover(digest, signature);
        return error == ECDSA.RecoverError.NoError && signer == owner ? bytes4(0x1626ba7e) : bytes4(0xffffffff);
    }
}
