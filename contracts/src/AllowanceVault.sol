// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {OwnerCalls} from "./OwnerCalls.sol";
import {OwnerActionText} from "./OwnerActionText.sol";
import {IAllowanceVaultPull} from "./Interfaces.sol";

/// Cold-ish store for one token behind an x402 hot account. The account may pull at most
/// `allowance` per `period` (lazily reset); so a compromised session key can move at most the hot
/// balance plus what is left of the current period's allowance. The owner (the hardware key, via
/// signed owner calls) sets the allowance and withdraws.
contract AllowanceVault is OwnerCalls, IAllowanceVaultPull {
    using SafeERC20 for IERC20;

    IERC20 public token;
    address public account;

    uint128 public allowance;
    uint64 public period;
    uint64 public periodStart;
    uint128 public spent;

    event AllowanceSet(uint128 allowance, uint64 period);
    event Pulled(uint256 amount, uint128 spentInPeriod);

    error NotAccount();
    error AllowanceExceeded(uint256 requested, uint256 available);

    OwnerActionText private immutable _text;

    /// The implementation behind the clones: locked, never initialised.
    constructor(OwnerActionText text_) {
        _text = text_;
        _initOwner(address(1));
    }

    /// Called once by the factory, in the transaction that creates this clone.
    function initialize(address owner_, IERC20 token_, address account_, uint128 allowance_, uint64 period_)
        external
    {
        _initOwner(owner_);
        (token, account, allowance, period, periodStart) =
            (token_, account_, allowance_, period_, uint64(block.timestamp));
        emit AllowanceSet(allowance_, period_);
    }

    function _ownerTag() internal pure override returns (string memory) {
        return "x402-vault";
    }

    function _ownerKind() internal pure override returns (string memory) {
        return "vault";
    }

    /// See OwnerCalls._describe; the words are built by the shared OwnerActionText contract.
    function _describe(bytes calldata data, uint256 nonce) internal view override returns (string memory, bytes32) {
        return _text.describeVault(data, nonce, address(token));
    }

    /// What the account can still pull in the current period.
    function available() public view returns (uint256) {
        if (period == 0) return 0;
        if (block.timestamp >= uint256(periodStart) + period) return allowance;
        return spent >= allowance ? 0 : allowance - spent;
    }

    function pull(uint256 amount) external {
        if (msg.sender != account) revert NotAccount();
        if (period == 0) revert AllowanceExceeded(amount, 0);
        if (block.timestamp >= uint256(periodStart) + period) {
            // Lazy reset, aligned to whole periods since the last start.
            uint256 elapsed = block.timestamp - periodStart;
            periodStart = uint64(block.timestamp - (elapsed % period));
            spent = 0;
        }
        uint256 left = spent >= allowance ? 0 : allowance - spent;
        if (amount > left) revert AllowanceExceeded(amount, left);
        spent += uint128(amount);
        token.safeTransfer(account, amount);
        emit Pulled(amount, spent);
    }

    function setAllowance(uint128 allowance_, uint64 period_) external onlySelf {
        (allowance, period) = (allowance_, period_);
        emit AllowanceSet(allowance_, period_);
    }

    function withdraw(address to, uint256 amount) external onlySelf {
        token.safeTransfer(to, amount);
    }
}
