"""The result block both channel benchmarks report: a channel's latency and gas next to exact's."""

from __future__ import annotations

import statistics
from typing import Any


def channel_against_exact(
    requests: int,
    batch_ms: list[float],
    exact_ms: list[float],
    gas: dict[str, Any],
    exact_gas: list[int],
) -> dict[str, Any]:
    """``gas``: the channel's ``deposit`` and ``claim`` lists and its ``settle`` and ``refund``
    figures; each bench adds what only it knows to the ``batch`` part."""
    total = sum(gas["deposit"]) + sum(gas["claim"]) + gas["settle"] + gas["refund"]
    return {
        "requests": requests,
        "batch": {
            "p50_ms": round(statistics.median(batch_ms), 1),
            "mean_ms": round(statistics.mean(batch_ms), 1),
            "first_request_ms": round(batch_ms[0], 1),
            "deposit_txs": len(gas["deposit"]),
            "gas": gas,
            "gas_total": total,
            "gas_per_request": round(total / requests),
        },
        "exact": {
            "p50_ms": round(statistics.median(exact_ms), 1),
            "mean_ms": round(statistics.mean(exact_ms), 1),
            "gas_per_request_p50": statistics.median(exact_gas),
            "gas_total": sum(exact_gas),
        },
    }
