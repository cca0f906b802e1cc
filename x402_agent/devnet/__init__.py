"""A local, offline x402 world for tests and demos.

``LocalWorld`` starts anvil chains with Circle's real FiatToken v2.2 (USDC,
EURC), a funded payer, the official Python SDK v2 paid API and the official
npm x402-express v1 server, all on free loopback ports; ``WorldInfo`` says
where everything is and what each route costs.
"""

from .info import PriceInfo, RouteInfo, WorldInfo
from .usdc import TokenInfo, token_balance
from .world import LocalWorld

__all__ = ["LocalWorld", "PriceInfo", "RouteInfo", "TokenInfo", "WorldInfo", "token_balance"]
