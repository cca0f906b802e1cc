// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.23;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

/// Words for the owner's device screen, built on chain from an action's arguments (and mirrored
/// by x402_agent/chain/owner_text.py, byte for byte): addresses in full lowercase hex, amounts
/// with the token's decimals and symbol, dates in UTC.
library OwnerText {
    uint256 internal constant MAX_SYMBOL_LENGTH = 11;
    uint256 internal constant MAX_DECIMALS = 36;
    uint256 internal constant LAST_DATE = 253402300799; // 9999-12-31 23:59:59 UTC

    function addr(address a) internal pure returns (string memory) {
        return hexBytes(abi.encodePacked(a));
    }

    function num(uint256 n) internal pure returns (string memory) {
        return Strings.toString(n);
    }

    function yesNo(bool b) internal pure returns (string memory) {
        return b ? "yes" : "no";
    }

    /// "0x" and every byte in lowercase hex (a byte at a time in assembly: the Solidity loop with
    /// its bounds checks cost about four times as much gas, paid for every address shown).
    function hexBytes(bytes memory b) internal pure returns (string memory) {
        bytes memory out = new bytes(2 + 2 * b.length);
        assembly ("memory-safe") {
            let digits := "0123456789abcdef"
            let dst := add(out, 32)
            mstore8(dst, 0x30) // "0"
            mstore8(add(dst, 1), 0x78) // "x"
            dst := add(dst, 2)
            let src := add(b, 32)
            for { let i := 0 } lt(i, mload(b)) { i := add(i, 1) } {
                let v := byte(0, mload(add(src, i)))
                mstore8(add(dst, mul(i, 2)), byte(shr(4, v), digits))
                mstore8(add(dst, add(mul(i, 2), 1)), byte(and(v, 15), digits))
            }
        }
        return string(out);
    }

    /// `value` in whole units with every decimal written out, e.g. 16000000 at 6 -> "16.000000".
    function units(uint256 value, uint256 decimals) internal pure returns (string memory) {
        if (decimals == 0) return num(value);
        uint256 base = 10 ** decimals;
        bytes memory frac = bytes(num(value % base));
        bytes memory pad = new bytes(decimals - frac.length);
        for (uint256 i = 0; i < pad.length; ++i) {
            pad[i] = "0";
        }
        return string.concat(num(value / base), ".", string(pad), string(frac));
    }

    /// The token's symbol and decimals when it names itself plainly: a symbol of 1-11 letters,
    /// digits, '.' or '-' (nothing that could forge another line on the screen) and at most 36
    /// decimals. Anything else (no code, a revert, odd return data) is not named.
    function metadata(address token) internal view returns (bool named, string memory symbol, uint256 decimals) {
        if (token.code.length == 0) return (false, "", 0);
        (bool okSymbol, bytes memory s) = token.staticcall(abi.encodeWithSignature("symbol()"));
        (bool okDecimals, bytes memory d) = token.staticcall(abi.encodeWithSignature("decimals()"));
        if (!okSymbol || !okDecimals || s.length != 96 || d.length != 32) return (false, "", 0);
        (uint256 offset, uint256 length, bytes32 text) = abi.decode(s, (uint256, uint256, bytes32));
        decimals = abi.decode(d, (uint256));
        if (offset != 32 || length == 0 || length > MAX_SYMBOL_LENGTH || decimals > MAX_DECIMALS) {
            return (false, "", 0);
        }
        bytes memory chars = new bytes(length);
        for (uint256 i = 0; i < length; ++i) {
            bytes1 c = text[i];
            bool plain = (c >= "A" && c <= "Z") || (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "."
                || c == "-";
            if (!plain) return (false, "", 0);
            chars[i] = c;
        }
        return (true, string(chars), decimals);
    }

    /// "16.000000 USDC" for a named token, "16000000 units" otherwise; address(0) is ETH.
    function amount(address token, uint256 value) internal view returns (string memory) {
        if (token == address(0)) return string.concat(units(value, 18), " ETH");
        (bool named, string memory symbol, uint256 decimals) = metadata(token);
        if (!named) return string.concat(num(value), " units");
        return string.concat(units(value, decimals), " ", symbol);
    }

    /// "1765000000 (2025-12-06 05:46:40 UTC)"; beyond year 9999 the number alone.
    function time(uint256 t) internal pure returns (string memory) {
        if (t > LAST_DATE) return num(t);
        (uint256 y, uint256 m, uint256 d) = _civil(t / 86400);
        uint256 s = t % 86400;
        string memory date = string.concat(num(y), "-", _two(m), "-", _two(d));
        string memory clock = string.concat(_two(s / 3600), ":", _two((s / 60) % 60), ":", _two(s % 60));
        return string.concat(num(t), " (", date, " ", clock, " UTC)");
    }

    function _two(uint256 n) private pure returns (string memory) {
        return n < 10 ? string.concat("0", num(n)) : num(n);
    }

    /// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
    function _civil(uint256 days_) private pure returns (uint256 y, uint256 m, uint256 d) {
        uint256 z = days_ + 719468;
        uint256 era = z / 146097;
        uint256 doe = z - era * 146097;
        uint256 yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        uint256 doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        uint256 mp = (5 * doy + 2) / 153;
        d = doy - (153 * mp + 2) / 5 + 1;
        m = mp < 10 ? mp + 3 : mp - 9;
        y = yoe + era * 400 + (m <= 2 ? 1 : 0);
    }
}
