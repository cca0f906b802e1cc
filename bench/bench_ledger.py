"""Ledger latency of one payment's bookkeeping: decision + reservation + state changes.

For each backend (SQLite file, PostgreSQL in a private cluster) and each history size, a fresh
ledger is pre-filled with that many past payments spread over the previous 30 days (bulk
loaded: executemany for SQLite, COPY for PostgreSQL, not through ``reserve``), then N sequential
cycles run the real code path: ``PolicyGate.reserve`` (usage read + policy decision + insert in
one locked transaction), ``mark_sent`` and ``settle``. Reported: p50/p99 of a whole cycle and
of the reservation alone, in ms, and the p99 ratio of the largest history over the smallest.

    .venv/bin/python bench/bench_ledger.py [--cycles 2000] [--sizes 1000,1000000]
        [--backends sqlite,postgres] [--json out.json]

JSON goes to stdout (and --json), the readable summary to stderr. SQLite runs as the agent
opens it (WAL, synchronous=NORMAL); PostgreSQL twice: with its default durability, and with
fsync off, which shows the ledger's own cost apart from this machine's disk. Sizes run in
alternating blocks of cycles. After the bulk load the ledger is told to rebuild its usage
counters, PostgreSQL gets VACUUM ANALYZE (as autovacuum would) and both are checkpointed.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address
from x402.schemas import PaymentRequirements

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import PostgresServer, create_database

from x402_agent.challenge import Offer
from x402_agent.decision import PaymentContext
from x402_agent.ledger import Ledger, SQLiteLedger
from x402_agent.ledger.sql import BUCKETS_KEY, COLUMNS
from x402_agent.policy import Policy, parse_policy
from x402_agent.spendgate import PolicyGate

NETWORK = "eip155:84532"
ASSET = to_checksum_address("0x" + "a1" * 20)
OTHER_ASSET = to_checksum_address("0x" + "b2" * 20)
PAYEE = to_checksum_address("0x" + "c3" * 20)
PAYER = to_checksum_address("0x" + "d4" * 20)
PRICE = 1000
HISTORY_DAYS = 30
WARMUP = 100
BLOCK = 100  # cycles per size in turn


def policy() -> Policy:
    """Every limit that reads the ledger is on: daily max, rate limit, circuit breaker."""
    return parse_policy(
        json.dumps(
            {
                "version": 1,
                "assets": [
                    {
                        "network": NETWORK,
                        "address": ASSET,
                        "symbol": "USDC",
                        "decimals": 6,
                        "eip712_name": "USDC",
                        "eip712_version": "2",
                        "per_request_max": PRICE,
                        "daily_max": 10**15,
                    }
                ],
                "max_payments_per_minute": 1_000_000,
                "circuit_breaker": {"max_consecutive_failures": 1000},
            }
        )
    )


def offer() -> Offer:
    requirement = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=ASSET,
        amount=str(PRICE),
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={"name": "USDC", "version": "2"},
    )
    return Offer(
        index=0,
        x402_version=2,
        scheme="exact",
        network=NETWORK,
        chain_id=84532,
        asset=ASSET,
        amount=PRICE,
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={"name": "USDC", "version": "2"},
        requirement=requirement,
    )


CONTEXT = PaymentContext(
    method="GET",
    url="https://api.example/paid",
    host="api.example",
    request_body_sha256="0" * 64,
    request_fingerprint="fp",
)


def history(rows: int, now: float, seed: int = 402) -> Iterator[tuple[Any, ...]]:
    """Past payments in time order over the last 30 days: 70% in the benchmarked asset,
    96% settled and delivered, 4% released."""
    rng = random.Random(seed)
    start = now - HISTORY_DAYS * 86_400
    times = sorted(rng.uniform(start, now - 60) for _ in range(rows))
    requirement = json.dumps({"amount": str(PRICE), "payTo": PAYEE})
    for created in times:
        ident = f"{rng.getrandbits(128):032x}"
        released = rng.random() < 0.04
        values = {
            "id": ident,
            "idempotency_key": None,
            "request_fingerprint": "fp",
            "method": "GET",
            "url": "https://api.example/paid",
            "request_body_sha256": "0" * 64,
            "x402_version": 2,
            "network": NETWORK,
            "asset": ASSET if rng.random() < 0.7 else OTHER_ASSET,
            "symbol": "USDC",
            "decimals": 6,
            "amount": rng.randint(1, 5000),
            "pay_to": PAYEE,
            "requirement_json": requirement,
            "policy_version": 1,
            "policy_digest": "sha256:x",
            "session": None,
            "state": "released" if released else "settled",
            "created_at": created,
            "updated_at": created + 1,
            "payer": PAYER,
            "nonce": f"0x{ident}",
            "valid_after": 0,
            "valid_before": int(created) + 300,
            "payment_header": "header",
            "sent_at": created + 0.01,
            "settlement_tx": None if released else f"0x{ident}{ident}",
            "response_status": 200,
            "response_content_type": "application/json",
            "response_body_sha256": "f" * 64,
            "delivered": 0 if released else 1,
            "evidence_json": None,
            "finished_at": created + 1,
        }
        yield tuple(values[c] for c in COLUMNS)


def fill_sqlite(path: Path, rows: int, now: float) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        f"INSERT INTO payments ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
        history(rows, now),
    )
    # Rows loaded behind the ledger's back: it rebuilds its usage counters at its next write.
    db.execute("DELETE FROM ledger_meta WHERE key = ?", (BUCKETS_KEY,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the history is old: not in the WAL
    db.close()


def fill_postgres(url: str, rows: int, now: float) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY payments ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in history(rows, now):
                copy.write_row(row)
        # Rows loaded behind the ledger's back: it rebuilds its usage counters when it opens.
        conn.execute("DELETE FROM ledger_meta WHERE key = %s", (BUCKETS_KEY,))
        conn.execute("VACUUM ANALYZE payments")  # as autovacuum would have, long ago
        conn.execute("CHECKPOINT")  # the history is old: its writes are on disk


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Cycles:
    """Runs payment cycles on one ledger and keeps their latencies."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.gate = PolicyGate(policy(), ledger)
        self.offer = offer()
        self.whole: list[float] = []
        self.reserving: list[float] = []

    def run(self, count: int, *, keep: bool = True) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            record = self.gate.reserve(self.offer, CONTEXT)
            t1 = time.perf_counter()
            self.ledger.mark_sent(
                record.id,
                payer=PAYER,
                nonce=f"0x{record.id}",
                valid_after=0,
                valid_before=int(time.time()) + 300,
                payment_header="header",
            )
            self.ledger.settle(
                record.id,
                settlement_tx=f"0x{record.id}",
                response_status=200,
                response_content_type="application/json",
                response_body_sha256="f" * 64,
                delivered=True,
            )
            t2 = time.perf_counter()
            if keep:
                self.whole.append((t2 - t0) * 1000)
                self.reserving.append((t1 - t0) * 1000)

    def stats(self) -> dict[str, float]:
        return {
            "cycle_p50_ms": statistics.median(self.whole),
            "cycle_p95_ms": percentile(self.whole, 95),
            "cycle_p99_ms": percentile(self.whole, 99),
            "cycle_mean_ms": statistics.fmean(self.whole),
            "reserve_p50_ms": statistics.median(self.reserving),
            "reserve_p99_ms": percentile(self.reserving, 99),
        }


