// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {OwnerText} from "./OwnerText.sol";

/// Owner actions authorised by a signature of the owner key, verified on chain. The owner is set
/// once, when a clone is initialised (implementations lock themselves in their constructor).
///
/// Every action is signed clear: what the device shows is rebuilt here from the call's decoded
/// arguments, so a host that swaps an argument changes the screen. The owner signs, for
/// `ownerCall(data, nonce, signature)`, either
///  (a) a Bitcoin signed message (HWI's 65-byte header||r||s) of `ownerMessage(data, nonce)`:
///      "<tag> <action>", one line per argument in words (amounts with symbol and decimals), then
///      "chain <id>", "<kind> <this>", "nonce <n>"; or
///  (b) the EIP-712 struct of that action, one typed field per argument plus the nonce (e.g.
///      Withdraw(address token,address to,uint256 amount,uint256 nonce)), under the domain
///      {name: <tag>, version: "2", chainId, verifyingContract: this}.
/// Both bind the action to this chain, this contract and the current owner nonce, which is then
/// consumed. The call is then made to `address(this)`; targets are guarded by `onlySelf`.
abstract contract OwnerCalls {
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// A device's SignMessage takes at most 1024 bytes.
    uint256 public constant MAX_MESSAGE_BYTES = 1023;

    address public owner;
    uint256 public ownerNonce;

    event OwnerCallExecuted(uint256 indexed nonce, bytes4 indexed selector);

    error NotSelf();
    error BadOwnerNonce();
    error BadOwnerSignature();
    error UnknownAction();
    error OwnerMessageTooLong(uint256 length);
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

    /// Short tag naming the contract kind, e.g. "x402-account" (the EIP-712 domain name).
    function _ownerTag() internal pure virtual returns (string memory);

    /// What the last lines call this contract, e.g. "account".
    function _ownerKind() internal pure virtual returns (string memory);

    /// One owner action in words (its name, then one line per argument) and its EIP-712 struct
    /// hash (each argument a typed field, then the nonce); reverts UnknownAction for any other
    /// selector. Adding an action is one branch here.
    function _describe(bytes calldata data, uint256 nonce)
        internal
        view
        virtual
        returns (string memory words, bytes32 structHash);

    /// The text the owner signs as a Bitcoin signed message.
    function ownerMessage(bytes calldata data, uint256 nonce) public view returns (string memory) {
        (string memory words,) = _describe(data, nonce);
        return _message(words, nonce);
    }

    function _message(string memory words, uint256 nonce) internal view returns (string memory text) {
        text = string.concat(
            _ownerTag(), " ", words, "\nchain ", OwnerText.num(block.chainid), "\n", _ownerKind(), " ",
            OwnerText.addr(address(this)), "\nnonce ", OwnerText.num(nonce)
        );
        if (bytes(text).length > MAX_MESSAGE_BYTES) revert OwnerMessageTooLong(bytes(text).length);
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

    /// The EIP-712 digest of an owner action.
    function ownerTypedDigest(bytes calldata data, uint256 nonce) public view returns (bytes32) {
        (, bytes32 structHash) = _describe(data, nonce);
        return _typedDigest(structHash);
    }

    function _typedDigest(bytes32 structHash) private view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(_ownerTag())), keccak256("2"), block.chainid, address(this))
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
        (string memory words, bytes32 structHash) = _describe(data, nonce);
        if (_recoverBitcoin(bitcoinMessageDigest(bytes(_message(words, nonce))), sig) == owner) return true;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_typedDigest(structHash), sig);
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
