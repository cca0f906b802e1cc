// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

/// An EIP-712 token exposing its domain separator (FiatToken v2.2 does).
interface IEIP712Token {
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}

/// What X402Account needs from its AllowanceVault.
interface IAllowanceVaultPull {
    function pull(uint256 amount) external;
}
