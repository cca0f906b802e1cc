"""Network identifiers: x402 v2 uses CAIP-2 (``eip155:84532``), v1 uses names (``base-sepolia``)."""

from __future__ import annotations

import re
from functools import cache

_CAIP2_EVM = re.compile(r"eip155:([1-9][0-9]{0,18})")


@cache
def _v1_names() -> dict[str, int]:
    # The SDK owns the list of v1 network names; importing it is slow, so only v1 pays for it.
    from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

    return dict(V1_NETWORK_CHAIN_IDS)


def evm_chain_id(network: str) -> int | None:
    """Chain id of an EVM network in either notation, or None if it is not one we know."""
    match = _CAIP2_EVM.fullmatch(network)
    if match:
        return int(match.group(1))
    return _v1_names().get(network)


def caip2(network: str) -> str | None:
    """The CAIP-2 form of a network, used as the key everywhere inside the agent."""
    chain_id = evm_chain_id(network)
    return None if chain_id is None else f"eip155:{chain_id}"
