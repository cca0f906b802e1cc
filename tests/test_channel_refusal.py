"""A channel (batch-settlement) offer the payer cannot sign is refused at selection: before any
reservation, top-up or signature. The smart-account hot wallet signs token transfers only, so it
pays a challenge's ``exact`` offer instead, or refuses a channel-only one as
``unsupported_scheme`` with nothing counted and nothing moved on chain.

Real parts: the session's local world (the SDK's batch-settlement server on /v2/batch, the SDK
server and facilitator on /v2/report), a smart-account home owned by the device simulator. The
world has no route offering a channel and an exact offer together, so a loopback server in this
test builds that 402 from the two real servers' own offers and forwards the payment to the real
exact route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chain_reads import rpc
from eth_account import Account
from eth_utils.crypto import keccak
from faulty_proxy import FaultyProxy
from x402.http import PAYMENT_REQUIRED_HEADER, decode_payment_required_header, encode_payment_required_header
from x402.schemas import PaymentRequired

from x402_agent.chain import ENTRY_POINT_V07
from x402_agent.chain.session_signer import SessionKeySigner
from x402_agent.chain.wallet import HotWallet
from x402_agent.devnet.batch import BATCH_PATH
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_smart_account_home
from x402_agent.devnet.served import ServedApp
from x402_agent.errors import NoAcceptableRequirement
from x402_agent.home import AgentHome
from x402_agent.ledger import PaymentState
from x402_agent.operations import Agent
from x402_agent.policy import Policy
from x402_agent.reasons import Reason
from x402_agent.schemes.batch_settlement import BatchSettlement
from x402_agent.schemes.exact_eip3009 import ExactEip3009
from x402_agent.schemes.exact_permit2 import ExactPermit2
from x402_agent.schemes.upto_permit2 import UptoPermit2
from x402_agent.settlement import topic_address
from x402_agent.signer import LocalKeySigner

EXACT_PATH = "/v2/report"  # 0.01 USDC: dearer than the channel's 0.001 per request
NO_CHANNELS = "the smart-account wallet cannot open payment channels; a plain-key home can"
USER_OP_EVENT = (
    "0x" + keccak(text="UserOperationEvent(bytes32,address,address,uint256,bool,uint256,uint256)").hex()
)


class MixedOffers:
    """A 402 offering the world's channel (first, cheaper) and its exact offer for /v2/report,
    both exactly as the real servers state them, naming this server as the resource; a payment
    is forwarded to the real /v2/report, which verifies and settles it."""

    def __init__(self, world: WorldInfo, url: str) -> None:
        self.world, self.url = world, url
        self.upstream = FaultyProxy(world.api_url)  # its honest forwarding only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() != "host"}
        if "payment-signature" in headers:
            status, out, content = await self.upstream.forward("GET", EXACT_PATH, headers, b"")
            await FaultyProxy.answer(send, status, out, content)
            return
        channel, exact = (
            self.offered(self.world.route("GET", path).url) for path in (BATCH_PATH, EXACT_PATH)
        )
        assert exact.resource is not None
        mixed = exact.model_copy(
            update={
                "accepts": [*channel.accepts, *exact.accepts],
                "resource": exact.resource.model_copy(update={"url": self.url + EXACT_PATH}),
            }
        )
        header = encode_payment_required_header(mixed)
        await FaultyProxy.answer(send, 402, {PAYMENT_REQUIRED_HEADER: header}, b"{}")

    @staticmethod
    def offered(url: str) -> PaymentRequired:
        answer = httpx.get(url)  # a blocking read of a loopback server: fine in a test's server
        assert answer.status_code == 402
        required = decode_payment_required_header(answer.headers[PAYMENT_REQUIRED_HEADER])
        assert isinstance(required, PaymentRequired)
        return required


@pytest.fixture(scope="module")
def mixed(world: WorldInfo) -> Iterator[ServedApp]:
    served = ServedApp(name="mixed-offers")
    served.start(MixedOffers(world, served.url))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def home(world: WorldInfo, mixed: ServedApp, tmp_path_factory: pytest.TempPathFactory) -> AgentHome:
    """A smart-account home whose policy allows channels (so only the payer's own inability to
    sign them refuses them) and fetching from the mixed server."""

    def policy(account: str) -> Policy:
        base = devnet_policy(world, account=account, also_fetch=(mixed.url,))
        usdc = base.assets[0].model_copy(
            update={"schemes": ("exact", "batch-settlement"), "max_channel_deposit": 150_000}
        )
        return base.model_copy(update={"assets": (usdc,)})

    return provision_smart_account_home(world, tmp_path_factory.mktemp("sa") / "home", policy=policy)


def _wallet(agent: Agent) -> HotWallet:
    assert isinstance(agent.payer.signer, HotWallet)
    return agent.payer.signer


def _user_operations(world: WorldInfo, account: str, since: int) -> list[Any]:
    """The EntryPoint's UserOperationEvents for ``account`` since block ``since`` (a top-up is one)."""
    found: list[Any] = rpc(
        world.rpc_url,
        "eth_getLogs",
        {
            "address": ENTRY_POINT_V07,
            "fromBlock": hex(since),
            "toBlock": "latest",
            "topics": [USER_OP_EVENT, None, topic_address(account)],
        },
    )
    return found


