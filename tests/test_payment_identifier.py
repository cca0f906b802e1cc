"""The payment-identifier extension against the local world's official SDK server.

The world's ``/v2/idempotent`` route declares the extension in its 402 (the SDK's own
declaration) and its server caches answers by identifier (x402_agent.devnet.payment_id_cache,
as the extension's specification says: same id and payload -> the cached answer, same id and
another payload -> 409). The faulty proxy (tests/faulty_proxy.py) loses answers after the
payment settled, or rewrites the identifier as a middlebox could (the extension is not signed).
Every other route declares nothing, and sees payments exactly as before.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chain_reads import TRANSFER, rpc, token_balance, transfer_logs
from faulty_proxy import FaultyProxy
from test_crash import killed, spawn

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import PaidNotDelivered, PaymentIdentifierConflict
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.payment_identifier import carried_identifier, identifier_for, payment_extensions

ROUTE = "/v2/idempotent"
ANSWER = {"city": "Faro", "temperature_c": 23.0, "paid_with": "payment-identifier"}


@pytest.fixture
def proxy(world: WorldInfo) -> Iterator[tuple[FaultyProxy, str]]:
    faulty = FaultyProxy(world.api_url)
    with ServedApp(faulty, "identifier-proxy") as served:
        yield faulty, served.url


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path, proxy: tuple[FaultyProxy, str]) -> Path:
    return provision_devnet_home(world, tmp_path / "home", devnet_policy(world, also_fetch=[proxy[1]])).root


@pytest.fixture
def agent(home: Path) -> Iterator[Agent]:
    agent = Agent.open(home)
    yield agent
    agent.close()


def transfers_to(world: WorldInfo, payee: str) -> int:
    """How many USDC transfers to ``payee`` the chain holds (read independently, raw RPC)."""
    topic = "0x" + payee.lower().removeprefix("0x").rjust(64, "0")
    logs = rpc(
        world.rpc_url,
        "eth_getLogs",
        {
            "fromBlock": "0x0",
            "toBlock": "latest",
            "address": world.usdc.address,
            "topics": [TRANSFER, None, topic],
        },
    )
    return len(logs)


class Payee:
    """The route's payee as the chain sees it, to show a payment moved exactly once."""

    def __init__(self, world: WorldInfo) -> None:
        self.world, self.route = world, world.route("GET", ROUTE)
        assert self.route.pay_to is not None
        self.address = self.route.pay_to
        self.before = self.now()

    def now(self) -> tuple[int, int]:
        return token_balance(self.world.rpc_url, self.world.usdc.address, self.address), transfers_to(
            self.world, self.address
        )

    def paid_once(self) -> bool:
        balance, transfers = self.now()
        return (balance - self.before[0], transfers - self.before[1]) == (self.route.price_atomic, 1)


