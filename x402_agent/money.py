"""Money as integers in atomic units: strict parsing of wire amounts, exact rendering."""

from __future__ import annotations

import re

UINT256_MAX = 2**256 - 1
# The ledger stores amounts in SQLite INTEGER columns; nothing above this is ever reserved.
LEDGER_AMOUNT_MAX = 2**63 - 1

_ATOMIC = re.compile(r"[0-9]+")


def parse_atomic(text: object) -> int:
    """Parse a wire amount: a base-10 string of digits that fits uint256. Raises ValueError."""
    if not isinstance(text, str) or not _ATOMIC.fullmatch(text):
        raise ValueError("amount must be a string of decimal digits")
    if len(text.lstrip("0")) > 78 or int(text) > UINT256_MAX:
        raise OverflowError("amount does not fit uint256")
    return int(text)


def format_units(atomic: int, decimals: int) -> str:
    """Render atomic units for humans without floats: 10000, 6 -> '0.01'."""
    sign = "-" if atomic < 0 else ""
    whole, frac = divmod(abs(atomic), 10**decimals)
    if decimals == 0 or frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"
