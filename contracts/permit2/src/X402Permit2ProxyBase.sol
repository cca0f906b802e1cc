// SPDX-License-Identifier: MIT
pragma solidity 0.8.23;

import {ISignatureTransfer} from
    "node_modules/@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";

/// @notice What both x402 Permit2 proxies share: the payer signs a Permit2
/// PermitWitnessTransferFrom naming the proxy as spender, and the witness (signed with it) names
/// where the money goes and from when. The proxy is the only spender the signature admits, and it
/// sends only to the witness's payee, so the facilitator that submits the transaction can change
/// neither the payee nor the window: Permit2 rebuilds the digest from the witness we pass and
/// refuses the signature if any field differs.
///
/// Our own implementation, written from the interface the x402 Python SDK calls
/// (x402.mechanisms.evm.constants) and the x402 specification's description of the proxies,
/// because no npm or PyPI package ships these contracts. It serves only the local world: on public
/// chains the SDK's facilitator calls the deployed originals at the same canonical addresses.
/// The EIP-2612 path (settleWithPermit) is not implemented: the local world does not offer the
/// gas-sponsoring extensions that use it.
abstract contract X402Permit2ProxyBase {
    /// @notice Permit2's canonical address (the same on every chain).
    ISignatureTransfer public constant PERMIT2 = ISignatureTransfer(0x000000000022D473030F116dDEE9F6B43aC78BA3);

    error InvalidOwner();
    error InvalidDestination();
    error PaymentTooEarly();

    /// @dev Checks what Permit2 cannot (zero addresses, the witness's start time), then has
    /// Permit2 move `amount` from `owner` to `to` under `witnessHash`.
    function _transfer(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        address to,
        uint256 validAfter,
        bytes32 witnessHash,
        string memory witnessTypeString,
        bytes calldata signature
    ) internal {
        if (owner == address(0)) revert InvalidOwner();
        if (to == address(0)) revert InvalidDestination();
        // Permit2 enforces the deadline (the end of the window); the start lives in the witness.
        if (block.timestamp < validAfter) revert PaymentTooEarly();
        PERMIT2.permitWitnessTransferFrom(
            permit,
            ISignatureTransfer.SignatureTransferDetails({to: to, requestedAmount: amount}),
            owner,
            witnessHash,
            witnessTypeString,
            signature
        );
    }
}
