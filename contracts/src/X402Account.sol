// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {BaseAccount} from "@account-abstraction/contracts/core/BaseAccount.sol";
import {IEntryPoint} from "@account-abstraction/contracts/interfaces/IEntryPoint.sol";
import {PackedUserOperation} from "@account-abstraction/contracts/interfaces/PackedUserOperation.sol";
import {
    SIG_VALIDATION_FAILED,
    SIG_VALIDATION_SUCCESS,
    _packValidationData
} from "@account-abstraction/contracts/core/Helpers.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {OwnerCalls} from "./OwnerCalls.sol";
import {IEIP712Token, IAllowanceVaultPull} from "./Interfaces.sol";

/// x402 hot wallet. The owner (a hardware key) sets policy through signed owner calls; session keys
/// (the agent's hot keys) can only sign EIP-3009 TransferWithAuthorization payments within that
/// policy, which this account approves through ERC-1271, and user operations that refill the
/// account from its allowance vault. Accounts are clones made by X402AccountFactory.
contract X402Account is BaseAccount, OwnerCalls, IERC1271 {
    using SafeERC20 for IERC20;

    bytes4 internal constant ERC1271_MAGIC = 0x1626ba7e;
    bytes4 internal constant ERC1271_INVALID = 0xffffffff;
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    /// abi.encode(address,address,address,uint256,uint256,uint256,bytes32,bytes) with a 65-byte tail.
    uint256 internal constant ENVELOPE_LENGTH = 8 * 32 + 32 + 96;

    IEntryPoint private immutable _entryPoint;

    uint256 public maxValue; // per payment, token atomic units
    uint64 public maxWindow; // seconds between max(validAfter, now) and validBefore
    bool public payeesRestricted;
    address public vault;
    mapping(address => bool) public tokenAllowed;
    mapping(address => bool) public payeeAllowed;
    mapping(address => uint64) public sessionKeyExpiry; // 0 = not registered or revoked

    event PolicySet(uint256 maxValue, uint64 maxWindow, bool payeesRestricted);
    event TokenAllowed(address indexed token, bool allowed);
    event PayeeAllowed(address indexed payee, bool allowed);
    event SessionKeySet(address indexed key, uint64 expiry);
    event VaultSet(address indexed vault);

    error NotFromEntryPoint();

    /// The implementation behind the clones: locked, never initialised.
    constructor(IEntryPoint entryPoint_) {
        _entryPoint = entryPoint_;
        _initOwner(address(1));
    }

    /// Called once by the factory, in the transaction that creates this clone, with the
    /// configuration its address commits to.
    function initialize(
        address owner_,
        address vault_,
        address token,
        address sessionKey,
        uint64 sessionExpiry,
        uint256 maxValue_,
        uint64 maxWindow_
    ) external {
        _initOwner(owner_);
        (maxValue, maxWindow, vault) = (maxValue_, maxWindow_, vault_);
        tokenAllowed[token] = true;
        sessionKeyExpiry[sessionKey] = sessionExpiry;
        emit PolicySet(maxValue_, maxWindow_, false);
        emit TokenAllowed(token, true);
        emit SessionKeySet(sessionKey, sessionExpiry);
        emit VaultSet(vault_);
    }

    receive() external payable {}

    function entryPoint() public view override returns (IEntryPoint) {
        return _entryPoint;
    }

    // ---- owner actions (only through ownerCall) ----

    function _ownerTag() internal pure override returns (string memory) {
        return "x402-account";
    }

    function _actionName(bytes4 selector) internal pure override returns (string memory) {
        if (selector == this.setPolicy.selector) return "setPolicy";
        if (selector == this.setToken.selector) return "setToken";
        if (selector == this.setPayee.selector) return "setPayee";
        if (selector == this.setSessionKey.selector) return "setSessionKey";
        if (selector == this.revokeSessionKey.selector) return "revokeSessionKey";
        if (selector == this.setVault.selector) return "setVault";
        if (selector == this.withdraw.selector) return "withdraw";
        if (selector == this.execute.selector) return "execute";
        revert UnknownAction();
    }

    function setPolicy(uint256 maxValue_, uint64 maxWindow_, bool payeesRestricted_) external onlySelf {
        (maxValue, maxWindow, payeesRestricted) = (maxValue_, maxWindow_, payeesRestricted_);
        emit PolicySet(maxValue_, maxWindow_, payeesRestricted_);
    }

    function setToken(address token, bool allowed) external onlySelf {
        tokenAllowed[token] = allowed;
        emit TokenAllowed(token, allowed);
    }

    function setPayee(address payee, bool allowed) external onlySelf {
        payeeAllowed[payee] = allowed;
        emit PayeeAllowed(payee, allowed);
    }

    function setSessionKey(address key, uint64 expiry) external onlySelf {
        sessionKeyExpiry[key] = expiry;
        emit SessionKeySet(key, expiry);
    }

    function revokeSessionKey(address key) external onlySelf {
        sessionKeyExpiry[key] = 0;
        emit SessionKeySet(key, 0);
    }

    function setVault(address vault_) external onlySelf {
        vault = vault_;
        emit VaultSet(vault_);
    }

    /// Move `amount` of `token` (address(0) = ETH) to `to`.
    function withdraw(address token, address to, uint256 amount) external onlySelf {
        if (token == address(0)) {
            (bool ok,) = payable(to).call{value: amount}("");
            require(ok, "ETH transfer failed");
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    /// Arbitrary call: from the EntryPoint (user operations signed by the owner) or an owner call.
    function execute(address target, uint256 value, bytes calldata data) external {
        if (msg.sender != address(_entryPoint) && msg.sender != address(this)) revert NotFromEntryPoint();
        (bool ok, bytes memory ret) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 32), mload(ret))
            }
        }
    }

    /// Pull `amount` from the allowance vault into this hot account. Anyone may trigger it: the
    /// vault only ever pays this account, at most its per-period allowance.
    function refill(uint256 amount) external {
        IAllowanceVaultPull(vault).pull(amount);
    }

    // ---- ERC-4337: user operations are signed (EIP-191 over the userOpHash) by the owner, or by a
    // live session key when all they do is `refill` (valid until the key's expiry) ----

    function _validateSignature(PackedUserOperation calldata userOp, bytes32 userOpHash)
        internal
        view
        override
        returns (uint256)
    {
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(MessageHashUtils.toEthSignedMessageHash(userOpHash), userOp.signature);
        if (err != ECDSA.RecoverError.NoError) return SIG_VALIDATION_FAILED;
        if (signer == owner) return SIG_VALIDATION_SUCCESS;
        uint64 expiry = sessionKeyExpiry[signer];
        if (expiry == 0 || userOp.callData.length < 4 || bytes4(userOp.callData[:4]) != this.refill.selector) {
            return SIG_VALIDATION_FAILED;
        }
        return _packValidationData(false, uint48(expiry), 0);
    }

    // ---- ERC-1271: session-key signed EIP-3009 payments within policy ----

    /// The EIP-3009 fields carried in the signature envelope (a static tuple: encoded inline).
    struct Authorization {
        address token;
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// `signature` = abi.encode(token, from, to, value, validAfter, validBefore, nonce, sessionSignature65).
    function isValidSignature(bytes32 digest, bytes calldata signature) external view returns (bytes4) {
        // Exactly the canonical encoding: the bytes field at offset 0x100 and 65 bytes long, so that
        // abi.decode below never reverts on malformed input (ERC-1271 answers, it does not throw).
        if (
            signature.length != ENVELOPE_LENGTH || uint256(bytes32(signature[224:256])) != 0x100
                || uint256(bytes32(signature[256:288])) != 65
        ) return ERC1271_INVALID;
        (Authorization memory auth, bytes memory sessionSig) = abi.decode(signature, (Authorization, bytes));
        if (!_withinPolicy(auth) || _authorizationDigest(auth) != digest) return ERC1271_INVALID;
        (address key, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, sessionSig);
        if (err != ECDSA.RecoverError.NoError || sessionKeyExpiry[key] <= block.timestamp) return ERC1271_INVALID;
        return ERC1271_MAGIC;
    }

    function _withinPolicy(Authorization memory auth) internal view returns (bool) {
        if (auth.from != address(this) || !tokenAllowed[auth.token] || auth.value > maxValue) return false;
        if (payeesRestricted && !payeeAllowed[auth.to]) return false;
        uint256 start = auth.validAfter > block.timestamp ? auth.validAfter : block.timestamp;
        return auth.validBefore > start && auth.validBefore - start <= maxWindow;
    }

    /// The token's EIP-712 digest of TransferWithAuthorization for these fields.
    function _authorizationDigest(Authorization memory auth) internal view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
                auth.from, auth.to, auth.value, auth.validAfter, auth.validBefore, auth.nonce
            )
        );
        return MessageHashUtils.toTypedDataHash(IEIP712Token(auth.token).DOMAIN_SEPARATOR(), structHash);
    }
}
