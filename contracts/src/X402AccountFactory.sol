// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {IEntryPoint} from "@account-abstraction/contracts/interfaces/IEntryPoint.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Clones} from "@openzeppelin/contracts/proxy/Clones.sol";
import {X402Account} from "./X402Account.sol";
import {AllowanceVault} from "./AllowanceVault.sol";
import {OwnerActionText} from "./OwnerActionText.sol";

/// Creates an X402Account and its AllowanceVault as a pair of minimal clones, at addresses that
/// commit to their whole initial configuration: anyone may deploy a counterfactual account (an
/// ERC-6492 facilitator does), but never with another owner, session key or bounds.
contract X402AccountFactory {
    struct Config {
        address owner; // the hardware key
        address sessionKey; // the agent host's hot key
        uint64 sessionExpiry;
        address token; // the one token the account pays with and its vault holds
        uint256 maxValue; // per payment
        uint64 maxWindow; // longest authorization validity, seconds
        uint128 allowance; // what the account may pull from its vault per period
        uint64 period; // seconds
        address[] payees; // empty: any payee (the agent's policy still restricts); else only these
    }

    X402Account public immutable accountImplementation;
    AllowanceVault public immutable vaultImplementation;

    event AccountCreated(address indexed account, address indexed vault, address indexed owner);

    /// `text` builds both implementations' owner-action words; it is deployed on its own (at a
    /// deterministic address) so that this contract's creation code stays under the 48 KiB limit.
    constructor(IEntryPoint entryPoint, OwnerActionText text) {
        accountImplementation = new X402Account(entryPoint, text);
        vaultImplementation = new AllowanceVault(text);
    }

    function cloneSalt(Config calldata config, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(config, salt));
    }

    /// The account and vault addresses for this configuration, deployed or not.
    function addresses(Config calldata config, bytes32 salt) public view returns (address account, address vault) {
        bytes32 s = cloneSalt(config, salt);
        account = Clones.predictDeterministicAddress(address(accountImplementation), s);
        vault = Clones.predictDeterministicAddress(address(vaultImplementation), s);
    }

    /// Deploy and initialise the pair; returns the account (already deployed: returns it as is).
    function createAccount(Config calldata config, bytes32 salt) external returns (address account) {
        address vault;
        (account, vault) = addresses(config, salt);
        if (account.code.length > 0) return account;
        bytes32 s = cloneSalt(config, salt);
        Clones.cloneDeterministic(address(vaultImplementation), s);
        Clones.cloneDeterministic(address(accountImplementation), s);
        X402Account(payable(account)).initialize(
            config.owner, vault, config.token, config.sessionKey, config.sessionExpiry, config.maxValue, config.maxWindow,
            config.payees
        );
        AllowanceVault(vault).initialize(config.owner, IERC20(config.token), account, config.allowance, config.period);
        emit AccountCreated(account, vault, config.owner);
    }
}
