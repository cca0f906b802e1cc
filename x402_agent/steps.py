"""The one step a scheme module may ask of a driver: a JSON-RPC call to the payment's chain.

It lives apart from ``flow`` (which re-exports it with the other steps) so that scheme modules,
which the flow imports, can yield it without importing the flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RpcCall:
    url: str
    method: str
    params: tuple[Any, ...]
