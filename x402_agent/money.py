"""Money as integers in atomic units; conversions from human text are exact or refused."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .errors import InvalidRequest

UINT256_MAX = 2**256 - 1
# The ledger stores amounts in SQLite INTEGER columns; nothing above this is ever reserved.
LEDGER_AMOUNT_MAX = 2**63 - 1

_ATOMIC = re.compile(r"[0-9]+")
_DISPLAY = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?")


def parse_atomic(text: object) -> int:
    """Parse a wire amount: a base-10 string of digits that fits uint256. Raises ValueError."""
    if not isinstance(text, str) or not _ATOMIC.fullmatch(text):
        raise ValueError("amount must be a string of decimal digits")
    if len(text.lstrip("0")) > 78 or int(text) > UINT256_MAX:
        raise OverflowError("amount does not fit uint256")
    return int(text)


def to_atomic(display: str, decimals: int) -> int:
    """Convert ``"0.01"`` with 6 decimals into ``10000``; refuses excess precision."""
    if not _DISPLAY.fullmatch(display):
        raise InvalidRequest(f"not a non-negative decimal amount: {display!r}", reason="invalid_amount")
    try:
        scaled = Decimal(display).scaleb(decimals)
    except InvalidOperation as exc:  # pragma: no cover - regex already constrains input
        raise InvalidRequest(f"bad amount {display!r}", reason="invalid_amount") from exc
    if scaled != scaled.to_integral_value():
        raise InvalidRequest(f"{display} has more than {decimals} decimals", reason="invalid_amount")
    return int(scaled)


def format_units(atomic: int, decimals: int) -> str:
    """Render atomic units for humans without floats: 10000, 6 -> '0.01'."""
    sign = "-" if atomic < 0 else ""
    whole, frac = divmod(abs(atomic), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


@dataclass(frozen=True)
class Amount:
    """An amount of one asset: atomic units plus what is needed to read them."""

    atomic: int
    asset: str
    decimals: int
    symbol: str

    def __str__(self) -> str:
        return f"{format_units(self.atomic, self.decimals)} {self.symbol}"