def sent_payload(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


def test_the_route_declares_the_extension_and_the_payment_carries_the_row_id(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    challenge = httpx.get(world.api_url + ROUTE)
    assert challenge.status_code == 402
    declared = json.loads(base64.b64decode(challenge.headers["payment-required"]))["extensions"]
    assert declared["payment-identifier"]["info"] == {"required": False}

    outcome = agent.fetch(base + ROUTE)

    assert outcome.status == 200 and json.loads(outcome.read_body()) == ANSWER
    assert outcome.payment is not None and outcome.payment.state == PaymentState.SETTLED
    (header,) = faulty.seen
    extension = sent_payload(header)["extensions"]["payment-identifier"]
    # The declaration echoed (the SDK server checks it), with the ledger row's identifier.
    assert extension["info"] == {"required": False, "id": identifier_for(outcome.payment.id)}
    assert outcome.payment.payment_header == header  # stored: a resend carries the same id
    assert outcome.payment.to_receipt()["evidence"]["payment_identifier"] == identifier_for(
        outcome.payment.id
    )


def test_answer_lost_after_settlement_then_the_retry_gets_the_cached_answer_and_pays_once(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    payee = Payee(world)
    faulty.mode = "fail_after_settle"  # the server settled and answered; the answer is cut

    with pytest.raises(PaidNotDelivered) as lost:
        agent.fetch(base + ROUTE, idempotency_key="job-lost")
    first = agent.payer.gate.ledger.get(lost.value.details["payment_id"])
    assert first is not None and first.state == PaymentState.SETTLED and not first.delivered

    faulty.mode = "forward"
    outcome = agent.fetch(base + ROUTE, idempotency_key="job-lost")

    # The same header went out again (same authorization, same identifier) and the server
    # answered from its cache: delivered, not replayed from our ledger, not paid again.
    assert len(faulty.seen) == 2 and faulty.seen[0] == faulty.seen[1]
    assert outcome.status == 200 and not outcome.replayed
    assert json.loads(outcome.read_body()) == ANSWER
    assert outcome.payment is not None and outcome.payment.id == first.id
    (row,) = agent.receipts()
    assert row.state == PaymentState.SETTLED and row.delivered and row.response_status == 200
    # The first attempt's row was settled from the chain's nonce alone; the cached answer
    # brings the settlement transaction, which moved exactly this payment.
    assert first.settlement_tx is None and row.settlement_tx is not None
    assert transfer_logs(world.rpc_url, row.settlement_tx) == [
        (world.usdc.address, row.payer, payee.address, payee.route.price_atomic)
    ]
    assert payee.paid_once()

    # Once delivered, a third call is answered from our own ledger, nothing sent.
    again = agent.fetch(base + ROUTE, idempotency_key="job-lost")
    assert again.replayed and json.loads(again.read_body()) == ANSWER and len(faulty.seen) == 2


def test_answer_lost_in_transit_then_the_resend_gets_the_cached_answer(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    """The connection dies with the answer (deadline): the row stays unknown; the resend with
    the same identifier is answered from the server's cache instead of refused as a replay."""
    faulty, base = proxy
    payee = Payee(world)
    faulty.mode = "hold_after_settle"

    with pytest.raises(PaidNotDelivered):
        agent.fetch(base + ROUTE, idempotency_key="job-held", timeout_seconds=2)
    (row,) = agent.receipts()
    assert row.state == PaymentState.UNKNOWN  # counted, outcome unproven

    faulty.mode = "forward"
    outcome = agent.fetch(base + ROUTE, idempotency_key="job-held")

    assert outcome.status == 200 and json.loads(outcome.read_body()) == ANSWER
    assert faulty.seen[0] == faulty.seen[-1]
    (row,) = agent.receipts()
    assert row.state == PaymentState.SETTLED and row.delivered
    assert payee.paid_once()


def test_killed_after_settlement_then_restarted_the_resend_gets_the_cached_answer(
    world: WorldInfo, home: Path, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    payee = Payee(world)
    faulty.mode = "hold_after_settle"
    child = spawn(home, base + ROUTE, "job-crash", "none")
    assert faulty.held.wait(timeout=60), "the paid request never reached the server"
    child.kill()
    killed(child)

    agent = Agent.open(home)  # its start-up reconciliation finds the payment settled on chain
    try:
        (left,) = agent.receipts()
        assert left.state == PaymentState.SETTLED and not left.delivered
        faulty.mode = "forward"
        outcome = agent.fetch(base + ROUTE, idempotency_key="job-crash")
        assert outcome.status == 200 and json.loads(outcome.read_body()) == ANSWER
        (row,) = agent.receipts()
        assert row.id == left.id and row.state == PaymentState.SETTLED and row.delivered
    finally:
        agent.close()
    assert faulty.seen[0] == faulty.seen[-1]
    assert payee.paid_once()


def test_identifier_used_for_another_payment_is_reported_as_a_conflict(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    payee = Payee(world)
    faulty.mode = "rewrite_identifier"  # both payments reach the server under one id
    faulty.identifier = "pay_conflict_0123456789abcdef"
    first = agent.fetch(base + ROUTE, idempotency_key="job-a")
    assert first.status == 200

    with pytest.raises(PaymentIdentifierConflict) as conflict:
        agent.fetch(base + ROUTE, idempotency_key="job-b")

    error = conflict.value
    assert error.reason == "payment_identifier_conflict" and error.details["status"] == 409
    # Ours, as we sent it (the proxy swapped it on the way).
    assert error.details["payment_identifier"] == identifier_for(error.details["payment_id"])
    assert error.to_dict()["next_step"].startswith("the server answered 409")
    second = agent.payer.gate.ledger.get(error.details["payment_id"])
    assert second is not None and second.id != first.payment.id  # type: ignore[union-attr]
    # The server took nothing from it; it stays counted until it expires (a middlebox holds it).
    assert second.state == PaymentState.UNKNOWN and second.response_status == 409
    # Nothing signed again: one header per fetch reached the proxy.
    assert len(faulty.seen) == 2 and len(agent.receipts()) == 2
    assert payee.paid_once()  # the first payment only


def test_a_server_without_the_extension_sees_no_change(
    world: WorldInfo, agent: Agent, proxy: tuple[FaultyProxy, str]
) -> None:
    faulty, base = proxy
    route = world.route("GET", "/v2/weather")
    challenge = httpx.get(world.api_url + route.path)
    declared = json.loads(base64.b64decode(challenge.headers["payment-required"]))["extensions"]
    assert set(declared) == {"bazaar"}  # its discovery info only: no payment-identifier

    outcome = agent.fetch(base + route.path)

    assert outcome.status == 200 and outcome.payment is not None
    assert outcome.payment.state == PaymentState.SETTLED
    (header,) = faulty.seen
    assert "extensions" not in sent_payload(header)  # the payload as before the extension
    assert "payment_identifier" not in (outcome.payment.to_receipt()["evidence"] or {})


def test_only_a_declared_extension_gets_an_identifier_and_only_it_is_echoed() -> None:
    """Pure helpers (no server): what a 402's ``extensions`` turns into in our payload."""
    row = "0123456789abcdef0123456789abcdef"
    declared = {"required": False}
    assert payment_extensions(None, row) is None
    assert payment_extensions({"bazaar": {"info": {}}}, row) is None
    assert payment_extensions({"payment-identifier": {"info": {"required": "no"}}}, row) is None
    echoed = payment_extensions({"bazaar": {"info": {}}, "payment-identifier": {"info": declared}}, row)
    assert echoed == {"payment-identifier": {"info": {"required": False, "id": "pay_" + row}}}

    def header(payload: object) -> str:
        return base64.b64encode(json.dumps(payload).encode()).decode()

    assert carried_identifier(header({"extensions": echoed})) == "pay_" + row
    assert carried_identifier(header({"x402Version": 2})) is None
    assert (
        carried_identifier(header({"extensions": {"payment-identifier": {"info": {"id": "short"}}}})) is None
    )
    assert carried_identifier("not base64 at all!") is None
    assert carried_identifier(None) is None
