"""The steps a scheme module may ask of a driver: a JSON-RPC call to the payment's chain, and a
blocking call into a smart-account payer (Permit2's allowance is raised by its top-up).

They live apart from ``flow`` (which re-exports them with the other steps) so that scheme
modules, which the flow imports, can yield them without importing the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RpcCall:
    url: str
    method: str
    params: tuple[Any, ...]


@dataclass(frozen=True)
class WalletCall:
    """A blocking call into a smart-account payer (its on-chain bound check, a top-up); the
    async driver runs it in a worker thread."""

    name: str
    run: Callable[[], Any]
