// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

// Types and the deposit-collector interface of the x402 batch-settlement scheme, written by this
// project from the x402 specification (specs/schemes/batch-settlement/scheme_batch_settlement_evm.md)
// and the ABI the official x402 SDK calls. No package ships the original contracts; on public
// chains the SDK uses the deployed originals at their canonical addresses, and the local world
// places these at the same addresses so the SDK's facilitator and clients run unchanged.

/// Immutable channel identity; its EIP-712 hash under the "x402 Batch Settlement" domain is the
/// channel id.
struct ChannelConfig {
    address payer;
    address payerAuthorizer; // EOA that signs vouchers, or 0: the payer signs (ERC-1271 allowed)
    address receiver;
    address receiverAuthorizer; // signs claim batches and refunds
    address token;
    uint40 withdrawDelay;
    bytes32 salt;
}

/// A payer's cumulative ceiling for a channel.
struct Voucher {
    ChannelConfig channel;
    uint128 maxClaimableAmount;
}

/// One row of a claim: the voucher, the payer's signature on it and the cumulative total the
/// receiver claims (at most the voucher's ceiling).
struct VoucherClaim {
    Voucher voucher;
    bytes signature;
    uint128 totalClaimed;
}

/// Pulls a deposit from the payer into the batch-settlement contract (its only caller) under the
/// payer's authorization carried in ``data``; the nonce of that authorization binds ``channelId``.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external;
}