def open_filled(
    backend: str, size: int, workdir: Path, server: PostgresServer | None
) -> tuple[Ledger, dict[str, float]]:
    """A ledger holding ``size`` history rows; timings of the load, the open (PostgreSQL
    rebuilds the usage counters there) and the first cycle (SQLite rebuilds them there)."""
    now = time.time()
    t0 = time.perf_counter()
    ledger: Ledger
    if backend == "sqlite":
        path = workdir / f"ledger-{size}.sqlite3"
        SQLiteLedger(path).close()  # the schema
        fill_sqlite(path, size, now)
        t1 = time.perf_counter()
        ledger = SQLiteLedger(path)
    else:
        from x402_agent.ledger.postgres import PostgresLedger

        assert server is not None
        url = create_database(server.url, "bench")
        PostgresLedger(url).close()
        fill_postgres(url, size, now)
        t1 = time.perf_counter()
        ledger = PostgresLedger(url)
    t2 = time.perf_counter()
    Cycles(ledger).run(1, keep=False)
    t3 = time.perf_counter()
    return ledger, {
        "fill_seconds": round(t1 - t0, 2),
        "open_seconds": round(t2 - t1, 3),
        "first_cycle_seconds": round(t3 - t2, 3),
    }


def run_backend(
    backend: str, sizes: list[int], cycles: int, workdir: Path, server: PostgresServer | None
) -> dict[str, Any]:
    """Fill one ledger per size, then run the sizes' cycles in alternating blocks, so that
    whatever else the machine does hits every size alike."""
    opened: dict[int, tuple[Ledger, dict[str, float]]] = {}
    try:
        for size in sizes:
            opened[size] = open_filled(backend, size, workdir, server)
            print(
                f"  {backend}: {size:,} history rows loaded ({opened[size][1]})", file=sys.stderr, flush=True
            )
        runners = {size: Cycles(ledger) for size, (ledger, _) in opened.items()}
        for runner in runners.values():
            runner.run(WARMUP, keep=False)
        for _ in range(0, cycles, BLOCK):
            for runner in runners.values():
                runner.run(BLOCK)
    finally:
        for ledger, _ in opened.values():
            ledger.close()
    results: dict[str, Any] = {}
    for size, runner in runners.items():
        results[str(size)] = {
            "history_rows": size,
            **opened[size][1],
            **{k: round(v, 4) for k, v in runner.stats().items()},
        }
    small, large = str(min(sizes)), str(max(sizes))
    results["p99_ratio_largest_over_smallest"] = round(
        results[large]["cycle_p99_ms"] / results[small]["cycle_p99_ms"], 3
    )
    results["reserve_p99_ratio_largest_over_smallest"] = round(
        results[large]["reserve_p99_ms"] / results[small]["reserve_p99_ms"], 3
    )
    return results


