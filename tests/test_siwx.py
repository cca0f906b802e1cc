"""Re-access instead of repayment: sign-in-with-x against the official SDK server.

The local world's ``/v2/siwx`` route is served by the SDK's payment middleware with the SDK's
sign-in-with-x server extension (its settle hook records the payer, its request hook lets a
recorded payer in on a signed message; x402_agent.devnet.paid_api). The agent pays once, keeps
the entitlement in its ledger, and signs in instead of paying again: the chain shows no second
transfer and the ledger a zero-cost access. When the entitlement ends (the policy's bound on
our clock, or the server's own expiry) the agent pays again.

The server-expiry test runs its own SDK server (same code as the world's, its own facilitator
key) whose entitlement storage reads a clock the test moves: the server's entitlement ends
without waiting. The hostile server is ours (tests can only get a hostile 402 from one): it
records every sign-in header it is sent and always answers 402.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chain_reads import rpc, token_balance
from eth_account import Account
from eth_utils.crypto import keccak
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from test_smart_account_payments import (
    SmartWorld,
    sw,  # noqa: F401 (the fixture: a funded X402Account)
)

from x402_agent.agent_tools import AgentTools
from x402_agent.chain.account import account_contract
from x402_agent.chain.session_signer import SessionKeySigner
from x402_agent.client import X402Client
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.paid_api import (
    SIWX_STATEMENT,
    ChainSettlement,
    build_facilitators,
    create_app,
    v2_routes,
)
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.devnet.served import ServedApp
from x402_agent.devnet.siwx_storage import ExpiringSIWxStorage
from x402_agent.devnet.world import key_hex
from x402_agent.errors import NoAcceptableRequirement
from x402_agent.flow import FetchRequest, Payer
from x402_agent.ledger import PaymentState, open_ledger
from x402_agent.ledger.entitlements import Entitlement, NewEntitlement
from x402_agent.ledger.sqlite import SQLiteLedger
from x402_agent.operations import Agent
from x402_agent.policy import Policy, ReAccess
from x402_agent.reaccess import SIGN_IN_WITH_X, SignInRefused, resource_of, sign_in_info
from x402_agent.signer import eip191_hash
from x402_agent.spendgate import PolicyGate

ROUTE = "/v2/siwx"
CLI = [sys.executable, "-m", "x402_agent.cli"]
MAGIC, INVALID = bytes.fromhex("1626ba7e"), bytes.fromhex("ffffffff")
ANSWER = {"city": "Braga", "temperature_c": 16.0, "paid_with": "a payment or a sign-in"}


class Balances:
    """The payer's and the route's payee's USDC, read from the chain."""

    def __init__(self, world: WorldInfo, payer: str, payee: str) -> None:
        self.world, self.payer, self.payee = world, payer, payee

    def now(self) -> tuple[int, int]:
        read = token_balance
        return (
            read(self.world.rpc_url, self.world.usdc.address, self.payer),
            read(self.world.rpc_url, self.world.usdc.address, self.payee),
        )


def open_agent(world: WorldInfo, root: Path, policy: Policy) -> Agent:
    return Agent.open(provision_devnet_home(world, root, policy).root)


@pytest.fixture
def agent(world: WorldInfo, tmp_path: Path) -> Iterator[Agent]:
    agent = open_agent(world, tmp_path / "home", devnet_policy(world))
    yield agent
    agent.close()


def test_paid_once_then_fetched_again_by_sign_in_with_no_new_payment(world: WorldInfo, agent: Agent) -> None:
    route = world.route("GET", ROUTE)
    assert route.pay_to is not None
    balances = Balances(world, world.payer_address, route.pay_to)
    before = balances.now()

    paid = agent.fetch(world.api_url + ROUTE)

    assert paid.status == 200 and json.loads(paid.read_body()) == ANSWER
    assert paid.payment is not None and paid.payment.state == PaymentState.SETTLED
    assert paid.sign_in is None
    price = route.price_atomic
    after_payment = balances.now()
    assert after_payment == (before[0] - price, before[1] + price)
    ledger = agent.payer.gate.ledger
    (entitlement,) = ledger.entitlements.recent()
    assert (entitlement.url, entitlement.payer, entitlement.network) == (
        world.api_url + ROUTE,
        world.payer_address,
        world.network,
    )
    assert entitlement.payment_id == paid.payment.id and entitlement.statement == SIWX_STATEMENT
    # Unset in the policy: re-access is on, for a day at most.
    assert entitlement.expires_at == pytest.approx(entitlement.created_at + 86_400)

    again = [agent.fetch(world.api_url + ROUTE) for _ in range(3)]

    for outcome in again:
        assert outcome.status == 200 and json.loads(outcome.read_body()) == ANSWER
        assert outcome.payment is None and outcome.sign_in is not None
        assert outcome.sign_in.entitlement_id == entitlement.id and outcome.sign_in.response_status == 200
    assert balances.now() == after_payment  # nothing moved on chain
    assert len(ledger.recent()) == 1  # still the one payment
    sign_ins = ledger.entitlements.sign_ins()
    assert len(sign_ins) == 3 and all(s.to_receipt()["amount"] == "0" for s in sign_ins)
    assert {s.to_receipt()["kind"] for s in sign_ins} == {"sign-in"}
    used = ledger.entitlements.get(entitlement.id)
    assert used is not None and used.uses == 3


