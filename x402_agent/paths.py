"""Where the checkout keeps what the package runs beside it."""

from pathlib import Path

# The checkout root: node_modules/ (anvil, alto, solc, the node v1 server's packages), contracts/
# and localworld/ live beside the x402_agent package.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
