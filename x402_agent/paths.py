"""Where things are: the checkout beside the package and the agent home (kept free of heavy
imports: `x402-agent mcp` reads the home's path before anything else loads)."""

import os
from pathlib import Path

HOME_ENV = "X402_AGENT_HOME"

# The checkout root: node_modules/ (anvil, alto, solc, the node v1 server's packages), contracts/
# and localworld/ live beside the x402_agent package.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_home() -> Path:
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path.home() / ".x402-agent"
