"""Check what the server says it settled, and what the chain says was settled.

The server's PAYMENT-RESPONSE (v2) or X-PAYMENT-RESPONSE (v1) is decoded with the SDK codec and
compared with what we signed. With an RPC, the transaction receipt must show the token's
AuthorizationUsed event for our nonce and a Transfer of exactly the amount to payTo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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
from .signer import TransferAuthorization

AUTHORIZATION_USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
MAX_SETTLEMENT_HEADER = 8 * 1024


@dataclass(frozen=True)
class Settlement:
    transaction: str
    network: str
    payer: str | None
    raw: dict[str, Any]


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
    response: SettleResponse, authorization: TransferAuthorization, network: str
) -> Settlement:
    """The settle response must describe our payment: success, payer, network, amount, tx."""
    problems = []
    if not response.success:
        problems.append(f"settlement failed: {response.error_reason}")
    if response.payer and response.payer.lower() != authorization.from_address.lower():
        problems.append("payer differs from the signer")
    if caip2(response.network) != network:
        problems.append(f"network {response.network!r} differs from {network!r}")
    if response.amount not in (None, "", str(authorization.value)):
        problems.append(f"amount {response.amount!r} differs from {authorization.value}")
    if not _TX_HASH.fullmatch(response.transaction or ""):
        problems.append("no valid transaction hash")
    if problems:
        raise SettlementMismatch("; ".join(problems), evidence=response.model_dump(by_alias=True))
    return Settlement(
        response.transaction, network, response.payer, response.model_dump(by_alias=True, exclude_none=True)
    )


def _topic_address(address: str) -> str:
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


def check_transaction_receipt(
    receipt: Mapping[str, Any], authorization: TransferAuthorization, pay_to: str
) -> None:
    """The receipt proves our authorization moved exactly ``value`` to ``pay_to``."""
    token = authorization.token.verifying_contract.lower()
    if receipt.get("status") != "0x1":
        raise SettlementMismatch(
            "settlement transaction reverted",
            reason=Reason.SETTLEMENT_REVERTED,
            tx=receipt.get("transactionHash"),
        )
    logs = [log for log in receipt.get("logs", []) if str(log.get("address", "")).lower() == token]
    used = [
        log
        for log in logs
        if [t.lower() for t in log.get("topics", [])]
        == [AUTHORIZATION_USED_TOPIC, _topic_address(authorization.from_address), authorization.nonce.lower()]
    ]
    transfers = [
        log
        for log in logs
        if [t.lower() for t in log.get("topics", [])]
        == [TRANSFER_TOPIC, _topic_address(authorization.from_address), _topic_address(pay_to)]
        and int(log.get("data", "0x0"), 16) == authorization.value
    ]
    if len(used) != 1 or len(transfers) != 1:
        raise SettlementMismatch(
            "the settlement transaction does not use our authorization for exactly the price",
            reason=Reason.SETTLEMENT_NOT_OURS,
            tx=receipt.get("transactionHash"),
            authorization_used=len(used),
            matching_transfers=len(transfers),
        )
