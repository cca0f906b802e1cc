"""Module-scoped fixtures for the batch-settlement tests: a local world of the module's own (its
tests move the chain clock past the withdraw delay, which would expire every authorization the
session world's other tests sign), its batch server and the settlement contract.

Import the fixtures into a test module (``from batch_fixtures import batch_world, server,
settlement, world``); each importing module gets its own world.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

from x402_agent.devnet import LocalWorld, WorldInfo
from x402_agent.devnet.batch import BatchServer, batch_artifact


@pytest.fixture(scope="module")
def batch_world() -> Iterator[LocalWorld]:
    local = LocalWorld()
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def world(batch_world: LocalWorld) -> WorldInfo:
    return batch_world.info


@pytest.fixture(scope="module")
def server(batch_world: LocalWorld) -> BatchServer:
    assert batch_world.batch_server is not None
    return batch_world.batch_server


@pytest.fixture(scope="module")
def settlement(world: WorldInfo) -> Any:
    """X402BatchSettlement with our artifact's ABI: the SDK's subset plus the events."""
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    return w3.eth.contract(address=BATCH_SETTLEMENT_ADDRESS, abi=batch_artifact("X402BatchSettlement")["abi"])
