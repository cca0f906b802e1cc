"""One of several agent processes racing for the same budget (run by test_race.py).

    python race_worker.py HOME URL ATTEMPTS [SESSION]   (stdin: a line "go" releases the start)

The URL picks the scheme (the local world's /v2/metered is upto, /v2/permit2 exact over
Permit2); SESSION pays every attempt in that session (its allowance applies).

Prints one JSON line: how many attempts paid and how each refusal was coded.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

from x402_agent.errors import X402AgentError
from x402_agent.operations import Agent


async def attempt(agent: Agent, url: str, session: str | None) -> str:
    try:
        outcome = await agent.afetch(url, session=session)
    except X402AgentError as refused:
        return refused.reason
    return "paid" if outcome.payment is not None and outcome.status == 200 else "other"


async def race(agent: Agent, url: str, attempts: int, session: str | None) -> Counter[str]:
    return Counter(await asyncio.gather(*(attempt(agent, url, session) for _ in range(attempts))))


def main() -> None:
    home, url, attempts = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    session = sys.argv[4] if len(sys.argv) > 4 else None
    agent = Agent.open(home)
    print("ready", flush=True)
    sys.stdin.readline()  # every worker starts at once
    results = asyncio.run(race(agent, url, attempts, session))
    agent.close()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
