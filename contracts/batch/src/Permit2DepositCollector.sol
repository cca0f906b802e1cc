// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {ISignatureTransfer} from
    "node_modules/@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";

import {IDepositCollector} from "./BatchSettlementTypes.sol";

/// The x402 batch-settlement Permit2 deposit collector, written by this project from the x402
/// specification's interface (no package ships the original; public chains use the deployed one
/// at 0x4020425FAf3B746C082C2f942b4E5159887B0005). The payer signs a Permit2
/// ``PermitWitnessTransferFrom`` naming this collector as spender, with the channel id as the
/// witness (``DepositWitness(bytes32 channelId)``, as the SDK signs it); Permit2 moves the tokens
/// straight to the batch-settlement contract, which is this collector's only caller. An optional
/// EIP-2612 permit first grants Permit2 its allowance (gasless approval).
contract Permit2DepositCollector is IDepositCollector {
    /// Canonical addresses as constants (the local world places this runtime code with
    /// anvil_setCode, which runs no constructor).
    address public constant BATCH_SETTLEMENT = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;
    ISignatureTransfer public constant PERMIT2 = ISignatureTransfer(0x000000000022D473030F116dDEE9F6B43aC78BA3);

    bytes32 public constant DEPOSIT_WITNESS_TYPEHASH = keccak256("DepositWitness(bytes32 channelId)");
    string public constant WITNESS_TYPE_STRING =
        "DepositWitness witness)DepositWitness(bytes32 channelId)TokenPermissions(address token,uint256 amount)";

    error OnlyBatchSettlement();

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external
    {
        // Permit2 sends to whoever the spender names: only the settlement contract may spend.
        if (msg.sender != BATCH_SETTLEMENT) revert OnlyBatchSettlement();
        (uint256 nonce, uint256 deadline, bytes memory signature, bytes memory eip2612) =
            abi.decode(data, (uint256, uint256, bytes, bytes));
        if (eip2612.length > 0) _permitPermit2(payer, token, eip2612);
        PERMIT2.permitWitnessTransferFrom(
            ISignatureTransfer.PermitTransferFrom({
                permitted: ISignatureTransfer.TokenPermissions({token: token, amount: amount}),
                nonce: nonce,
                deadline: deadline
            }),
            ISignatureTransfer.SignatureTransferDetails({to: msg.sender, requestedAmount: amount}),
            payer,
            keccak256(abi.encode(DEPOSIT_WITNESS_TYPEHASH, channelId)),
            WITNESS_TYPE_STRING,
            signature
        );
    }

    /// The payer's EIP-2612 approval of Permit2. A failure is ignored: someone may have submitted
    /// the same permit first (the allowance is then in place), and if it is not, Permit2's transfer
    /// fails anyway.
    function _permitPermit2(address payer, address token, bytes memory eip2612) private {
        (uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) =
            abi.decode(eip2612, (uint256, uint256, uint8, bytes32, bytes32));
        try IERC20Permit(token).permit(payer, address(PERMIT2), value, deadline, v, r, s) {} catch {}
    }
}
