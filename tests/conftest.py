"""Shared pytest fixtures: the local x402 world, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from x402_agent.device.simulator import DeviceSimulator
from x402_agent.devnet import LocalWorld, WorldInfo


@pytest.fixture(scope="session")
def device_simulator() -> Iterator[DeviceSimulator]:
    """The session's device simulator on a free port pair (other test sessions, devnets and
    demos run beside it); homes provisioned from the world record its path."""
    simulator = DeviceSimulator(confirm="auto", port=0)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture(scope="session")
def local_world(device_simulator: DeviceSimulator) -> Iterator[LocalWorld]:
    """The running ``LocalWorld`` (for its start time); most tests want ``world``."""
    local = LocalWorld(device=device_simulator)
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def world(local_world: LocalWorld) -> WorldInfo:
    """Where the session's local x402 world runs and what its routes cost."""
    return local_world.info


# ---- PostgreSQL: one private cluster per test session, a fresh database per test -------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Base URL (database ``postgres``) of a private PostgreSQL cluster. Fails, never skips,
    when PostgreSQL cannot run."""
    from pg_server import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """URL of a new empty database on the session's cluster."""
    from pg_server import create_database

    return create_database(postgres_server)
