// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

/// Owner actions authorised by a signature of the owner key, verified on chain. The owner is set
/// once, when a clone is initialised (implementations lock themselves in their constructor).
///
/// The owner signs, for `ownerCall(data, nonce, signature)`, either
///  (a) a Bitcoin signed message (HWI's 65-byte header||r||s) of the ASCII line
///      "<tag> <action> <keccak256(data)> nonce <nonce> chain <chainid> account <this>", or
///  (b) the EIP-712 struct OwnerCall(string action,bytes data,uint256 nonce) under the domain
///      {name: <tag>, version: "1", chainId, verifyingContract: this}.
/// Both bind the action to this chain, this contract and the current owner nonce, which is then
/// consumed. The call is then made to `address(this)`; targets are guarded by `onlySelf`.
abstract contract OwnerCalls {
    bytes32 private constant OWNER_CALL_TYPEHASH = keccak256("OwnerCall(string action,bytes data,uint256 nonce)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    address public owner;
    uint256 public ownerNonce;

    event OwnerCallExecuted(uint256 indexed nonce, bytes4 indexed selector);

    error NotSelf();
    error BadOwnerNonce();
    error BadOwnerSignature();
    error UnknownAction();
    error OwnerCallFailed(bytes reason);
    error AlreadyInitialized();

    /// Set the owner, once; a zero owner would leave the contract open to initialisation.
    function _initOwner(address owner_) internal {
        if (owner != address(0) || owner_ == address(0)) revert AlreadyInitialized();
        owner = owner_;
    }

    modifier onlySelf() {
        if (msg.sender != address(this)) revert NotSelf();
        _;
    }

    /// Short tag naming the contract kind, e.g. "x402-account".
    function _ownerTag() internal pure virtual returns (string memory);

    /// Human-readable name of an owner action; reverts with UnknownAction for other selectors.
    function _actionName(bytes4 selector) internal pure virtual returns (string memory);

    /// The ASCII line the owner signs as a Bitcoin signed message.
    function ownerMessage(bytes calldata data, uint256 nonce) public view returns (string memory) {
        return string.concat(
            _ownerTag(), " ", _actionName(bytes4(data)), " ", Strings.toHexString(uint256(keccak256(data)), 32),
            " nonce ", Strings.toString(nonce), " chain ", Strings.toString(block.chainid),
            " account ", Strings.toHexString(address(this))
        );
    }

    /// sha256(sha256("\x18Bitcoin Signed Message:\n" || varint(len) || message)).
    function bitcoinMessageDigest(bytes memory message) public pure returns (bytes32) {
        uint256 n = message.length;
        bytes memory varint;
        if (n < 0xfd) varint = abi.encodePacked(uint8(n));
        else if (n <= 0xffff) varint = abi.encodePacked(uint8(0xfd), uint8(n), uint8(n >> 8));
        else revert BadOwnerSignature(); // lines this long are never produced
        return sha256(abi.encodePacked(sha256(abi.encodePacked("\x18Bitcoin Signed Message:\n", varint, message))));
    }

    /// The EIP-712 digest of an owner call.
    function ownerTypedDigest(bytes calldata data, uint256 nonce) public view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(_ownerTag())), keccak256("1"), block.chainid, address(this))
        );
        bytes32 structHash = keccak256(
            abi.encode(OWNER_CALL_TYPEHASH, keccak256(bytes(_actionName(bytes4(data)))), keccak256(data), nonce)
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    /// Recover the signer of a 65-byte Bitcoin message signature (header || r || s).
    function _recoverBitcoin(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        uint8 header = uint8(sig[0]);
        if (header < 27 || header > 42) return address(0);
        uint8 v = ((header - 27) & 3) + 27;
        if (v > 28) return address(0); // recovery ids 2 and 3 never occur for secp256k1 in practice
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, v, bytes32(sig[1:33]), bytes32(sig[33:65]));
        return err == ECDSA.RecoverError.NoError ? signer : address(0);
    }

    function _isOwnerSignature(bytes calldata data, uint256 nonce, bytes calldata sig) internal view returns (bool) {
        if (_recoverBitcoin(bitcoinMessageDigest(bytes(ownerMessage(data, nonce))), sig) == owner) return true;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(ownerTypedDigest(data, nonce), sig);
        return err == ECDSA.RecoverError.NoError && signer == owner;
    }

    /// Run one owner action signed by the owner key. Anyone may relay it.
    function ownerCall(bytes calldata data, uint256 nonce, bytes calldata signature) external returns (bytes memory) {
        if (nonce != ownerNonce) revert BadOwnerNonce();
        if (!_isOwnerSignature(data, nonce, signature)) revert BadOwnerSignature();
        ownerNonce = nonce + 1;
        (bool ok, bytes memory ret) = address(this).call(data);
        if (!ok) revert OwnerCallFailed(ret);
        emit OwnerCallExecuted(nonce, bytes4(data));
        return ret;
    }
}
