// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

// Test-only (tests/test_erc7562.py): accounts whose validateUserOp each breaks one ERC-7562 rule,
// or keeps to them while reading associated storage, so that the checker is seen to fail and to
// tell associated storage from foreign storage. Self-contained: the v0.7 struct is restated.

struct PackedUserOperation {
    address sender;
    uint256 nonce;
    bytes initCode;
    bytes callData;
    bytes32 accountGasLimits;
    uint256 preVerificationGas;
    bytes32 gasFees;
    bytes paymasterAndData;
    bytes signature;
}

interface IToken {
    function balanceOf(address holder) external view returns (uint256);
    function totalSupply() external view returns (uint256);
}

/// A plain token ledger (no proxy: a proxy's implementation slot is foreign storage too).
contract Erc7562Ledger is IToken {
    mapping(address => uint256) public balanceOf;
    uint256 public totalSupply = 1;
}

contract Erc7562Probe {
    enum Mode {
        CLOCK, // reads block.timestamp (OP-011)
        FOREIGN_STORAGE, // reads the token's total supply: storage of another contract (STO-033)
        ASSOCIATED_STORAGE, // reads its own token balance: keccak(sender || slot), allowed (STO-021)
        GAS_LEFT, // reads gasleft() (OP-012)
        VALUE_CALL, // sends ETH to a contract other than the EntryPoint, itself (OP-061)
        OUT_OF_GAS // a call inside validation runs out of gas (OP-020)
    }

    Mode public immutable mode;
    address public immutable token;
    uint256 public burnt;

    constructor(Mode mode_, address token_) payable {
        (mode, token) = (mode_, token_);
    }

    function validateUserOp(PackedUserOperation calldata, bytes32, uint256 missingAccountFunds)
        external
        returns (uint256 validationData)
    {
        Mode m = mode;
        if (m == Mode.CLOCK) {
            validationData = block.timestamp == 0 ? 1 : 0;
        } else if (m == Mode.FOREIGN_STORAGE) {
            validationData = IToken(token).totalSupply() == 0 ? 1 : 0;
        } else if (m == Mode.ASSOCIATED_STORAGE) {
            validationData = IToken(token).balanceOf(address(this)) == type(uint256).max ? 1 : 0;
        } else if (m == Mode.GAS_LEFT) {
            validationData = gasleft() == 0 ? 1 : 0;
        } else if (m == Mode.VALUE_CALL) {
            (bool sent,) = payable(address(this)).call{value: 1}("");
            validationData = sent ? 0 : 0;
        } else {
            (bool done,) = address(this).call{gas: 30_000}(abi.encodeCall(this.burn, ()));
            validationData = done ? 0 : 0;
        }
        if (missingAccountFunds != 0) {
            (bool paid,) = payable(msg.sender).call{value: missingAccountFunds}("");
            paid;
        }
    }

    /// Writes storage until the gas runs out.
    function burn() external {
        for (uint256 i = 1; i < 1000; ++i) burnt = i;
    }

    receive() external payable {}
}
