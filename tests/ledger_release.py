"""A ledger as one release writes and reads it, run in a child process so that the release under
test is the one on its PYTHONPATH (an old release's tree, or this one).

    python tests/ledger_release.py write SPEC NOW      rows in every state, then the figures
    python tests/ledger_release.py figures SPEC NOW    what the release reads back
    python tests/ledger_release.py open SPEC           'ready', then open at the word 'go'

SPEC is a SQLite path or a postgresql:// URL; the figures are JSON on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import x402_agent
from x402_agent.decision import Usage
from x402_agent.ledger import Ledger, NewPayment, UsageQuery
from x402_agent.ledger.sql import SqlLedger

NETWORK = "eip155:31337"
ASSET = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SESSION = "s-old"
DAY = 86_400
# Amounts that add up uniquely, so a figure shows which rows it counted.
AMOUNTS = {"settled": 100, "reserved": 20, "unknown": 3, "sent": 4000, "released": 50_000}


def open_ledger(spec: str) -> SqlLedger:
    if spec.startswith("postgresql://"):
        from x402_agent.ledger.postgres import PostgresLedger

        return PostgresLedger(spec)
    from x402_agent.ledger import SQLiteLedger

    return SQLiteLedger(Path(spec))


def payment(state: str, amount: int) -> NewPayment:
    return NewPayment(
        idempotency_key=f"key-{state}",
        request_fingerprint=f"fp-{state}",
        method="GET",
        url=f"https://api.example/{state}",
        request_body_sha256="00" * 32,
        x402_version=2,
        network=NETWORK,
        asset=ASSET,
        symbol="USDC",
        decimals=6,
        amount=amount,
        pay_to="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        requirement_json=json.dumps({"scheme": "exact", "amount": str(amount)}),
        policy_version=1,
        policy_digest="sha256:" + "ab" * 32,
        session=SESSION,
    )


def query(now: float) -> UsageQuery:
    return UsageQuery(network=NETWORK, asset=ASSET, day_start=now - DAY, now=now, session=SESSION)


def allow(_: Usage) -> None:
    return None


def write(ledger: Ledger, now: float) -> None:
    for i, (state, amount) in enumerate(AMOUNTS.items()):
        row = ledger.reserve(payment(state, amount), query(now), allow)
        if state == "reserved":
            continue
        if state == "released":
            ledger.release(row.id, reason="not_sent")
            continue
        ledger.mark_sent(
            row.id,
            payer="0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            nonce="0x" + f"{i + 1:064x}",
            valid_after=0,
            valid_before=int(now) + 300,
            payment_header=f"header-{state}",
        )
        if state == "settled":
            ledger.settle(row.id, settlement_tx="0x" + "cd" * 32, delivered=True, evidence={"status": 200})
        elif state == "unknown":
            ledger.mark_unknown(row.id, evidence={"transport_error": "lost"}, delivered=False)


def figures(ledger: Ledger, now: float) -> dict[str, Any]:
    return {
        "release": x402_agent.__file__,
        "rows": sorted((r.to_receipt() for r in ledger.recent(100)), key=lambda r: r["id"]),
        "budget": dataclasses.asdict(ledger.budget(now - DAY, now)),
        "usage": dataclasses.asdict(ledger.usage(query(now))),
    }


def main() -> None:
    mode, spec = sys.argv[1], sys.argv[2]
    if mode == "open":
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")
        ledger = open_ledger(spec)
        try:
            print(json.dumps({"owner": ledger.owner}), flush=True)
        finally:
            ledger.close()
        return
    now = float(sys.argv[3])
    ledger = open_ledger(spec)
    try:
        if mode == "write":
            write(ledger, now)
        print(json.dumps(figures(ledger, now)), flush=True)
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
