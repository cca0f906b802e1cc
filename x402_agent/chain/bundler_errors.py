"""A bundler's refusal in words: the ERC-7769 JSON-RPC error codes and the EntryPoint's AAxx codes.

Bundlers answer a refused user operation with a JSON-RPC error whose ``code`` says which rule it
broke (ERC-7769) and whose ``message`` usually quotes the EntryPoint's ``FailedOp`` reason
(``AA24 signature error``). Both are explained here for the user; the provider's own wording
stays in the error's details.
"""

from __future__ import annotations

import re

from ..reasons import Reason

# ERC-7769 error codes, and -32602 (JSON-RPC invalid params: bundlers use it for a field they
# refuse, e.g. a gas price below their minimum).
_BY_CODE: dict[int, Reason] = {
    -32500: Reason.BUNDLER_VALIDATION_REVERTED,
    -32501: Reason.BUNDLER_PAYMASTER_REJECTED,
    -32502: Reason.BUNDLER_RULES_VIOLATED,
    -32503: Reason.BUNDLER_TIME_RANGE,
    -32504: Reason.BUNDLER_THROTTLED,
    -32505: Reason.BUNDLER_STAKE_TOO_LOW,
    -32506: Reason.BUNDLER_AGGREGATOR,
    -32507: Reason.BUNDLER_SIGNATURE_INVALID,
    -32602: Reason.BUNDLER_INVALID_FIELDS,
}

# EntryPoint v0.7 FailedOp reasons (the "AAxx" prefix is stable across versions).
ENTRY_POINT_CODES: dict[str, str] = {
    "AA10": "the account is already deployed but the operation carries initCode",
    "AA13": "deploying the account (initCode) failed or ran out of verification gas",
    "AA14": "the factory deployed an account at another address than the sender",
    "AA15": "the factory did not deploy the account",
    "AA20": "the account is not deployed and the operation carries no initCode",
    "AA21": "the account's EntryPoint deposit (or ETH) did not pay the operation's prefund",
    "AA22": "the operation is expired or not valid yet (the session key's expiry)",
    "AA23": "the account's validation reverted",
    "AA24": "the account refused the signature (wrong key, or a gas field above its caps)",
    "AA25": "the operation's nonce is not the account's next one (already used?)",
    "AA26": "validation used more than the operation's verificationGasLimit",
    "AA30": "the paymaster is not deployed",
    "AA31": "the paymaster's deposit is too low",
    "AA32": "the paymaster's approval is expired or not valid yet",
    "AA33": "the paymaster's validation reverted",
    "AA34": "the paymaster refused the signature",
    "AA36": "the paymaster used more than its verification gas limit",
    "AA40": "validation used more than the operation's verificationGasLimit",
    "AA41": "the verificationGasLimit is too low for validation",
    "AA50": "the paymaster's postOp reverted",
    "AA51": "the prefund is below the gas the operation actually used",
    "AA90": "the bundler named no beneficiary",
    "AA91": "the EntryPoint could not pay the beneficiary",
    "AA92": "internal call only",
    "AA93": "the paymasterAndData field is malformed",
    "AA94": "a gas value is out of range",
    "AA95": "the bundle ran out of gas",
    "AA96": "the aggregator is invalid",
}
_AA = re.compile(r"\bAA\d\d\b")


def entry_point_words(text: str | None) -> str | None:
    """What the EntryPoint's ``AAxx`` code in ``text`` means, e.g. ``AA24: the account refused
    the signature (...)``; None when ``text`` names no known code."""
    found = _AA.search(text or "")
    if found is None or found.group() not in ENTRY_POINT_CODES:
        return None
    return f"{found.group()}: {ENTRY_POINT_CODES[found.group()]}"


def explain(code: object, message: str) -> tuple[Reason, str]:
    """The reason and the words for a bundler's JSON-RPC error: the code's meaning, and the
    EntryPoint's when the message quotes an AAxx code."""
    reason = _BY_CODE.get(code, Reason.BUNDLER_REJECTED) if isinstance(code, int) else Reason.BUNDLER_REJECTED
    words = reason.message
    entry_point = entry_point_words(message)
    return reason, f"{words}: {entry_point}" if entry_point else words


__all__ = ["ENTRY_POINT_CODES", "entry_point_words", "explain"]
