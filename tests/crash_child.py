"""An agent process that kills itself (SIGKILL) at a chosen step of a payment.

    python crash_child.py HOME URL IDEMPOTENCY_KEY STEP

STEP: after_reserve | after_mark_sent | before_settle | after_settle | none (the test kills it
from outside).
The kill is instrumentation around the real ledger methods; everything else is the product.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from x402_agent.ledger.sql import SqlLedger
from x402_agent.operations import Agent


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after(name: str) -> None:
    original = getattr(SqlLedger, name)

    def wrapped(self: SqlLedger, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        die()
        return result

    setattr(SqlLedger, name, wrapped)


def kill_before(name: str) -> None:
    def wrapped(self: SqlLedger, *args: Any, **kwargs: Any) -> Any:
        die()

    setattr(SqlLedger, name, wrapped)


def main() -> None:
    home, url, key, step = sys.argv[1:5]
    if step == "after_reserve":
        kill_after("reserve")
    elif step == "after_mark_sent":
        kill_after("mark_sent")
    elif step == "before_settle":
        kill_before("settle")
    elif step == "after_settle":  # before the background check of the settlement's receipt
        kill_after("settle")
    agent = Agent.open(Path(home))
    agent.fetch(url, idempotency_key=key)
    print("finished without being killed", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main()