def test_receipts_budget_and_the_tools_show_sign_ins_and_entitlements(
    world: WorldInfo, tmp_path: Path
) -> None:
    home = provision_devnet_home(world, tmp_path / "home", devnet_policy(world)).root
    url = world.api_url + ROUTE

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "X402_AGENT_HOME": str(home)}
        done = subprocess.run(CLI + list(args), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    assert "paid 0.001 USDC" in cli("fetch", url).stderr
    again = json.loads(cli("fetch", "--json", url).stdout)
    assert again["receipt"] is None and again["sign_in"]["kind"] == "sign-in"
    assert json.loads(again["text"]) == ANSWER

    (sign_in,) = json.loads(cli("receipts", "--sign-ins", "--format", "json").stdout)
    assert (sign_in["kind"], sign_in["amount"], sign_in["url"]) == ("sign-in", "0", url)
    (payment,) = json.loads(cli("receipts", "--format", "json").stdout)  # payments: still one
    table = cli("receipts").stdout
    assert "sign-in" in table and payment["id"] not in table
    budget = json.loads(cli("budget", "--json").stdout)
    (entitlement,) = budget["entitlements"]
    assert (entitlement["url"], entitlement["paid_by"], entitlement["sign_ins"]) == (url, payment["id"], 1)
    assert "paid access, signed in 1x" in cli("budget").stdout

    tools = AgentTools.open(home)
    try:
        fetched = tools.fetch(url)
        assert fetched.signed_in and not fetched.paid and json.loads(fetched.body) == ANSWER
        # The async path (the MCP server's): the flow runs in worker threads, signing included.
        fetched = asyncio.run(tools.afetch(url))
        assert fetched.signed_in and not fetched.paid and json.loads(fetched.body) == ANSWER
        (listed,) = tools.budget().entitlements
        assert listed.sign_ins == 3 and listed.paid_by == payment["id"]
        listing = tools.receipts()
        assert [r.id for r in listing.receipts] == [payment["id"]]
        assert len(listing.sign_ins) == 3 and {s.amount for s in listing.sign_ins} == {"0"}
    finally:
        tools.close()


def test_after_the_policy_bound_the_agent_pays_again(world: WorldInfo, tmp_path: Path) -> None:
    policy = devnet_policy(world).model_copy(update={"reaccess": ReAccess(max_entitlement_seconds=60)})
    agent = open_agent(world, tmp_path / "home", policy)
    try:
        first = agent.fetch(world.api_url + ROUTE)
        assert first.payment is not None
        (entitlement,) = agent.payer.gate.ledger.entitlements.recent()
        assert entitlement.expires_at == pytest.approx(entitlement.created_at + 60)
        assert agent.fetch(world.api_url + ROUTE).sign_in is not None

        # 61 s later on the agent's clock: the entitlement is over, the server is not asked.
        agent.payer.clock = lambda: time.time() + 61
        later = agent.fetch(world.api_url + ROUTE)

        assert later.status == 200 and later.sign_in is None
        assert later.payment is not None and later.payment.state == PaymentState.SETTLED
        assert later.payment.id != first.payment.id
        entitlements = agent.payer.gate.ledger.entitlements.recent()
        assert len(entitlements) == 2  # the second payment bought a new one
        assert agent.fetch(world.api_url + ROUTE).sign_in is not None
    finally:
        agent.close()


def test_re_access_off_in_the_policy_pays_every_time(world: WorldInfo, tmp_path: Path) -> None:
    policy = devnet_policy(world).model_copy(update={"reaccess": ReAccess(sign_in=False)})
    agent = open_agent(world, tmp_path / "home", policy)
    try:
        outcomes = [agent.fetch(world.api_url + ROUTE) for _ in range(2)]
        assert all(o.payment is not None and o.sign_in is None for o in outcomes)
        assert agent.payer.gate.ledger.entitlements.recent() == []
    finally:
        agent.close()


class MovableClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def own_server(world: WorldInfo) -> Iterator[tuple[str, MovableClock, str]]:
    """The SDK server with the sign-in route, its entitlements on a clock the test moves; a
    facilitator key of its own (funded here), so it never races the world's for nonces."""
    clock = MovableClock()
    facilitator = Account.create()
    rpc(world.rpc_url, "anvil_setBalance", facilitator.address, hex(10**18))
    payee = Account.create().address
    served = ServedApp(name="siwx-own")
    try:
        routes = [
            r
            for r in v2_routes(
                served.url,
                network=world.network,
                usdc=world.usdc,
                eurc=world.eurc,
                alt_network=world.alt_network,
                alt_usdc=world.alt_usdc,
                payees={**world.payees, "siwx": payee},
            )
            if r.path == ROUTE
        ]
        facilitators = build_facilitators(
            ChainSettlement(world.network, world.rpc_url, key_hex(facilitator)),
            ChainSettlement(world.alt_network, world.alt_rpc_url, key_hex(facilitator)),
        )
        storage = ExpiringSIWxStorage(ttl_seconds=600, clock=clock)
        served.start(create_app(routes, facilitators, siwx_storage=storage))
        yield served.url, clock, payee
    finally:
        served.stop()


def test_when_the_server_s_entitlement_expires_the_agent_pays_again(
    world: WorldInfo, tmp_path: Path, own_server: tuple[str, MovableClock, str]
) -> None:
    base, server_clock, payee = own_server
    agent = open_agent(world, tmp_path / "home", devnet_policy(world, also_fetch=[base]))
    balances = Balances(world, world.payer_address, payee)
    try:
        before = balances.now()
        first = agent.fetch(base + ROUTE)
        assert first.payment is not None
        signed_in = agent.fetch(base + ROUTE)
        assert signed_in.sign_in is not None and signed_in.payment is None
        assert balances.now() == (before[0] - 1_000, before[1] + 1_000)

        server_clock.offset = 601  # the server's entitlement (10 minutes) is over; ours is not
        refused_then_paid = agent.fetch(base + ROUTE)

        assert refused_then_paid.status == 200 and json.loads(refused_then_paid.read_body()) == ANSWER
        assert refused_then_paid.sign_in is None and refused_then_paid.payment is not None
        assert balances.now() == (before[0] - 2_000, before[1] + 2_000)
        ledger = agent.payer.gate.ledger
        ended, renewed = sorted(ledger.entitlements.recent(), key=lambda e: e.created_at)
        assert ended.end_reason == "server_refused" and ended.uses == 1
        assert renewed.payment_id == refused_then_paid.payment.id and renewed.ended_at is None
        # The new payment bought a new entitlement, which the server honours again.
        assert agent.fetch(base + ROUTE).sign_in is not None
        assert balances.now() == (before[0] - 2_000, before[1] + 2_000)
    finally:
        agent.close()


# ---- the ledger keeps entitlements on both backends ----------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_entitlements_and_sign_ins_in_either_ledger(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    spec = request.getfixturevalue("postgres_url") if backend == "postgres" else "ledger.sqlite3"
    ledger = open_ledger(spec, tmp_path)
    try:
        table = ledger.entitlements
        new = NewEntitlement("http://h:1/r?q=1", "h:1", "eip155:84532", "0xPayer", "Sign in", "pay-1")
        bought = table.add(new, 1_000.0, 1_060.0)
        assert table.live(new.url, new.payer, 1_059.0) == bought
        assert table.live(new.url, new.payer, 1_060.0) is None  # expired at its bound
        assert table.live(new.url, "0xOther", 1_001.0) is None
        used = table.record_sign_in(
            bought,
            method="GET",
            url=new.url,
            session="s",
            now=1_010.0,
            response_status=200,
            response_content_type="application/json",
            response_body_sha256="ab" * 32,
        )
        assert table.sign_ins() == [used] and used.to_receipt()["kind"] == "sign-in"
        assert table.active(1_020.0)[0].uses == 1
        table.end(bought, "server_refused", 1_030.0)
        assert table.live(new.url, new.payer, 1_031.0) is None and table.active(1_031.0) == []
        ended = table.get(bought.id)
        assert ended is not None and (ended.end_reason, ended.ended_at) == ("server_refused", 1_030.0)
    finally:
        ledger.close()


# ---- the smart account: its session key signs in through the account's ERC-1271 check ----------


def siwe_message(domain: str, address: str) -> str:
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\nSign in\n\n"
        f"URI: http://{domain}/v2/siwx\nVersion: 1\nChain ID: 84532\nNonce: 0123456789abcdef\n"
        f"Issued At: {_now_iso()}"
    )


