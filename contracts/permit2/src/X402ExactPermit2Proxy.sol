// SPDX-License-Identifier: MIT
pragma solidity 0.8.23;

import {ISignatureTransfer} from
    "node_modules/@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";
import {X402Permit2ProxyBase} from "./X402Permit2ProxyBase.sol";

/// @notice The x402 `exact` Permit2 proxy: moves exactly the permitted amount to the witness's
/// payee. Our implementation from the specification's interface (no package ships it; see
/// X402Permit2ProxyBase); the local world places its runtime code at the canonical address
/// 0x402085c248EeA27D92E8b30b2C58ed07f9E20001.
contract X402ExactPermit2Proxy is X402Permit2ProxyBase {
    struct Witness {
        address to;
        uint256 validAfter;
    }

    /// @notice The tail Permit2 appends to its PermitWitnessTransferFrom type: the field, then the
    /// referenced structs in EIP-712 (alphabetical) order, as the SDK's PERMIT2_WITNESS_TYPES sign.
    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)";
    bytes32 public constant WITNESS_TYPEHASH = keccak256("Witness(address to,uint256 validAfter)");

    function settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        bytes32 witnessHash = keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.validAfter));
        _transfer(
            permit,
            permit.permitted.amount,
            owner,
            witness.to,
            witness.validAfter,
            witnessHash,
            WITNESS_TYPE_STRING,
            signature
        );
    }
}