BACKENDS = {
    "sqlite": "SQLite file as the agent opens it (WAL, synchronous=NORMAL)",
    "postgres": "PostgreSQL 15 with its default durability (fsync, synchronous_commit on)",
    "postgres-nofsync": "PostgreSQL 15 with fsync and synchronous_commit off: the ledger's own "
    "cost, without this machine's disk",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)}")
    report: dict[str, Any] = {
        "cycles": args.cycles,
        "warmup": WARMUP,
        "block": BLOCK,
        "history_days": HISTORY_DAYS,
        "backends": {b: {"setup": BACKENDS[b]} for b in backends},
    }
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        for backend in backends:
            server = None
            try:
                if backend.startswith("postgres"):
                    server = PostgresServer(durable=backend == "postgres")
                    server.start()
                report["backends"][backend].update(
                    run_backend(backend, sizes, args.cycles, Path(tmp), server)
                )
            finally:
                if server is not None:
                    server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(
        f"\n{args.cycles} cycles of PolicyGate.reserve + mark_sent + settle; latencies in ms", file=sys.stderr
    )
    print(
        f"{'backend':17} {'history':>9} {'cycle p50':>10} {'cycle p95':>10} {'cycle p99':>10}"
        f" {'reserve p50':>12} {'reserve p99':>12}",
        file=sys.stderr,
    )
    for backend in backends:
        results = report["backends"][backend]
        for size in sizes:
            r = results[str(size)]
            print(
                f"{backend:17} {size:>9,} {r['cycle_p50_ms']:10.3f} {r['cycle_p95_ms']:10.3f}"
                f" {r['cycle_p99_ms']:10.3f} {r['reserve_p50_ms']:12.3f}"
                f" {r['reserve_p99_ms']:12.3f}",
                file=sys.stderr,
            )
        print(
            f"{backend:17} p99 ratio {max(sizes):,} / {min(sizes):,} rows: cycle "
            f"{results['p99_ratio_largest_over_smallest']:.2f}x, reserve "
            f"{results['reserve_p99_ratio_largest_over_smallest']:.2f}x",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
