"""Check what the server says it settled, and what the chain says was settled: the parts every
scheme shares. What a scheme signed (payer, amount, its on-chain authorization id) is checked by
its module in ``schemes``.

The server's PAYMENT-RESPONSE (v2) or X-PAYMENT-RESPONSE (v1) is decoded with the SDK codec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from eth_utils.crypto import keccak
from pydantic import ValidationError
from x402.http import (
    PAYMENT_RESPONSE_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    decode_payment_response_header,
)
from x402.schemas import SettleResponse

from .errors import SettlementMismatch
from .networks import caip2
from .reasons import Reason

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
MAX_SETTLEMENT_HEADER = 8 * 1024


def read_settlement_header(headers: Mapping[str, str], version: int) -> SettleResponse | None:
    """The server's settle response, None if absent; undecodable counts as absent evidence."""
    name = PAYMENT_RESPONSE_HEADER if version >= 2 else X_PAYMENT_RESPONSE_HEADER
    value = headers.get(name) or headers.get(name.lower())
    if value is None or len(value) > MAX_SETTLEMENT_HEADER:
        return None
    try:
        return decode_payment_response_header(value)
    except (ValueError, UnicodeError, TypeError, ValidationError):
        return None


def check_settlement(
    response: SettleResponse, payer: str, network: str, amount_problem: str | None, *, moved: bool = True
) -> str:
    """The settle response must describe our payment: success, payer, network, amount (judged
    by the scheme: ``amount_problem``), transaction. Returns the transaction hash; a settlement
    that moved nothing (``moved`` False: an upto settled at 0) has none, and returns ""."""
    problems = []
    if not response.success:
        problems.append(f"settlement failed: {response.error_reason}")
    if response.payer and response.payer.lower() != payer.lower():
        problems.append("payer differs from the signer")
    if caip2(response.network) != network:
        problems.append(f"network {response.network!r} differs from {network!r}")
    if amount_problem is not None:
        problems.append(amount_problem)
    if not moved and response.transaction:
        problems.append("a transaction for a settlement of nothing")
    elif moved and not _TX_HASH.fullmatch(response.transaction or ""):
        problems.append("no valid transaction hash")
    if problems:
        raise SettlementMismatch("; ".join(problems), evidence=response.model_dump(by_alias=True))
    return response.transaction


def check_moved(moved: int, stated: int | None, tx: str | None) -> None:
    """The chain's amount must be the one the server stated as settled (upto may settle less
    than the maximum: the receipt check returns what moved, this compares it)."""
    if stated is not None and moved != stated:
        raise SettlementMismatch(
            f"the settlement transaction moved {moved}, the server stated {stated}",
            reason=Reason.SETTLED_AMOUNT_MISMATCH,
            tx=tx,
            moved=str(moved),
            stated=str(stated),
        )


def topic_address(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


def receipt_logs(receipt: Mapping[str, Any], emitter: str) -> list[Mapping[str, Any]]:
    """The logs ``emitter`` wrote in a successful transaction (a reverted one is a mismatch)."""
    if receipt.get("status") != "0x1":
        raise SettlementMismatch(
            "settlement transaction reverted",
            reason=Reason.SETTLEMENT_REVERTED,
            tx=receipt.get("transactionHash"),
        )
    emitter = emitter.lower()
    return [log for log in receipt.get("logs", []) if str(log.get("address", "")).lower() == emitter]


def topics(log: Mapping[str, Any]) -> list[str]:
    return [t.lower() for t in log.get("topics", [])]
