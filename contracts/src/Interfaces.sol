// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// An EIP-712 token exposing its domain separator (FiatToken v2.2 does).
interface IEIP712Token {
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}

/// What X402Account needs from its AllowanceVault: pulls, and the token and per-period allowance
/// that bound the account's Permit2 approval.
interface IAllowanceVaultPull {
    function pull(uint256 amount) external;
    function token() external view returns (IERC20);
    function allowance() external view returns (uint128);
}

/// What X402Account needs from its factory: the vault it was created without (see PendingVault).
interface IVaultFactory {
    function createVault(bytes32 salt, address owner, IERC20 token, uint128 allowance, uint64 period)
        external
        returns (address vault);
}
