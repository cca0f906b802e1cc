"""Shared pytest fixtures: the local x402 world, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from x402_agent.devnet import LocalWorld, WorldInfo


@pytest.fixture(scope="session")
def local_world() -> Iterator[LocalWorld]:
    """The running ``LocalWorld`` (for its start time); most tests want ``world``."""
    local = LocalWorld()
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def world(local_world: LocalWorld) -> WorldInfo:
    """Where the session's local x402 world runs and what its routes cost."""
    return local_world.info
