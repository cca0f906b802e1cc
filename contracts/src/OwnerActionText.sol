// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {OwnerText} from "./OwnerText.sol";
import {X402Account} from "./X402Account.sol";
import {AllowanceVault} from "./AllowanceVault.sol";

/// The words and EIP-712 struct hash of every owner action of X402Account and AllowanceVault
/// (see OwnerCalls): one stateless contract the factory deploys once and both implementations
/// call, so that the account stays under the code size limit. Adding an owner action is one
/// branch here and its describer; x402_agent/chain/owner_text.py mirrors each, byte for byte.
contract OwnerActionText {
    error UnknownAction();

    /// An X402Account owner action: one branch per action (OwnerCalls._describe says what).
    function describeAccount(bytes calldata data, uint256 nonce, address vault)
        external
        view
        returns (string memory, bytes32)
    {
        bytes4 s = bytes4(data);
        if (s == X402Account.setPolicy.selector) return _describeSetPolicy(data[4:], nonce, vault);
        if (s == X402Account.setToken.selector) return _describeSetToken(data[4:], nonce);
        if (s == X402Account.setPayee.selector) return _describeSetPayee(data[4:], nonce);
        if (s == X402Account.setSessionKey.selector) return _describeSetSessionKey(data[4:], nonce);
        if (s == X402Account.revokeSessionKey.selector) return _describeRevokeSessionKey(data[4:], nonce);
        if (s == X402Account.rotateSessionKey.selector) return _describeRotateSessionKey(data[4:], nonce);
        if (s == X402Account.setPolicyAnchor.selector) return _describeSetPolicyAnchor(data[4:], nonce);
        if (s == X402Account.setVault.selector) return _describeSetVault(data[4:], nonce);
        if (s == X402Account.withdraw.selector) return _describeWithdraw(data[4:], nonce);
        if (s == X402Account.execute.selector) return _describeExecute(data[4:], nonce);
        if (s == X402Account.setGasCaps.selector) return _describeSetGasCaps(data[4:], nonce);
        if (s == X402Account.setGasAllowance.selector) return _describeSetGasAllowance(data[4:], nonce);
        revert UnknownAction();
    }

    function _describeSetPolicy(bytes calldata a, uint256 nonce, address vault) private view returns (string memory, bytes32) {
        (uint256 max, uint64 window, bool restricted) = abi.decode(a, (uint256, uint64, bool));
        // The cap is in atomic units of whichever allowed token pays: named in the vault's token.
        string memory cap = string.concat(OwnerText.num(max), " units of each allowed token");
        (bool known, address token) = _vaultToken(vault);
        if (known) cap = string.concat(cap, " (", OwnerText.amount(token, max), ")");
        return (
            string.concat(
                "set bounds\nmax per payment ", cap, "\nwindow ", OwnerText.num(window),
                " s\npayees restricted ", OwnerText.yesNo(restricted)
            ),
            keccak256(abi.encode(
                keccak256("SetPolicy(uint256 maxValue,uint64 maxWindow,bool payeesRestricted,uint256 nonce)"),
                max, window, restricted, nonce
            ))
        );
    }

    function _describeSetToken(bytes calldata a, uint256 nonce) private view returns (string memory, bytes32) {
        (address token, bool allowed) = abi.decode(a, (address, bool));
        (bool named, string memory symbol,) = OwnerText.metadata(token);
        return (
            string.concat(
                "set token\ntoken ", named ? string.concat(symbol, " ") : "", OwnerText.addr(token), "\nallowed ",
                OwnerText.yesNo(allowed)
            ),
            keccak256(abi.encode(keccak256("SetToken(address token,bool allowed,uint256 nonce)"), token, allowed, nonce))
        );
    }

    function _describeSetPayee(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (address payee, bool allowed) = abi.decode(a, (address, bool));
        return (
            string.concat("set payee\npayee ", OwnerText.addr(payee), "\nallowed ", OwnerText.yesNo(allowed)),
            keccak256(abi.encode(keccak256("SetPayee(address payee,bool allowed,uint256 nonce)"), payee, allowed, nonce))
        );
    }

    function _describeSetSessionKey(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (address key, uint64 expiry) = abi.decode(a, (address, uint64));
        return (
            string.concat("set session key\nkey ", OwnerText.addr(key), "\nexpires ", OwnerText.time(expiry)),
            keccak256(abi.encode(keccak256("SetSessionKey(address key,uint64 expiry,uint256 nonce)"), key, expiry, nonce))
        );
    }

    function _describeRevokeSessionKey(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        address key = abi.decode(a, (address));
        return (
            string.concat("revoke session key\nkey ", OwnerText.addr(key)),
            keccak256(abi.encode(keccak256("RevokeSessionKey(address key,uint256 nonce)"), key, nonce))
        );
    }

    function _describeRotateSessionKey(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (address newKey, uint64 expiry, address oldKey) = abi.decode(a, (address, uint64, address));
        return (
            string.concat(
                "rotate session key\nnew key ", OwnerText.addr(newKey), "\nexpires ", OwnerText.time(expiry),
                "\nrevokes key ", OwnerText.addr(oldKey)
            ),
            keccak256(abi.encode(
                keccak256("RotateSessionKey(address newKey,uint64 expiry,address oldKey,uint256 nonce)"),
                newKey, expiry, oldKey, nonce
            ))
        );
    }

    function _describeSetPolicyAnchor(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (bytes32 digest, uint64 version) = abi.decode(a, (bytes32, uint64));
        return (
            string.concat(
                "anchor policy\nversion ", OwnerText.num(version), "\ndigest ", OwnerText.hexBytes(abi.encodePacked(digest))
            ),
            keccak256(abi.encode(
                keccak256("SetPolicyAnchor(bytes32 digest,uint64 version,uint256 nonce)"), digest, version, nonce
            ))
        );
    }

    function _describeSetVault(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        address newVault = abi.decode(a, (address));
        return (
            string.concat("set vault\nvault ", OwnerText.addr(newVault)),
            keccak256(abi.encode(keccak256("SetVault(address vault,uint256 nonce)"), newVault, nonce))
        );
    }

    function _describeWithdraw(bytes calldata a, uint256 nonce) private view returns (string memory, bytes32) {
        (address token, address to, uint256 amount) = abi.decode(a, (address, address, uint256));
        return (
            string.concat(
                "withdraw\namount ", OwnerText.amount(token, amount), "\ntoken ", OwnerText.addr(token), "\nto ",
                OwnerText.addr(to)
            ),
            keccak256(abi.encode(
                keccak256("Withdraw(address token,address to,uint256 amount,uint256 nonce)"), token, to, amount, nonce
            ))
        );
    }

    function _describeExecute(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (address target, uint256 value, bytes memory call) = abi.decode(a, (address, uint256, bytes));
        return (
            string.concat(
                "execute call\ntarget ", OwnerText.addr(target), "\nvalue ", OwnerText.units(value, 18), " ETH\ndata ",
                OwnerText.hexBytes(call)
            ),
            keccak256(abi.encode(
                keccak256("Execute(address target,uint256 value,bytes data,uint256 nonce)"), target, value,
                keccak256(call), nonce
            ))
        );
    }

    function _describeSetGasCaps(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        X402Account.GasCaps memory c = abi.decode(a, (X402Account.GasCaps));
        return (
            string.concat(
                "set gas caps\nverification gas limit ", OwnerText.num(c.verificationGasLimit), "\ncall gas limit ",
                OwnerText.num(c.callGasLimit), "\npre-verification gas ", OwnerText.num(c.preVerificationGas),
                "\nmax fee per gas ", OwnerText.num(c.maxFeePerGas), " wei\nmax priority fee per gas ",
                OwnerText.num(c.maxPriorityFeePerGas), " wei"
            ),
            keccak256(abi.encode(
                keccak256(
                    "SetGasCaps(uint32 verificationGasLimit,uint32 callGasLimit,uint32 preVerificationGas,uint64 maxFeePerGas,uint64 maxPriorityFeePerGas,uint256 nonce)"
                ),
                c, nonce
            ))
        );
    }

    function _describeSetGasAllowance(bytes calldata a, uint256 nonce) private pure returns (string memory, bytes32) {
        (uint128 allowance, uint64 period) = abi.decode(a, (uint128, uint64));
        return (
            string.concat(
                "set gas allowance\nallowance ", OwnerText.units(allowance, 18), " ETH per period\nperiod ",
                OwnerText.num(period), " s"
            ),
            keccak256(abi.encode(
                keccak256("SetGasAllowance(uint128 allowance,uint64 period,uint256 nonce)"), allowance, period, nonce
            ))
        );
    }

    /// The token of this account's vault, if the vault answers with one.
    function _vaultToken(address vault) private view returns (bool, address) {
        if (vault.code.length == 0) return (false, address(0));
        (bool ok, bytes memory ret) = vault.staticcall(abi.encodeWithSignature("token()"));
        if (!ok || ret.length != 32 || uint256(bytes32(ret)) >> 160 != 0) return (false, address(0));
        address token = abi.decode(ret, (address));
        return (token != address(0), token);
    }

    /// An AllowanceVault owner action (amounts in the vault's one token).
    function describeVault(bytes calldata data, uint256 nonce, address token)
        external
        view
        returns (string memory, bytes32)
    {
        bytes4 s = bytes4(data);
        if (s == AllowanceVault.setAllowance.selector) {
            (uint128 allowance, uint64 period) = abi.decode(data[4:], (uint128, uint64));
            return (
                string.concat(
                    "set allowance\nallowance ", OwnerText.amount(token, allowance), " per period\nperiod ",
                    OwnerText.num(period), " s"
                ),
                keccak256(abi.encode(
                    keccak256("SetAllowance(uint128 allowance,uint64 period,uint256 nonce)"), allowance, period, nonce
                ))
            );
        }
        if (s == AllowanceVault.withdraw.selector) {
            (address to, uint256 amount) = abi.decode(data[4:], (address, uint256));
            return (
                string.concat("withdraw\namount ", OwnerText.amount(token, amount), "\nto ", OwnerText.addr(to)),
                keccak256(abi.encode(keccak256("Withdraw(address to,uint256 amount,uint256 nonce)"), to, amount, nonce))
            );
        }
        revert UnknownAction();
    }
}
