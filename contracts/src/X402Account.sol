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
import {OwnerActionText} from "./OwnerActionText.sol";
import {IEIP712Token, IAllowanceVaultPull, IVaultFactory} from "./Interfaces.sol";

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
    OwnerActionText private immutable _text;

    uint256 public maxValue; // per payment, token atomic units
    uint64 public maxWindow; // seconds between max(validAfter, now) and validBefore
    bool public payeesRestricted;
    address public vault;
    mapping(address => bool) public tokenAllowed;
    mapping(address => bool) public payeeAllowed;
    mapping(address => uint64) public sessionKeyExpiry; // 0 = not registered or revoked

    /// Caps on the gas fields of user operations signed by a session key. Whoever submits an
    /// operation is paid its gas (the beneficiary is a handleOps argument this account never
    /// sees), so these bound what one operation can cost, and the deposit bounds the sum.
    struct GasCaps {
        uint32 verificationGasLimit;
        uint32 callGasLimit;
        uint32 preVerificationGas;
        uint64 maxFeePerGas;
        uint64 maxPriorityFeePerGas;
    }

    /// Session-key operations are paid from the EntryPoint deposit alone; `refill` tops the
    /// deposit up from this account's ETH, at most `allowance` wei per period (whole periods).
    struct GasBudget {
        uint128 allowance; // wei per period; also the level the deposit is topped up to
        uint64 period; // seconds; 0 = no top-ups
        uint64 periodStart;
        uint128 spent; // wei moved into the deposit this period
    }

    // Creation defaults: room for our own refills (a first deployment included) on a local chain
    // and on Base, fees far above either's usual; a stolen key then burns at most the deposit plus
    // 0.01 ETH per day. The owner changes them with setGasCaps and setGasAllowance.
    uint32 internal constant DEFAULT_VERIFICATION_GAS = 1_000_000;
    uint32 internal constant DEFAULT_CALL_GAS = 500_000; // the deploying refill creates the vault
    uint32 internal constant DEFAULT_PRE_VERIFICATION_GAS = 500_000;
    uint64 internal constant DEFAULT_MAX_FEE = 100 gwei;
    uint64 internal constant DEFAULT_MAX_PRIORITY_FEE = 10 gwei;
    uint128 internal constant DEFAULT_GAS_ALLOWANCE = 0.01 ether;
    uint64 internal constant DEFAULT_GAS_PERIOD = 1 days;

    /// `gasBudget.periodStart` between the deploying operation's validation and the first top-up.
    uint64 public constant FIRST_PERIOD = type(uint64).max;

    GasCaps public gasCaps;
    GasBudget public gasBudget;
    /// The owner-approved spending policy of the agent (sha256 of its canonical document) and its
    /// version: the agent pays only under the policy anchored here, so restoring older files on
    /// the host cannot bring an older policy back.
    bytes32 public policyDigest;
    uint64 public policyVersion; // 0 = never anchored

    /// What the factory needs to create this account's vault, kept when the account was created
    /// alone: a user operation's initCode may CREATE2 only the sender and write only its storage
    /// (ERC-7562 OP-031, STO-010), so the vault is created by the first `refill`, in execution.
    struct PendingVault {
        bytes32 salt; // the factory's clone salt (which commits to the whole configuration)
        address factory;
        uint64 period;
        address token;
        uint128 allowance;
    }

    PendingVault public pendingVault; // salt 0: none (the vault was created with the account)

    event PolicySet(uint256 maxValue, uint64 maxWindow, bool payeesRestricted);
    event TokenAllowed(address indexed token, bool allowed);
    event PayeeAllowed(address indexed payee, bool allowed);
    event SessionKeySet(address indexed key, uint64 expiry);
    event VaultSet(address indexed vault);
    event PolicyAnchorSet(bytes32 digest, uint64 version);

    error NotFromEntryPoint();

    event GasCapsSet(GasCaps caps);
    event GasAllowanceSet(uint128 allowance, uint64 period);
    event GasDeposited(uint256 amount, uint128 spent);
    /// A policy anchor whose version does not exceed the anchored one (versions only rise).
    error StalePolicyAnchor(uint64 anchored);
    /// A session-key expiry beyond 48 bits: user-operation validation packs it as a uint48.
    error ExpiryOutOfRange(uint256 expiry);
    /// A rotation to the key it revokes, or to no key.
    error BadRotation();

    /// The implementation behind the clones: locked, never initialised.
    constructor(IEntryPoint entryPoint_, OwnerActionText text_) {
        (_entryPoint, _text) = (entryPoint_, text_);
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
        uint64 maxWindow_,
        address[] calldata payees,
        PendingVault calldata pending
    ) external {
        _initOwner(owner_);
        if (pending.salt != 0) pendingVault = pending;
        _setGasCaps(GasCaps(
            DEFAULT_VERIFICATION_GAS, DEFAULT_CALL_GAS, DEFAULT_PRE_VERIFICATION_GAS, DEFAULT_MAX_FEE,
            DEFAULT_MAX_PRIORITY_FEE
        ));
        _setGasAllowance(DEFAULT_GAS_ALLOWANCE, DEFAULT_GAS_PERIOD);
        // A payee list at creation restricts payments to it from the first one on.
        bool restricted = payees.length > 0;
        (maxValue, maxWindow, payeesRestricted, vault) = (maxValue_, maxWindow_, restricted, vault_);
        tokenAllowed[token] = true;
        emit PolicySet(maxValue_, maxWindow_, restricted);
        emit TokenAllowed(token, true);
        for (uint256 i = 0; i < payees.length; ++i) {
            payeeAllowed[payees[i]] = true;
            emit PayeeAllowed(payees[i], true);
        }
        _setSessionKey(sessionKey, sessionExpiry);
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

    function _ownerKind() internal pure override returns (string memory) {
        return "account";
    }

    /// See OwnerCalls._describe; the words are built by the shared OwnerActionText contract (this
    /// contract alone would exceed the code size limit).
    function _describe(bytes calldata data, uint256 nonce) internal view override returns (string memory, bytes32) {
        return _text.describeAccount(data, nonce, vault);
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
        _setSessionKey(key, expiry);
    }

    function revokeSessionKey(address key) external onlySelf {
        _setSessionKey(key, 0);
    }

    /// Replace `oldKey` by `newKey` in one owner action (one device screen): there is no moment
    /// at which the old key is still live after the owner has signed its replacement.
    function rotateSessionKey(address newKey, uint64 expiry, address oldKey) external onlySelf {
        if (newKey == address(0) || newKey == oldKey || expiry <= block.timestamp) revert BadRotation();
        _setSessionKey(newKey, expiry);
        _setSessionKey(oldKey, 0);
    }

    function _setSessionKey(address key, uint64 expiry) internal {
        if (expiry > type(uint48).max) revert ExpiryOutOfRange(expiry);
        sessionKeyExpiry[key] = expiry;
        emit SessionKeySet(key, expiry);
    }

    function setPolicyAnchor(bytes32 digest, uint64 version) external onlySelf {
        if (version <= policyVersion) revert StalePolicyAnchor(policyVersion);
        (policyDigest, policyVersion) = (digest, version);
        emit PolicyAnchorSet(digest, version);
    }

    /// The anchored policy in one read (the agent checks it before each payment).
    function policyAnchor() external view returns (bytes32 digest, uint64 version) {
        return (policyDigest, policyVersion);
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

    /// Caps on the gas fields of session-key user operations (checked in validation).
    function setGasCaps(
        uint32 verificationGasLimit,
        uint32 callGasLimit,
        uint32 preVerificationGas,
        uint64 maxFeePerGas,
        uint64 maxPriorityFeePerGas
    ) external onlySelf {
        _setGasCaps(GasCaps(verificationGasLimit, callGasLimit, preVerificationGas, maxFeePerGas, maxPriorityFeePerGas));
    }

    /// The ETH `refill` may move into the EntryPoint deposit per period (what a stolen session key
    /// can burn per period, beyond the deposit it finds).
    function setGasAllowance(uint128 allowance, uint64 period) external onlySelf {
        _setGasAllowance(allowance, period);
    }

    function _setGasCaps(GasCaps memory caps) internal {
        gasCaps = caps;
        emit GasCapsSet(caps);
    }

    function _setGasAllowance(uint128 allowance, uint64 period) internal {
        (gasBudget.allowance, gasBudget.period) = (allowance, period);
        emit GasAllowanceSet(allowance, period);
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

    /// Pull `amount` (0: none) from the allowance vault into this hot account, then top up the
    /// EntryPoint deposit. Anyone may trigger it: the vault only ever pays this account, at most
    /// its per-period allowance, and the deposit stays this account's (the owner can withdraw it).
    function refill(uint256 amount) external {
        if (pendingVault.salt != 0) _createVault();
        if (amount != 0) IAllowanceVaultPull(vault).pull(amount);
        _approvePermit2();
        _topUpDeposit();
    }

    /// Have the factory create the vault this account was created without (once: the factory
    /// creates it only for the account its salt gives, with what the factory stored here).
    function _createVault() internal {
        PendingVault memory p = pendingVault;
        delete pendingVault;
        IVaultFactory(p.factory).createVault(p.salt, owner, IERC20(p.token), p.allowance, p.period);
    }

    /// Set Permit2's allowance over the vault's token to the vault's per-period allowance (0 once
    /// the owner disallows the token). This fixed path is the only way a session key's operation
    /// approves anything, and it never grants more than one period's allowance: together with
    /// the ERC-1271 bounds below, what Permit2 can move stays within the hot balance, which only
    /// vault pulls (at most the allowance per period) refill.
    function _approvePermit2() internal {
        IAllowanceVaultPull source = IAllowanceVaultPull(vault);
        // No vault (the owner may detach it): refill still tops up the gas deposit.
        if (address(source).code.length == 0) return;
        IERC20 token = source.token();
        uint256 bound = tokenAllowed[address(token)] ? source.allowance() : 0;
        if (token.allowance(address(this), PERMIT2) != bound) token.forceApprove(PERMIT2, bound);
    }

    /// Move this account's ETH into its EntryPoint deposit, up to `gasBudget.allowance` in the
    /// deposit and at most that much per period in all. This runs in execution, where the clock
    /// may be read (validation may not: ERC-7562), so the per-period budget lives here.
    function _topUpDeposit() internal {
        GasBudget memory budget = gasBudget;
        if (budget.period == 0) return;
        if (budget.periodStart == FIRST_PERIOD) {
            // The deploying operation's prefund counts against the period it ran in.
            budget.periodStart = uint64(block.timestamp - block.timestamp % budget.period);
        } else if (block.timestamp >= uint256(budget.periodStart) + budget.period) {
            // Lazy reset to the start of the current whole period (as the vault does).
            budget.periodStart = uint64(block.timestamp - (block.timestamp - budget.periodStart) % budget.period);
            budget.spent = 0;
        }
        uint256 deposit = _entryPoint.balanceOf(address(this));
        if (deposit >= budget.allowance || budget.spent >= budget.allowance) return;
        uint256 amount = budget.allowance - deposit;
        if (amount > budget.allowance - budget.spent) amount = budget.allowance - budget.spent;
        if (amount > address(this).balance) amount = address(this).balance;
        if (amount == 0) return;
        budget.spent += uint128(amount);
        gasBudget = budget;
        _entryPoint.depositTo{value: amount}(address(this));
        emit GasDeposited(amount, budget.spent);
    }

    // ---- ERC-4337: user operations are signed (EIP-191 over the userOpHash) by the owner, or by a
    // live session key when all they do is `refill` (valid until the key's expiry) ----
    //
    // What a stolen session key can burn: its operations pay gas only from the EntryPoint deposit
    // (never from this account's ETH), and only `refill` adds to the deposit, by at most
    // gasBudget.allowance per period. Between the theft and the key's revocation t seconds later:
    //   ETH lost <= deposit + (allowance - spent this period) + allowance * ceil(t / period)
    // whoever the beneficiary: handleOps pays it, and this account never sees who it is.
    // Validation reads only this account's storage and never the clock (ERC-7562, unstaked).

    /// As BaseAccount's, but a session key's operation never pays a prefund out of this account's
    /// ETH: it must be covered by the deposit already (missingAccountFunds == 0).
    function validateUserOp(PackedUserOperation calldata userOp, bytes32 userOpHash, uint256 missingAccountFunds)
        external
        override
        returns (uint256 validationData)
    {
        _requireFromEntryPoint();
        validationData = _validateSignature(userOp, userOpHash);
        _validateNonce(userOp.nonce);
        // A session key's valid operation carries its expiry as validUntil (never 0: an expiry of
        // 0 is no key, and _setSessionKey keeps it in 48 bits), so it is neither the owner's
        // SUCCESS nor FAILED; it must be covered by the deposit already. The others pay as in
        // BaseAccount: a failed signature's payment is undone (the EntryPoint then reverts the
        // whole handleOps), and bundlers estimate gas with a dummy signature that needs it.
        if (validationData > SIG_VALIDATION_FAILED && missingAccountFunds != 0) {
            // Except the operation that deploys this account (initCode: once per account ever),
            // which may pay from its ETH at most one allowance, counted in its period.
            if (userOp.initCode.length == 0 || !_chargeDeployment(missingAccountFunds)) return SIG_VALIDATION_FAILED;
        }
        _payPrefund(missingAccountFunds);
    }

    /// Count the deploying operation's prefund as the first period's spending; the period itself
    /// starts in `refill`'s execution, where the clock may be read.
    function _chargeDeployment(uint256 amount) internal returns (bool) {
        GasBudget memory budget = gasBudget;
        if (budget.periodStart != 0 || amount > budget.allowance) return false;
        (gasBudget.periodStart, gasBudget.spent) = (FIRST_PERIOD, uint128(amount));
        return true;
    }

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
        if (
            expiry == 0 || userOp.callData.length < 4 || bytes4(userOp.callData[:4]) != this.refill.selector
                || !_withinGasCaps(userOp)
        ) {
            return SIG_VALIDATION_FAILED;
        }
        return _packValidationData(false, uint48(expiry), 0);
    }

    /// No paymaster (its gas limits and postOp would escape the caps) and every gas field capped.
    function _withinGasCaps(PackedUserOperation calldata userOp) internal view returns (bool) {
        GasCaps memory caps = gasCaps;
        uint256 limits = uint256(userOp.accountGasLimits); // verificationGasLimit << 128 | callGasLimit
        uint256 fees = uint256(userOp.gasFees); // maxPriorityFeePerGas << 128 | maxFeePerGas
        return userOp.paymasterAndData.length == 0 && limits >> 128 <= caps.verificationGasLimit
            && uint128(limits) <= caps.callGasLimit && userOp.preVerificationGas <= caps.preVerificationGas
            && fees >> 128 <= caps.maxPriorityFeePerGas && uint128(fees) <= caps.maxFeePerGas;
    }

    // ---- ERC-1271: session-key signed payments within policy (EIP-3009, or Permit2 through an
    // x402 proxy) ----

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

    /// `signature` = abi.encode(token, from, to, value, validAfter, validBefore, nonce, sessionSignature65)
    /// for EIP-3009, or the 321-byte Permit2 envelope (see _permit2Signature).
    function isValidSignature(bytes32 digest, bytes calldata signature) external view returns (bytes4) {
        if (signature.length > SIGN_IN_HEAD && bytes32(signature[0:32]) == SIGN_IN_TAG) {
            return _signInSignature(digest, signature);
        }
        if (signature.length == PERMIT2_ENVELOPE_LENGTH) return _permit2Signature(digest, signature);
        // Exactly the canonical encoding: the bytes field at offset 0x100 and 65 bytes long, so that
        // abi.decode below never reverts on malformed input (ERC-1271 answers, it does not throw).
        if (
            signature.length != ENVELOPE_LENGTH || uint256(bytes32(signature[224:256])) != 0x100
                || uint256(bytes32(signature[256:288])) != 65
        ) return ERC1271_INVALID;
        (Authorization memory auth, bytes memory sessionSig) = abi.decode(signature, (Authorization, bytes));
        if (!_withinPolicy(auth) || _authorizationDigest(auth) != digest) return ERC1271_INVALID;
        return _sessionSigned(digest, sessionSig);
    }

    // ---- Sign-in (sign-in-with-x): the account signs in to what it already paid for ----
    //
    // A server that sold access to this account lets it in on an EIP-4361 message and checks the
    // signature through ERC-1271 on the message's EIP-191 hash. Envelope: SIGN_IN_TAG (32 bytes),
    // the session key's signature (65), the message. Accepted only when `digest` is the EIP-191
    // hash of that message and the message is a sign-in as this account (its first line ends
    // "wants you to sign in with your Ethereum account:", its second line is this address). An
    // EIP-191 hash is never the EIP-712 digest of a token transfer, permit or Permit2 transfer, so
    // a session key can sign in this way but never pay or approve. As for Permit2, the key signs
    // keccak256(abi.encode(thisAccount, digest)). The tag's high bytes are not an address's zero
    // padding, so no payment envelope starts with it.
    bytes32 internal constant SIGN_IN_TAG = keccak256("x402-agent sign-in envelope v1");
    uint256 internal constant SIGN_IN_HEAD = 32 + 65;
    bytes internal constant SIGN_IN_PHRASE = " wants you to sign in with your Ethereum account:\n";

    function _signInSignature(bytes32 digest, bytes calldata signature) internal view returns (bytes4) {
        bytes calldata message = signature[SIGN_IN_HEAD:];
        if (MessageHashUtils.toEthSignedMessageHash(message) != digest || !_signsInAsThis(message)) {
            return ERC1271_INVALID;
        }
        return _sessionSigned(keccak256(abi.encode(address(this), digest)), signature[32:SIGN_IN_HEAD]);
    }

    /// The message's first line is "<domain> wants you to sign in with your Ethereum account:" and
    /// its second this account's address (0x and 40 hex digits, any case).
    function _signsInAsThis(bytes calldata m) internal view returns (bool) {
        bytes memory phrase = SIGN_IN_PHRASE;
        uint256 i; // the first line break, the phrase's last byte
        while (i < m.length && m[i] != "\n") ++i;
        if (i < phrase.length || m.length <= i + 43 || m[i + 43] != "\n") return false;
        if (keccak256(m[i + 1 - phrase.length:i + 1]) != keccak256(phrase)) return false;
        if (m[i + 1] != "0" || m[i + 2] != "x") return false;
        uint160 account = uint160(address(this));
        for (uint256 k = 0; k < 40; ++k) {
            uint8 c = uint8(m[i + 42 - k]) | 0x20; // lowest nibble first; letters lower-cased
            uint8 digit = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : 0xff;
            if (digit != account & 0xf) return false;
            account >>= 4;
        }
        return true;
    }

    /// MAGIC when a live session key signed `hash`.
    function _sessionSigned(bytes32 hash, bytes memory sessionSig) internal view returns (bytes4) {
        (address key, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, sessionSig);
        if (err != ECDSA.RecoverError.NoError || sessionKeyExpiry[key] <= block.timestamp) return ERC1271_INVALID;
        return ERC1271_MAGIC;
    }

    function _withinPolicy(Authorization memory auth) internal view returns (bool) {
        if (auth.from != address(this)) return false;
        return _paymentWithinPolicy(auth.token, auth.value, auth.to, auth.validAfter, auth.validBefore);
    }

    /// The bounds every payment shares, whatever signs it over: token, per-payment cap, payee,
    /// and a window (from max(validAfter, now) to its end) of at most maxWindow.
    function _paymentWithinPolicy(address token, uint256 value, address to, uint256 validAfter, uint256 end)
        internal
        view
        returns (bool)
    {
        if (!tokenAllowed[token] || value > maxValue) return false;
        if (payeesRestricted && !payeeAllowed[to]) return false;
        uint256 start = validAfter > block.timestamp ? validAfter : block.timestamp;
        return end > start && end - start <= maxWindow;
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

    // ---- Permit2: PermitWitnessTransferFrom signed by a session key, spent by an x402 proxy ----
    //
    // Permit2 asks this account (ERC-1271) about the EIP-712 digest it built from the permit, the
    // spender (its caller) and the witness. The envelope carries those fields, so the account checks
    // them against its policy and rebuilds the digest: the spender must be the x402 exact or upto
    // proxy (which pay only the witness's payee), so a thief calling Permit2 as spender gets a
    // digest no envelope within policy matches. Permit2's digest does not name the owner, so the
    // session key signs keccak256(abi.encode(thisAccount, digest)): a key registered on two
    // accounts cannot have one account's permit spent from the other.
    //
    // Envelope (321 bytes, read by slicing so any input answers instead of reverting):
    //   token, amount, spender, nonce, deadline, to, facilitator (0 for exact), validAfter: one
    //   32-byte word each; then the session key's 65-byte signature (r || s || v).

    /// The canonical addresses (the same on every chain; x402.mechanisms.evm.constants).
    address internal constant PERMIT2 = 0x000000000022D473030F116dDEE9F6B43aC78BA3;
    address internal constant EXACT_PROXY = 0x402085c248EeA27D92E8b30b2C58ed07f9E20001;
    address internal constant UPTO_PROXY = 0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002;
    uint256 internal constant PERMIT2_ENVELOPE_LENGTH = 8 * 32 + 65;
    bytes32 internal constant PERMIT2_DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)");
    bytes32 internal constant TOKEN_PERMISSIONS_TYPEHASH = keccak256("TokenPermissions(address token,uint256 amount)");
    // The witness types exactly as the SDK signs them (PERMIT2_WITNESS_TYPES, UPTO_PERMIT2_WITNESS_TYPES).
    bytes32 internal constant EXACT_WITNESS_TYPEHASH = keccak256("Witness(address to,uint256 validAfter)");
    bytes32 internal constant EXACT_PERMIT_TYPEHASH = keccak256(
        "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)"
    );
    bytes32 internal constant UPTO_WITNESS_TYPEHASH =
        keccak256("Witness(address to,address facilitator,uint256 validAfter)");
    bytes32 internal constant UPTO_PERMIT_TYPEHASH = keccak256(
        "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)"
    );

    struct Permit2Payment {
        address token;
        uint256 amount;
        address spender;
        uint256 nonce;
        uint256 deadline;
        address to;
        address facilitator;
        uint256 validAfter;
    }

    function _permit2Signature(bytes32 digest, bytes calldata envelope) internal view returns (bytes4) {
        Permit2Payment memory p = Permit2Payment(
            _addressAt(envelope, 0), _wordAt(envelope, 1), _addressAt(envelope, 2), _wordAt(envelope, 3),
            _wordAt(envelope, 4), _addressAt(envelope, 5), _addressAt(envelope, 6), _wordAt(envelope, 7)
        );
        bool upto = p.spender == UPTO_PROXY;
        // Exact's witness has no facilitator: a nonzero one would be a second encoding of one permit.
        if (!(upto || (p.spender == EXACT_PROXY && p.facilitator == address(0)))) return ERC1271_INVALID;
        if (!_paymentWithinPolicy(p.token, p.amount, p.to, p.validAfter, p.deadline)) return ERC1271_INVALID;
        if (_permit2Digest(p, upto) != digest) return ERC1271_INVALID;
        return _sessionSigned(keccak256(abi.encode(address(this), digest)), envelope[256:]);
    }

    function _wordAt(bytes calldata data, uint256 index) internal pure returns (uint256) {
        return uint256(bytes32(data[index * 32:index * 32 + 32]));
    }

    /// A word that is not a clean address is refused by making it one that no policy allows.
    function _addressAt(bytes calldata data, uint256 index) internal pure returns (address) {
        uint256 word = _wordAt(data, index);
        return word >> 160 == 0 ? address(uint160(word)) : address(0);
    }

    /// Permit2's EIP-712 digest of PermitWitnessTransferFrom (SignatureTransfer.permitWitnessTransferFrom
    /// with PermitHash.hashWithWitness) for the x402 proxy's witness.
    function _permit2Digest(Permit2Payment memory p, bool upto) internal view returns (bytes32) {
        bytes32 witness = upto
            ? keccak256(abi.encode(UPTO_WITNESS_TYPEHASH, p.to, p.facilitator, p.validAfter))
            : keccak256(abi.encode(EXACT_WITNESS_TYPEHASH, p.to, p.validAfter));
        bytes32 structHash = keccak256(
            abi.encode(
                upto ? UPTO_PERMIT_TYPEHASH : EXACT_PERMIT_TYPEHASH,
                keccak256(abi.encode(TOKEN_PERMISSIONS_TYPEHASH, p.token, p.amount)),
                p.spender, p.nonce, p.deadline, witness
            )
        );
        bytes32 domain = keccak256(abi.encode(PERMIT2_DOMAIN_TYPEHASH, keccak256("Permit2"), block.chainid, PERMIT2));
        return MessageHashUtils.toTypedDataHash(domain, structHash);
    }
}
