"""An agent process that kills itself (SIGKILL) at a chosen step of a payment.

    python crash_child.py HOME URL IDEMPOTENCY_KEY STEP [PREPAID]

STEP: after_reserve | after_mark_sent | before_settle | after_settle | after_next_voucher |
before_confirm (a batch-settlement channel's ledger steps) | none (the test kills it from
outside). PREPAID: how many requests to pay (without a key) before the one that dies.
The kill is instrumentation around the real ledger methods; everything else is the product.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from x402_agent.ledger.channels import ChannelTable
from x402_agent.ledger.sql import SqlLedger
from x402_agent.operations import Agent


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after(name: str, cls: type = SqlLedger) -> None:
    original = getattr(cls, name)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        die()
        return result

    setattr(cls, name, wrapped)


def kill_before(name: str, cls: type = SqlLedger) -> None:
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        die()

    setattr(cls, name, wrapped)


def main() -> None:
    home, url, key, step = sys.argv[1:5]
    agent = Agent.open(Path(home))
    for _ in range(int(sys.argv[5]) if len(sys.argv) > 5 else 0):
        agent.fetch(url)
    if step == "after_next_voucher":
        kill_after("next_voucher", ChannelTable)
    elif step == "before_confirm":
        kill_before("confirm", ChannelTable)
    elif step == "after_reserve":
        kill_after("reserve")
    elif step == "after_mark_sent":
        kill_after("mark_sent")
    elif step == "before_settle":
        kill_before("settle")
    elif step == "after_settle":  # before the background check of the settlement's receipt
        kill_after("settle")
    agent.fetch(url, idempotency_key=key)
    print("finished without being killed", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main()