def test_schemes_answer_from_the_signers_capabilities() -> None:
    """Judged from what the signer can sign, with no I/O: a plain key signs every scheme; the
    smart account's session key signs token transfers (EIP-3009, Permit2), never channels."""
    plain = LocalKeySigner(Account.create())
    smart = SessionKeySigner(Account.create().address, bytes(Account.create().key))
    for module in (ExactEip3009(), ExactPermit2(), UptoPermit2(), BatchSettlement()):
        assert module.refusal_for(plain) is None, module.scheme
    for module in (ExactEip3009(), ExactPermit2(), UptoPermit2()):
        assert module.refusal_for(smart) is None, module.scheme
    refused = BatchSettlement().refusal_for(smart)
    assert refused is not None and not refused.allowed
    assert refused.reason == Reason.UNSUPPORTED_SCHEME and NO_CHANNELS in refused.message


def test_a_channel_only_route_is_refused_before_anything_is_reserved_or_topped_up(
    world: WorldInfo, home: AgentHome
) -> None:
    route = world.route("GET", BATCH_PATH)
    with Agent.open(home) as agent:
        wallet = _wallet(agent)
        ledger = agent.payer.gate.ledger
        rows_before = ledger.recent()
        funds_before = wallet.funds()
        block = int(rpc(world.rpc_url, "eth_blockNumber"), 16)

        with pytest.raises(NoAcceptableRequirement) as refused:
            agent.fetch(route.url)

        assert refused.value.reason == Reason.UNSUPPORTED_SCHEME
        [rejected] = refused.value.details["rejected"]
        assert rejected["scheme"] == "batch-settlement" and NO_CHANNELS in rejected["message"]
        assert ledger.recent() == rows_before  # no row at all: not even a released one
        assert [r for r in ledger.recent() if r.url == route.url] == []
        assert ledger.channels.all() == []
        assert wallet.top_ups == []
        assert wallet.funds() == funds_before  # hot balance, vault balance, what it may pull
        assert _user_operations(world, wallet.account, block) == []  # the EntryPoint saw nothing


def test_quote_of_the_channel_route_says_unsupported_scheme(world: WorldInfo, home: AgentHome) -> None:
    route = world.route("GET", BATCH_PATH)
    with Agent.open(home) as agent:
        rows_before = agent.payer.gate.ledger.recent()
        quote = agent.quote(route.url)
        assert quote.payment_required and not quote.allowed
        assert quote.reason == Reason.UNSUPPORTED_SCHEME
        [option] = quote.options
        assert option["scheme"] == "batch-settlement" and not option["allowed"]
        assert option["reason"] == Reason.UNSUPPORTED_SCHEME
        assert agent.payer.gate.ledger.recent() == rows_before  # a quote pays nothing


def test_a_cheaper_channel_beside_an_exact_offer_pays_the_exact_one(
    world: WorldInfo, home: AgentHome, mixed: ServedApp
) -> None:
    url = mixed.url + EXACT_PATH
    exact = world.route("GET", EXACT_PATH)
    with Agent.open(home) as agent:
        rows_before = agent.payer.gate.ledger.recent()
        quote = agent.quote(url)
        assert [o["scheme"] for o in quote.options] == ["batch-settlement", "exact"]
        assert quote.allowed and quote.chosen is not None and quote.chosen["scheme"] == "exact"

        outcome = agent.verified(agent.fetch(url))

        assert outcome.status == 200, outcome.content
        paid = outcome.payment
        assert paid is not None and paid.state == PaymentState.SETTLED
        assert (paid.scheme, paid.amount, paid.payer) == ("exact", exact.price_atomic, _wallet(agent).account)
        assert outcome.confirmed_on_chain
        # one new row, the exact payment's: the channel offer was never reserved
        new = [r for r in agent.payer.gate.ledger.recent() if r not in rows_before]
        assert [(r.id, r.scheme, r.state) for r in new] == [(paid.id, "exact", PaymentState.SETTLED)]
