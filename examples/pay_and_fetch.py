"""Pay for an x402 resource from Python, under the agent home's device-approved policy.

    X402_AGENT_HOME=<home> .venv/bin/python examples/pay_and_fetch.py <url>

`x402-agent devnet` prints a ready home and the local paid API's URL.
"""

from __future__ import annotations

import sys

from x402_agent.errors import X402AgentError
from x402_agent.money import format_units
from x402_agent.operations import Agent


def main(url: str) -> int:
    agent = Agent.open()  # $X402_AGENT_HOME; refuses to start without an approved policy
    try:
        quote = agent.quote(url)
        print(f"quote: {'allowed' if quote.allowed else 'refused'} ({quote.reason}), chosen: {quote.chosen}")
        outcome = agent.fetch(url, idempotency_key=f"example:{url}")
    except X402AgentError as refused:
        print(f"refused: {refused.reason}: {refused.message}")
        return 1
    finally:
        agent.close()
    paid = outcome.payment
    if paid is not None:
        print(
            f"paid {format_units(paid.amount, paid.decimals)} {paid.symbol}, "
            f"tx {paid.settlement_tx}, receipt {paid.id}"
        )
    print((outcome.content or b"").decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