def test_the_smart_account_pays_once_then_signs_in_with_its_session_key(
    world: WorldInfo,
    sw: SmartWorld,  # noqa: F811
    tmp_path: Path,
) -> None:
    route = world.route("GET", ROUTE)
    assert route.pay_to is not None
    policy = devnet_policy(world).model_copy(update={"account": sw.account})
    gate = PolicyGate(policy, SQLiteLedger(tmp_path / "ledger.sqlite"))
    balances = Balances(world, sw.account, route.pay_to)
    before = balances.now()
    payer = Payer(gate=gate, signer=sw.session, rpc_urls={world.network: world.rpc_url})
    with X402Client(payer) as client:
        paid = client.fetch(FetchRequest(world.api_url + ROUTE))
        assert paid.status == 200 and paid.payment is not None
        assert paid.payment.state == PaymentState.SETTLED and paid.payment.payer == sw.account
        assert balances.now() == (before[0] - route.price_atomic, before[1] + route.price_atomic)

        again = client.fetch(FetchRequest(world.api_url + ROUTE))

        assert again.status == 200 and json.loads(again.read_body()) == ANSWER
        assert again.payment is None and again.sign_in is not None
        assert balances.now() == (before[0] - route.price_atomic, before[1] + route.price_atomic)
        (entitlement,) = gate.ledger.entitlements.recent()
        assert entitlement.payer == sw.account and entitlement.uses == 1


