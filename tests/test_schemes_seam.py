"""The scheme seam: the registry picks the module that pays an offer of the official SDK's
server, refuses a scheme it has no module for with the typed reason, and the flow names no
scheme module (it asks the registry). Against the local world's real SDK server."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import httpx
import pytest
from x402.http import (
    PAYMENT_REQUIRED_HEADER,
    decode_payment_required_header,
    encode_payment_required_header,
)
from x402.schemas import PaymentRequired

import x402_agent.flow
from x402_agent.challenge import Challenge, parse_challenge
from x402_agent.decision import PaymentContext
from x402_agent.devnet.info import RouteInfo, WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import NoAcceptableRequirement, PolicyDenied
from x402_agent.ledger import PaymentState, SQLiteLedger
from x402_agent.operations import Agent
from x402_agent.reasons import Reason
from x402_agent.schemes import for_record, resolve
from x402_agent.schemes.exact_eip3009 import ExactEip3009
from x402_agent.selection import rank
from x402_agent.spendgate import PolicyGate

FLOW = Path(x402_agent.flow.__file__)


def paid_route(world: WorldInfo, version: int) -> RouteInfo:
    return next(r for r in world.routes if r.version == version and r.method == "GET")


def challenge_of(route: RouteInfo) -> httpx.Response:
    answer = httpx.get(route.url, timeout=30)
    assert answer.status_code == 402
    return answer


def context(url: str) -> PaymentContext:
    empty = hashlib.sha256(b"").hexdigest()
    return PaymentContext("GET", url, httpx.URL(url).host, empty, hashlib.sha256(url.encode()).hexdigest())


@pytest.mark.parametrize("version", [2, 1])
def test_registry_picks_the_eip3009_module_for_the_sdk_servers_offer(world: WorldInfo, version: int) -> None:
    route = paid_route(world, version)
    answer = challenge_of(route)
    challenge = parse_challenge(answer.headers, answer.content, route.url)
    assert challenge.offers
    for offer in challenge.offers:
        module = resolve(offer)
        assert isinstance(module, ExactEip3009), module
        assert (module.scheme, module.family, module.transfer_method) == ("exact", "eip155", "eip3009")
        assert module.maximum(offer) == offer.amount


def test_a_paid_row_names_its_scheme_and_resolves_to_its_module(world: WorldInfo, tmp_path: Path) -> None:
    route = paid_route(world, 2)
    agent = Agent.open(provision_devnet_home(world, tmp_path / "home"))
    try:
        outcome = agent.verified(agent.fetch(route.url))
    finally:
        agent.close()
    paid = outcome.payment
    assert outcome.status == 200 and paid is not None and paid.state == PaymentState.SETTLED
    assert (paid.scheme, paid.credential) == ("exact", "eip3009")
    assert paid.settled_amount == paid.amount == route.price_atomic
    assert isinstance(for_record(paid), ExactEip3009)
    assert paid.to_receipt()["settled_amount"] == str(route.price_atomic)


def rewritten(answer: httpx.Response, url: str, **changes: object) -> Challenge:
    """The SDK server's own challenge with every offer changed (through the SDK's models)."""
    required = decode_payment_required_header(answer.headers[PAYMENT_REQUIRED_HEADER])
    assert isinstance(required, PaymentRequired)
    accepts = [offer.model_copy(update=changes) for offer in required.accepts]
    header = encode_payment_required_header(required.model_copy(update={"accepts": accepts}))
    return parse_challenge({PAYMENT_REQUIRED_HEADER: header}, b"", url)


@pytest.mark.parametrize(
    "changes",
    [
        # batch-settlement has a module now (tests/test_batch_payments.py); nobody serves this one.
        {"scheme": "deferred"},
        # exact over Permit2 and upto have modules now (tests/test_permit2_payments.py).
        {"extra": {"name": "USD Coin", "version": "2", "assetTransferMethod": "eip7710"}},
    ],
    ids=["unknown-scheme", "exact-unknown-method"],
)
def test_a_scheme_without_a_module_is_refused_with_the_typed_reason(
    world: WorldInfo, tmp_path: Path, changes: dict[str, object]
) -> None:
    route = paid_route(world, 2)
    challenge = rewritten(challenge_of(route), route.url, **changes)
    ledger = SQLiteLedger(tmp_path / "ledger.sqlite3")
    try:
        gate = PolicyGate(devnet_policy(world), ledger)
        with pytest.raises(NoAcceptableRequirement) as refused:
            rank(challenge, gate, context(route.url), None)
        assert refused.value.reason == Reason.UNSUPPORTED_SCHEME
        assert {r["reason"] for r in refused.value.details["rejected"]} == {Reason.UNSUPPORTED_SCHEME}
        assert ledger.recent() == []  # nothing reserved, nothing signed
    finally:
        ledger.close()


# Names only EIP-3009 code uses: none may appear in the flow.
_EIP3009_NAMES = ("3009", "TransferAuthorization", "SignedAuthorization", "TokenDomain", "authorizationState")


def test_flow_imports_no_scheme_module_by_name() -> None:
    tree = ast.parse(FLOW.read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            imported.append(module)
            imported.extend(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    # The registry is the flow's only door to the schemes...
    assert ".schemes" in imported
    scheme_modules = {p.stem for p in (FLOW.parent / "schemes").glob("*.py")} - {"__init__", "base"}
    assert "exact_eip3009" in scheme_modules
    for name in imported:
        parts = name.lstrip(".").split(".")
        assert not ("schemes" in parts and set(parts) & scheme_modules), name
        assert "x402.mechanisms" not in name, name
    # ...and no scheme's own names or constants appear in it.
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for marker in _EIP3009_NAMES:
        assert not [n for n in names if marker.lower() in n.lower()], marker
        assert not [s for s in strings if marker.lower() in s.lower()], marker
    assert not [s for s in strings if s.startswith("0x") and len(s) == 10], "a function selector"


def test_policy_names_the_schemes_an_asset_may_be_paid_with(world: WorldInfo, tmp_path: Path) -> None:
    policy = devnet_policy(world)
    # Unset, the field stays out of the canonical form: approvals of existing policies hold.
    assert all(rule.schemes is None for rule in policy.assets)
    assert b'"schemes"' not in policy.canonical_json()
    assert all(rule.allowed_schemes == ("exact",) for rule in policy.assets)
    only_upto = policy.model_copy(
        update={"assets": tuple(r.model_copy(update={"schemes": ("upto",)}) for r in policy.assets)}
    )
    assert b'"schemes":["upto"]' in only_upto.canonical_json() and only_upto.digest != policy.digest

    route = paid_route(world, 2)
    answer = challenge_of(route)
    challenge = parse_challenge(answer.headers, answer.content, route.url)
    ledger = SQLiteLedger(tmp_path / "ledger.sqlite3")
    try:
        assert rank(challenge, PolicyGate(policy, ledger), context(route.url), None)
        with pytest.raises(PolicyDenied) as refused:
            rank(challenge, PolicyGate(only_upto, ledger), context(route.url), None)
        assert refused.value.reason == Reason.SCHEME_NOT_ALLOWED
        assert ledger.recent() == []
    finally:
        ledger.close()
