// SPDX-License-Identifier: MIT
pragma solidity 0.8.23;

import {ISignatureTransfer} from
    "node_modules/@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";
import {X402Permit2ProxyBase} from "./X402Permit2ProxyBase.sol";

/// @notice The x402 `upto` Permit2 proxy: the facilitator named in the signed witness (and only
/// it) moves any amount up to the permitted maximum to the witness's payee, so a seller can charge
/// what was used. Our implementation from the specification's interface (no package ships it; see
/// X402Permit2ProxyBase); the local world places its runtime code at the canonical address
/// 0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002.
contract X402UptoPermit2Proxy is X402Permit2ProxyBase {
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }

    /// @notice As the SDK's UPTO_PERMIT2_WITNESS_TYPES sign (see X402ExactPermit2Proxy).
    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";
    bytes32 public constant WITNESS_TYPEHASH =
        keccak256("Witness(address to,address facilitator,uint256 validAfter)");

    error AmountExceedsPermitted();
    error UnauthorizedFacilitator();

    function settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        // The payer chose who may pick the amount: anyone else holding the signature cannot settle.
        if (msg.sender != witness.facilitator) revert UnauthorizedFacilitator();
        if (amount > permit.permitted.amount) revert AmountExceedsPermitted();
        bytes32 witnessHash =
            keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter));
        _transfer(
            permit, amount, owner, witness.to, witness.validAfter, witnessHash, WITNESS_TYPE_STRING, signature
        );
    }
}
