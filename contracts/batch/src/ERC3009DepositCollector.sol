// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IDepositCollector} from "./BatchSettlementTypes.sol";

/// EIP-3009 token with the bytes-signature overload (FiatToken v2.2: ECDSA or ERC-1271).
interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// The x402 batch-settlement ERC-3009 deposit collector, written by this project from the x402
/// specification's interface (no package ships the original; public chains use the deployed one
/// at 0x4020806089470a89826cB9fB1f4059150b550004). ``collect`` receives the payer's
/// ``ReceiveWithAuthorization`` (to = this collector, nonce = keccak256(abi.encode(channelId,
/// salt)), as the SDK signs it) and forwards the tokens to the batch-settlement contract.
contract ERC3009DepositCollector is IDepositCollector {
    using SafeERC20 for IERC20;

    /// The canonical batch-settlement address, a constant rather than an immutable: the local
    /// world places this runtime code with anvil_setCode, which runs no constructor.
    address public constant BATCH_SETTLEMENT = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    error OnlyBatchSettlement();

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external
    {
        // Only the settlement contract may spend an authorization: receiveWithAuthorization pays
        // this collector, and anyone else calling would have the tokens forwarded to themselves.
        if (msg.sender != BATCH_SETTLEMENT) revert OnlyBatchSettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}