def test_the_account_accepts_a_session_key_sign_in_only_as_itself(
    world: WorldInfo,
    sw: SmartWorld,  # noqa: F811
) -> None:
    """isValidSignature on the chain: the sign-in envelope is good for its own message's EIP-191
    hash, naming this account; never for another digest (a payment's), another address, a
    message that is not a sign-in, or a key the account does not know."""
    contract = account_contract(sw.w3, sw.account)

    def answer(digest: bytes, envelope: str) -> bytes:
        result: bytes = contract.functions.isValidSignature(digest, bytes.fromhex(envelope[2:])).call()
        return result

    message = siwe_message("127.0.0.1:4021", sw.account)
    envelope = sw.session.sign_in_message(message)
    assert answer(eip191_hash(message), envelope) == MAGIC
    lower = message.replace(sw.account, sw.account.lower())  # any case of the address
    assert answer(eip191_hash(lower), sw.session.sign_in_message(lower)) == MAGIC

    assert answer(keccak(b"a transfer's EIP-712 digest"), envelope) == INVALID
    other = message.replace(sw.account, Account.create().address)
    assert answer(eip191_hash(other), sw.session.sign_in_message(other)) == INVALID
    not_sign_in = message.replace("wants you to sign in", "wants you to approve")
    assert answer(eip191_hash(not_sign_in), sw.session.sign_in_message(not_sign_in)) == INVALID
    stranger = SessionKeySigner(sw.account, bytes(Account.create().key))
    assert answer(eip191_hash(message), stranger.sign_in_message(message)) == INVALID


# ---- a hostile server: sign-in challenges the agent must not sign -------------------------------


def _now_iso(offset: float = 0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).isoformat().replace("+00:00", "Z")


def honest_declaration(url: str, network: str, statement: str | None = "Sign in") -> dict[str, Any]:
    """What the SDK server declares for ``url`` (the shape of x402's sign-in-with-x 402)."""
    host = url.split("/")[2]
    info: dict[str, Any] = {
        "domain": host,
        "uri": url,
        "version": "1",
        "nonce": "0123456789abcdef0123456789abcdef",
        "issuedAt": _now_iso(),
        "expirationTime": _now_iso(300),
        "resources": [url],
    }
    if statement is not None:
        info["statement"] = statement
    return {"info": info, "supportedChains": [{"chainId": network, "type": "eip191"}], "schema": {}}


def _entitlement(url: str, network: str, statement: str | None = "Sign in") -> Entitlement:
    host = url.split("/")[2]
    return Entitlement(
        url=url,
        domain=host,
        network=network,
        payer="0x" + "11" * 20,
        statement=statement,
        payment_id="p",
        expires_at=time.time() + 3600,
    )


