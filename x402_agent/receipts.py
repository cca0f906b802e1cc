"""Receipts: what was paid, for which request and response, under which policy."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .ledger import PaymentRecord
from .ledger.entitlements import SignInRecord
from .money import format_units

CSV_FIELDS = (
    "id",
    "state",
    "created_at",
    "method",
    "url",
    "request_body_sha256",
    "x402_version",
    "network",
    "asset",
    "symbol",
    "scheme",
    "credential",
    "amount",
    "price",
    "settled_amount",
    "settled",
    "pay_to",
    "payer",
    "nonce",
    "valid_after",
    "valid_before",
    "settlement_tx",
    "response_status",
    "response_body_sha256",
    "policy_version",
    "policy_digest",
    "idempotency_key",
    "verification",
)


def receipt(record: PaymentRecord) -> dict[str, Any]:
    data = record.to_receipt()
    data["price"] = format_units(record.amount, record.decimals)  # the reserved maximum
    # What moved (upto may settle less than its maximum; unset until settled).
    data["settled"] = (
        None if record.settled_amount is None else format_units(record.settled_amount, record.decimals)
    )
    return data


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _data(rows: list[dict[str, Any]], fmt: str, fields: Sequence[str]) -> str:
    """``rows`` as JSON or CSV (times in ISO 8601)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "created_at": _iso(row["created_at"])})
    return out.getvalue()


def render(records: Sequence[PaymentRecord], fmt: str) -> str:
    if fmt in ("json", "csv"):
        return _data([receipt(r) for r in records], fmt, CSV_FIELDS)
    lines = [f"{'when':24} {'state':8} {'price':>12}  {'tx':14} url"]
    # An upto payment that settled less than its maximum reads "settled of maximum".
    for r in records:
        tx = (r.settlement_tx or "-")[:12]
        # A settled payment whose transaction the chain contradicted shows as such.
        state = "mismatch" if r.verification == "mismatch" else r.state
        price = format_units(r.amount, r.decimals) + " " + r.symbol
        if r.settled_amount is not None and r.settled_amount != r.amount:
            price = f"{format_units(r.settled_amount, r.decimals)} of {price}"
        lines.append(f"{_iso(r.created_at)[:23]:24} {state:8} {price:>12}  {tx:14} {r.url}")
    return "\n".join(lines)


SIGN_IN_FIELDS = (
    "id",
    "kind",
    "created_at",
    "method",
    "url",
    "amount",
    "response_status",
    "response_body_sha256",
    "entitlement_id",
    "session",
)


def render_sign_ins(records: Sequence[SignInRecord], fmt: str) -> str:
    """Accesses by sign-in (kind "sign-in", amount 0): each used an entitlement an earlier
    payment bought (``entitlement_id``; the budget view names that payment)."""
    if fmt in ("json", "csv"):
        return _data([r.to_receipt() for r in records], fmt, SIGN_IN_FIELDS)
    lines = [f"{'when':24} {'kind':8} {'price':>12}  {'status':14} url"]
    lines += [
        f"{_iso(r.created_at)[:23]:24} sign-in  {'0':>12}  {r.response_status:<14} {r.url}" for r in records
    ]
    return "\n".join(lines)
