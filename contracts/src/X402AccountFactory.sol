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

    error NotTheAccount();

    /// Deploy and initialise the pair; returns the account (already deployed: returns it as is).
    function createAccount(Config calldata config, bytes32 salt) external returns (address account) {
        address vault;
        (account, vault) = addresses(config, salt);
        if (account.code.length > 0) return account;
        X402Account.PendingVault memory none;
        _createAccount(config, salt, account, vault, none);
        _createVault(cloneSalt(config, salt), config.owner, IERC20(config.token), account, config.allowance, config.period);
    }

    /// The account alone, for a user operation's initCode: ERC-7562 lets an unstaked factory
    /// CREATE2 only the sender and write only its storage (OP-031, STO-010), and the vault's
    /// initialisation reads the clock (OP-011). The account's first `refill` has the vault
    /// created (createVault), at the same address as createAccount would.
    function createSender(Config calldata config, bytes32 salt) external returns (address account) {
        address vault;
        (account, vault) = addresses(config, salt);
        if (account.code.length > 0) return account;
        X402Account.PendingVault memory pending =
            X402Account.PendingVault(cloneSalt(config, salt), address(this), config.period, config.token, config.allowance);
        _createAccount(config, salt, account, vault, pending);
    }

    /// The vault of the account created by createSender with this clone salt; only that account
    /// may ask, with what createSender stored in it (so the vault is the one its address commits to).
    function createVault(bytes32 s, address owner, IERC20 token, uint128 allowance, uint64 period)
        external
        returns (address vault)
    {
        if (msg.sender != Clones.predictDeterministicAddress(address(accountImplementation), s)) revert NotTheAccount();
        return _createVault(s, owner, token, msg.sender, allowance, period);
    }

    function _createAccount(
        Config calldata config,
        bytes32 salt,
        address account,
        address vault,
        X402Account.PendingVault memory pending
    ) internal {
        Clones.cloneDeterministic(address(accountImplementation), cloneSalt(config, salt));
        X402Account(payable(account)).initialize(
            config.owner, vault, config.token, config.sessionKey, config.sessionExpiry, config.maxValue, config.maxWindow,
            config.payees, pending
        );
        emit AccountCreated(account, vault, config.owner);
    }

    function _createVault(bytes32 s, address owner, IERC20 token, address account, uint128 allowance, uint64 period)
        internal
        returns (address vault)
    {
        vault = Clones.cloneDeterministic(address(vaultImplementation), s);
        AllowanceVault(vault).initialize(owner, token, account, allowance, period);
    }
}