def _info(declaration: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = declaration["info"]
    return info


HOSTILE: dict[str, Any] = {
    "domain": lambda d: _info(d).update(domain="bank.example"),
    "uri": lambda d: _info(d).update(uri="https://bank.example/login"),
    "resources": lambda d: _info(d).update(resources=[_info(d)["uri"], "https://bank.example/transfer"]),
    "statement": lambda d: _info(d).update(statement="I approve transferring all my funds"),
    "chain": lambda d: d.update(supportedChains=[{"chainId": "eip155:1", "type": "eip191"}]),
    "time": lambda d: _info(d).update(issuedAt=_now_iso(86_400 * 365)),
    "malformed": lambda d: _info(d).update(nonce="short"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_a_sign_in_naming_anything_but_the_fetched_resource_is_not_signed(attack: str) -> None:
    url, network = "http://127.0.0.1:4021/v2/siwx", "eip155:84532"
    entitlement = _entitlement(url, network)
    declaration = honest_declaration(url, network)
    assert sign_in_info(declaration, url, entitlement, time.time())["chainId"] == network
    HOSTILE[attack](declaration)
    with pytest.raises(SignInRefused) as refused:
        sign_in_info(declaration, url, entitlement, time.time())
    assert refused.value.reason == attack


class HostileServer:
    """Answers every request 402 with a sign-in-with-x challenge (as the test shapes it) and
    an offer no policy here pays (an unknown token); records the sign-in headers it is sent."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.url = ""
        self.attack: str | None = None
        self.sign_ins: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if SIGN_IN_WITH_X in request.headers:
            self.sign_ins.append(request.headers[SIGN_IN_WITH_X])
        url = self.url + request.url.path
        declaration = honest_declaration(url, self.network, SIWX_STATEMENT)
        if self.attack is not None:
            HOSTILE[self.attack](declaration)
        required = {
            "x402Version": 2,
            "error": "payment required",
            "resource": {"url": url, "description": "", "mimeType": "application/json"},
            "accepts": [
                {
                    "scheme": "exact",
                    "network": self.network,
                    "amount": "1000",
                    "asset": "0x" + "22" * 20,
                    "payTo": "0x" + "33" * 20,
                    "maxTimeoutSeconds": 60,
                    "extra": {"name": "Not A Token", "version": "1"},
                }
            ],
            "extensions": {SIGN_IN_WITH_X: declaration},
        }
        header = base64.b64encode(json.dumps(required).encode()).decode()
        response: Response = JSONResponse({}, status_code=402, headers={"PAYMENT-REQUIRED": header})
        await response(scope, receive, send)


@pytest.fixture
def hostile(world: WorldInfo) -> Iterator[HostileServer]:
    server = HostileServer(world.network)
    with ServedApp(server, "siwx-hostile") as served:
        server.url = served.url
        yield server


@pytest.mark.parametrize("attack", [None, "domain", "uri", "resources", "chain", "statement"])
def test_a_hostile_server_gets_no_sign_in_for_another_site(
    world: WorldInfo,
    tmp_path: Path,
    hostile: HostileServer,
    attack: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent holds a live entitlement for the hostile server's URL (as if it had paid it);
    the server's challenge names another site, chain or statement: nothing is signed or sent,
    and no offer of it can be paid (an unknown token). The control
    (no attack) shows the same server does get a sign-in when the challenge is honest."""
    hostile.attack = attack
    agent = open_agent(world, tmp_path / "home", devnet_policy(world, also_fetch=[hostile.url]))
    url = hostile.url + ROUTE
    try:
        agent.payer.gate.ledger.entitlements.add(
            NewEntitlement(
                url=resource_of(url),
                domain=url.split("/")[2],
                network=world.network,
                payer=agent.payer.signer.address,
                statement=SIWX_STATEMENT,
                payment_id="paid-earlier",
            ),
            time.time(),
            time.time() + 3600,
        )
        with pytest.raises(NoAcceptableRequirement):
            agent.fetch(url)
        if attack is None:
            (header,) = hostile.sign_ins
            sent = json.loads(base64.b64decode(header))
            assert sent["domain"] == url.split("/")[2] and sent["address"] == world.payer_address
            (ended,) = agent.payer.gate.ledger.entitlements.recent()
            assert ended.end_reason == "server_refused"  # it answered 402 to the sign-in
        else:
            assert hostile.sign_ins == []
            assert f"({attack}:" in caplog.text and "paying as usual" in caplog.text
            (kept,) = agent.payer.gate.ledger.entitlements.recent()
            assert kept.ended_at is None
    finally:
        agent.close()
