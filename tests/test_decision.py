"""The pure policy decision: every refusal code, the exact boundaries, remaining budgets, clocks
that go backwards, and properties over random policies. No I/O anywhere in this file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from x402_agent.challenge import Offer
from x402_agent.decision import Decision, PaymentContext, Usage, decide, session_rule
from x402_agent.policy import DEFAULT_SESSION, Policy

USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
TUSDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
WETH = "0x4200000000000000000000000000000000000006"
OTHER_TOKEN = "0x5555555555555555555555555555555555555555"
PAYEE = "0x1111111111111111111111111111111111111111"
OTHER_PAYEE = "0x2222222222222222222222222222222222222222"
BASE, BASE_SEPOLIA, OPTIMISM, MAINNET = "eip155:8453", "eip155:84532", "eip155:10", "eip155:1"
NOW = 1_780_000_000.0
URL = "https://api.example.com/v1/paid"

CAP, DAILY, ALLOWANCE = 100_000, 1_000_000, 500_000  # 0.1, 1 and 0.5 USDC

REFUSALS = {
    "circuit_open",
    "host_denied",
    "host_not_allowed",
    "network_denied",
    "network_not_allowed",
    "unknown_asset",
    "payee_denied",
    "payee_not_allowed",
    "per_request_cap_exceeded",
    "rate_limited",
    "daily_limit_exceeded",
    "session_unknown",
    "session_expired",
    "session_scope",
    "session_asset_not_allowed",
    "session_allowance_exceeded",
}


# --- builders -----------------------------------------------------------------------------


def usdc(**fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "network": BASE,
        "address": USDC,
        "symbol": "USDC",
        "decimals": 6,
        "eip712_name": "USD Coin",
        "eip712_version": "2",
        "per_request_max": CAP,
        "daily_max": DAILY,
    }
    return {**rule, **fields}


def tusdc(**fields: Any) -> dict[str, Any]:
    return usdc(network=BASE_SEPOLIA, address=TUSDC, symbol="tUSDC", eip712_name="USDC", **fields)


def weth(**fields: Any) -> dict[str, Any]:
    return usdc(
        address=WETH, symbol="WETH", decimals=18, eip712_name="Wrapped Ether", eip712_version="1", **fields
    )


def session(allowance: dict[str, int] | None = None, lifetime: int = 3600, **scope: Any) -> dict[str, Any]:
    return {"lifetime_seconds": lifetime, "allowance": allowance or {"USDC": ALLOWANCE}, "scope": scope}


def make_policy(*assets: dict[str, Any], **fields: Any) -> Policy:
    return Policy.model_validate({"version": 1, "assets": list(assets) or [usdc()], **fields})


def with_sessions(*assets: dict[str, Any], **sessions: dict[str, Any]) -> Policy:
    return make_policy(*assets, sessions=sessions)


@dataclass(frozen=True)
class FakeOffer:
    """Anything with network/asset/amount/pay_to is an offer for decide()."""

    network: str = BASE
    asset: str = USDC
    amount: int = 10_000
    pay_to: str = PAYEE


def offer(amount: int = 10_000, **fields: Any) -> FakeOffer:
    return FakeOffer(amount=amount, **fields)


def context(url: str = URL, session: str | None = None, profile: str | None = None) -> PaymentContext:
    # As the flow builds it: the host is the URL's lower-cased host name.
    return PaymentContext(
        method="GET",
        url=url,
        host=(urlsplit(url).hostname or "").lower(),
        request_body_sha256="0" * 64,
        request_fingerprint="f" * 64,
        session=session,
        session_profile=profile,
    )


def in_session(url: str = URL, profile: str | None = None) -> PaymentContext:
    return context(url, session="conn-1", profile=profile)


def refused(decision: Decision, reason: str) -> Decision:
    assert decision.reason == reason, decision
    assert decision.allowed is False
    assert decision.needs_approval is False
    assert decision.message
    return decision


def allowed(decision: Decision) -> Decision:
    assert decision.allowed is True, decision
    assert decision.reason == "allowed"
    return decision


# --- allowed ----------------------------------------------------------------------------------


def test_allowed_payment_reports_what_would_remain() -> None:
    d = allowed(decide(make_policy(), offer(10_000), context(), Usage(daily_spent=250_000), NOW))
    assert d.needs_approval is False
    assert d.asset is not None and d.asset.symbol == "USDC"
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "0.75 USDC"}


def test_a_real_offer_is_decided_like_any_offer_like() -> None:
    real = Offer(
        index=0,
        x402_version=2,
        scheme="exact",
        network=BASE,
        chain_id=8453,
        asset=USDC,
        amount=10_000,
        pay_to=PAYEE,
        max_timeout_seconds=60,
        extra={},
        requirement=None,
    )  # type: ignore[arg-type]
    policy = make_policy()
    assert decide(policy, real, context(), Usage(), NOW) == decide(
        policy, offer(10_000), context(), Usage(), NOW
    )


def test_no_daily_limit_means_no_daily_budget() -> None:
    d = allowed(
        decide(make_policy(usdc(daily_max=None)), offer(CAP), context(), Usage(daily_spent=2**62), NOW)
    )
    assert d.remaining == {"per_request": "0.1 USDC"}


@pytest.mark.parametrize(("amount", "needs"), [(49_999, False), (50_000, False), (50_001, True), (CAP, True)])
def test_above_approval_threshold_is_allowed_but_needs_approval(amount: int, needs: bool) -> None:
    d = allowed(decide(make_policy(usdc(approval_above=50_000)), offer(amount), context(), Usage(), NOW))
    assert d.needs_approval is needs


def test_approval_is_not_asked_for_a_payment_that_is_refused_anyway() -> None:
    policy = make_policy(usdc(approval_above=50_000))
    d = refused(
        decide(policy, offer(60_000), context(), Usage(daily_spent=DAILY), NOW), "daily_limit_exceeded"
    )
    assert d.needs_approval is False


def test_asset_and_payee_matching_ignore_address_case() -> None:
    policy = make_policy(payees={"allow": [USDC]})  # any address will do as a payee here
    allowed(
        decide(
            policy,
            offer(asset=USDC.lower(), pay_to=USDC.upper().replace("0X", "0x")),
            context(),
            Usage(),
            NOW,
        )
    )


# --- one test per refusal code -------------------------------------------------------------


def test_circuit_open() -> None:
    policy = make_policy(circuit_breaker={"max_consecutive_failures": 3})
    d = refused(decide(policy, offer(), context(), Usage(consecutive_failures=3), NOW), "circuit_open")
    assert d.remaining == {} and d.asset is None
    allowed(decide(policy, offer(), context(), Usage(consecutive_failures=2), NOW))


def test_circuit_open_comes_before_everything_else() -> None:
    policy = make_policy(circuit_breaker={"max_consecutive_failures": 1}, hosts={"deny": ["*.com"]})
    refused(
        decide(policy, offer(10**30, asset=OTHER_TOKEN), context(), Usage(consecutive_failures=1), NOW),
        "circuit_open",
    )


def test_host_denied() -> None:
    policy = make_policy(hosts={"allow": ["*.example.com"], "deny": ["api.example.com"]})
    d = refused(decide(policy, offer(), context(), Usage(), NOW), "host_denied")  # deny wins
    assert d.remaining == {}
    refused(decide(policy, offer(), context("https://API.Example.COM./x"), Usage(), NOW), "host_denied")


def test_host_not_allowed() -> None:
    policy = make_policy(hosts={"allow": ["*.example.com"]})
    refused(decide(policy, offer(), context("https://example.com/paid"), Usage(), NOW), "host_not_allowed")
    refused(
        decide(policy, offer(), context("https://api.example.com.evil.net/"), Usage(), NOW),
        "host_not_allowed",
    )
    allowed(decide(policy, offer(), context("https://a.b.example.com/"), Usage(), NOW))


def test_empty_host_allow_list_allows_no_host() -> None:
    refused(decide(make_policy(hosts={"allow": []}), offer(), context(), Usage(), NOW), "host_not_allowed")


def test_network_denied() -> None:
    policy = make_policy(networks={"deny": [MAINNET]})
    refused(decide(policy, offer(network=MAINNET), context(), Usage(), NOW), "network_denied")


def test_network_not_allowed() -> None:
    policy = make_policy(networks={"allow": [BASE]})
    d = refused(decide(policy, offer(network=OPTIMISM), context(), Usage(), NOW), "network_not_allowed")
    assert d.remaining == {}
    refused(
        decide(policy, offer(network="solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"), context(), Usage(), NOW),
        "network_not_allowed",
    )


@pytest.mark.parametrize(
    "bad",
    [
        offer(asset=OTHER_TOKEN),  # not listed
        offer(network=BASE_SEPOLIA),  # listed address, other network
        offer(network="solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp", asset="EPjFWdd5AufqSSqeM2qN1xzybapC8"),
    ],
    ids=["other-token", "other-network", "non-evm"],
)
def test_unknown_asset(bad: FakeOffer) -> None:
    d = refused(decide(make_policy(), bad, context(), Usage(), NOW), "unknown_asset")
    assert d.asset is None and d.remaining == {}


def test_payee_denied() -> None:
    policy = make_policy(payees={"deny": [OTHER_PAYEE]})
    d = refused(decide(policy, offer(pay_to=OTHER_PAYEE), context(), Usage(), NOW), "payee_denied")
    assert d.asset is not None and d.asset.symbol == "USDC"
    assert d.remaining == {}


def test_payee_not_allowed() -> None:
    policy = make_policy(payees={"allow": [PAYEE]})
    refused(decide(policy, offer(pay_to=OTHER_PAYEE), context(), Usage(), NOW), "payee_not_allowed")
    allowed(decide(policy, offer(pay_to=PAYEE.lower()), context(), Usage(), NOW))


def test_per_request_cap_exceeded_boundary() -> None:
    policy = make_policy()
    allowed(decide(policy, offer(CAP), context(), Usage(), NOW))
    d = refused(decide(policy, offer(CAP + 1), context(), Usage(), NOW), "per_request_cap_exceeded")
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "1 USDC"}
    assert "0.100001 USDC" in d.message


def test_zero_cap_refuses_every_payment() -> None:
    policy = make_policy(usdc(per_request_max=0, daily_max=0))
    refused(decide(policy, offer(1), context(), Usage(), NOW), "per_request_cap_exceeded")


def test_rate_limited() -> None:
    policy = make_policy(max_payments_per_minute=5)
    allowed(decide(policy, offer(), context(), Usage(payments_last_minute=4), NOW))
    d = refused(
        decide(policy, offer(), context(), Usage(payments_last_minute=5, daily_spent=10), NOW), "rate_limited"
    )
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "0.99999 USDC"}


def test_daily_limit_exceeded_boundary() -> None:
    policy = make_policy()
    d = allowed(decide(policy, offer(CAP), context(), Usage(daily_spent=DAILY - CAP), NOW))
    assert d.remaining["daily"] == "0.1 USDC"  # before this payment
    d = refused(
        decide(policy, offer(CAP), context(), Usage(daily_spent=DAILY - CAP + 1), NOW), "daily_limit_exceeded"
    )
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "0.099999 USDC"}


def test_daily_remaining_never_goes_negative() -> None:
    d = refused(
        decide(make_policy(), offer(1), context(), Usage(daily_spent=DAILY * 5), NOW), "daily_limit_exceeded"
    )
    assert d.remaining["daily"] == "0 USDC"


def test_session_unknown() -> None:
    policy = with_sessions(research=session())
    d = refused(decide(policy, offer(), in_session(profile="shopping"), Usage(), NOW), "session_unknown")
    assert "shopping" in d.message
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "1 USDC"}
    # no profile named: the "default" rule, which this policy does not have
    refused(decide(policy, offer(), in_session(), Usage(), NOW), "session_unknown")


def test_unnamed_session_uses_the_default_rule() -> None:
    policy = with_sessions(**{DEFAULT_SESSION: session({"USDC": 20_000})})
    assert session_rule(policy, in_session()) is policy.sessions[DEFAULT_SESSION]
    refused(decide(policy, offer(30_000), in_session(), Usage(), NOW), "session_allowance_exceeded")


def test_no_session_in_the_context_means_no_session_rule() -> None:
    policy = with_sessions(**{DEFAULT_SESSION: session({"USDC": 1})})
    assert session_rule(policy, context(profile=DEFAULT_SESSION)) is None
    d = allowed(decide(policy, offer(CAP), context(), Usage(), NOW))
    assert "session" not in d.remaining


def test_session_in_a_policy_without_sessions_is_not_limited() -> None:
    d = allowed(decide(make_policy(), offer(CAP), in_session(profile="any"), Usage(), NOW))
    assert "session" not in d.remaining


def test_session_expired_at_its_lifetime() -> None:
    policy = with_sessions(s=session(lifetime=3600))
    ctx = in_session(profile="s")
    allowed(decide(policy, offer(), ctx, Usage(session_started_at=NOW - 3599), NOW))
    allowed(decide(policy, offer(), ctx, Usage(session_started_at=NOW - 3599.999), NOW))
    d = refused(decide(policy, offer(), ctx, Usage(session_started_at=NOW - 3600), NOW), "session_expired")
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "1 USDC", "session": "0.5 USDC"}
    refused(decide(policy, offer(), ctx, Usage(session_started_at=NOW - 10 * 86_400), NOW), "session_expired")


def test_session_not_started_yet_is_not_expired() -> None:
    policy = with_sessions(s=session(lifetime=1))
    allowed(decide(policy, offer(), in_session(profile="s"), Usage(session_started_at=None), NOW))


SCOPES = [
    ("hosts", {"hosts": ["*.example.org"]}, {}),
    ("url_prefixes", {"url_prefixes": ["https://api.example.com/v2/"]}, {}),
    ("payees", {"payees": [OTHER_PAYEE]}, {}),
    ("networks", {"networks": [BASE_SEPOLIA]}, {}),
    ("assets", {"assets": ["tUSDC"]}, {"tUSDC": 1}),
]


@pytest.mark.parametrize(("scope", "extra_allowance"), [s[1:] for s in SCOPES], ids=[s[0] for s in SCOPES])
def test_session_scope(scope: dict[str, Any], extra_allowance: dict[str, int]) -> None:
    policy = with_sessions(usdc(), tusdc(), s=session({"USDC": ALLOWANCE, **extra_allowance}, **scope))
    d = refused(decide(policy, offer(), in_session(profile="s"), Usage(), NOW), "session_scope")
    assert d.remaining["session"] == "0.5 USDC"


@pytest.mark.parametrize(
    ("scope", "url", "pay_to"),
    [
        ({"hosts": ["*.example.com"]}, URL, PAYEE),
        ({"url_prefixes": ["https://other.example/", "https://api.example.com/v1/"]}, URL, PAYEE),
        ({"payees": [PAYEE]}, URL, PAYEE),
        ({"networks": [BASE]}, URL, PAYEE),
        ({"assets": [f"{BASE}/{USDC}"]}, URL, PAYEE),
        ({"assets": ["usdc"]}, URL, PAYEE),
    ],
    ids=["hosts", "url_prefixes", "payees", "networks", "asset-id", "asset-symbol"],
)
def test_session_scope_admits_what_it_names(scope: dict[str, Any], url: str, pay_to: str) -> None:
    policy = with_sessions(s=session(**scope))
    allowed(decide(policy, offer(pay_to=pay_to), in_session(url, profile="s"), Usage(), NOW))


@pytest.mark.parametrize(
    ("prefix", "url", "inside"),
    [
        ("https://api.example.com", "https://api.example.com", True),
        ("https://api.example.com", "https://api.example.com/any/path", True),
        ("https://api.example.com", "https://api.example.com?q=1", True),
        ("https://api.example.com", "https://api.example.com.evil.net/", False),
        ("https://api.example.com", "https://api.example.com@evil.net/paid", False),
        ("https://api.example.com", "https://api.example.com:8443/paid", False),
        ("https://api.example.com/", "https://api.example.com/paid", True),
        ("https://api.example.com/v1/", "https://api.example.com/v1/paid", True),
        ("https://api.example.com/v1/", "https://api.example.com/v2/paid", False),
        ("https://api.example.com/v1/", "http://api.example.com/v1/paid", False),
        ("https://api.example.com/search?q=", "https://api.example.com/search?q=cats", True),
    ],
)
def test_session_url_prefix_cannot_be_escaped_through_the_host(prefix: str, url: str, inside: bool) -> None:
    policy = with_sessions(s=session(url_prefixes=[prefix]))
    d = decide(policy, offer(), in_session(url, profile="s"), Usage(), NOW)
    if inside:
        allowed(d)
    else:
        refused(d, "session_scope")


def test_session_asset_not_allowed() -> None:
    policy = with_sessions(usdc(), tusdc(), s=session({"tUSDC": ALLOWANCE}))
    d = refused(decide(policy, offer(), in_session(profile="s"), Usage(), NOW), "session_asset_not_allowed")
    assert d.remaining["session"] == "0 USDC"
    allowed(decide(policy, offer(network=BASE_SEPOLIA, asset=TUSDC), in_session(profile="s"), Usage(), NOW))


def test_session_allowance_exceeded_boundary() -> None:
    policy = with_sessions(s=session())
    ctx = in_session(profile="s")
    d = allowed(decide(policy, offer(CAP), ctx, Usage(session_spent=ALLOWANCE - CAP), NOW))
    assert d.remaining == {"per_request": "0.1 USDC", "daily": "1 USDC", "session": "0.1 USDC"}
    d = refused(
        decide(policy, offer(CAP), ctx, Usage(session_spent=ALLOWANCE - CAP + 1), NOW),
        "session_allowance_exceeded",
    )
    assert d.remaining["session"] == "0.099999 USDC"
    d = refused(
        decide(policy, offer(1), ctx, Usage(session_spent=ALLOWANCE * 3), NOW), "session_allowance_exceeded"
    )
    assert d.remaining["session"] == "0 USDC"


def test_allowance_given_by_asset_id_applies() -> None:
    policy = with_sessions(s=session({f"{BASE}/{USDC.lower()}": 20_000}))
    ctx = in_session(profile="s")
    allowed(decide(policy, offer(20_000), ctx, Usage(), NOW))
    refused(decide(policy, offer(20_001), ctx, Usage(), NOW), "session_allowance_exceeded")


def test_every_refusal_code_is_covered_by_a_test() -> None:
    names = {name for name in globals() if name.startswith("test_")}
    for reason in REFUSALS:
        assert f"test_{reason}" in names or any(n.startswith(f"test_{reason}_") for n in names), reason


# --- remaining budgets use the asset's decimals ---------------------------------------------------


@pytest.mark.parametrize(
    ("decimals", "cap", "daily", "spent", "expected"),
    [
        (6, 100_000, 1_000_000, 250_000, {"per_request": "0.1 USDC", "daily": "0.75 USDC"}),
        (0, 7, 30, 12, {"per_request": "7 USDC", "daily": "18 USDC"}),
        (2, 150, 10_000, 1, {"per_request": "1.5 USDC", "daily": "99.99 USDC"}),
        (18, 10**18, 3 * 10**18, 1, {"per_request": "1 USDC", "daily": "2.999999999999999999 USDC"}),
    ],
)
def test_remaining_is_formatted_with_the_asset_decimals(
    decimals: int, cap: int, daily: int, spent: int, expected: dict[str, str]
) -> None:
    policy = make_policy(usdc(decimals=decimals, per_request_max=cap, daily_max=daily))
    d = allowed(decide(policy, offer(1), context(), Usage(daily_spent=spent), NOW))
    assert d.remaining == expected


def test_remaining_uses_the_symbol_of_the_asset_paid() -> None:
    policy = make_policy(
        usdc(), weth(per_request_max=10**17, daily_max=10**18), sessions={"s": session({"WETH": 5 * 10**17})}
    )
    d = allowed(decide(policy, offer(1, asset=WETH), in_session(profile="s"), Usage(daily_spent=1), NOW))
    assert d.remaining == {
        "per_request": "0.1 WETH",
        "daily": "0.999999999999999999 WETH",
        "session": "0.5 WETH",
    }


# --- clocks that go backwards -----------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    created_at: float
    amount: int


def usage_at(policy: Policy, payments: list[Recorded], now: float) -> Usage:
    """What the ledger's query computes: amounts with created_at >= the window's start, and no
    upper bound, so a payment stamped in the future (the clock was ahead) still counts."""
    start = policy.day.start(now)
    return Usage(
        daily_spent=sum(p.amount for p in payments if p.created_at >= start),
        payments_last_minute=sum(1 for p in payments if p.created_at >= now - 60),
    )


@pytest.mark.parametrize(
    "day", [{"kind": "rolling_24h"}, {"kind": "calendar", "timezone": "America/New_York"}]
)
def test_payments_stamped_in_the_future_still_count(day: dict[str, str]) -> None:
    policy = make_policy(day=day, max_payments_per_minute=3)
    # Three payments stamped while the clock was an hour ahead; then the clock was set back.
    payments = [Recorded(NOW + 3600 + i, 310_000) for i in range(3)]
    usage = usage_at(policy, payments, NOW)
    assert usage.daily_spent == 930_000 and usage.payments_last_minute == 3
    refused(decide(policy, offer(1), context(), usage, NOW), "rate_limited")
    usage = replace(usage, payments_last_minute=0)
    d = refused(decide(policy, offer(CAP), context(), usage, NOW), "daily_limit_exceeded")
    assert d.remaining["daily"] == "0.07 USDC"
    allowed(decide(policy, offer(70_000), context(), usage, NOW))


def test_decide_uses_only_the_usage_it_is_given() -> None:
    # The usage numbers come from a window computed at a later time than ``now``: decide() does
    # not second-guess them, whatever ``now`` says.
    policy = make_policy()
    later = Usage(daily_spent=DAILY)
    for now in (NOW - 7 * 86_400, NOW, NOW + 7 * 86_400, 0.0):
        refused(decide(policy, offer(1), context(), later, now), "daily_limit_exceeded")


def test_session_expiry_is_measured_from_the_recorded_start() -> None:
    policy = with_sessions(s=session(lifetime=3600))
    ctx = in_session(profile="s")
    started = NOW - 5000  # expired 1400 s ago
    refused(decide(policy, offer(), ctx, Usage(session_started_at=started), NOW), "session_expired")
    # a clock set back by less than the time since expiry still finds it expired
    refused(decide(policy, offer(), ctx, Usage(session_started_at=started), NOW - 1399), "session_expired")
    # expiry does not depend on how much the session spent
    refused(
        decide(policy, offer(1), ctx, Usage(session_started_at=started, session_spent=0), NOW),
        "session_expired",
    )


def test_clock_set_back_before_the_session_start_does_not_revive_it() -> None:
    policy = with_sessions(s=session(lifetime=3600))
    ctx = in_session(profile="s")
    started = NOW - 5000
    refused(decide(policy, offer(), ctx, Usage(session_started_at=started), NOW), "session_expired")
    d = decide(policy, offer(), ctx, Usage(session_started_at=started), started - 60)
    assert not d.allowed


def test_a_revived_session_still_cannot_exceed_its_allowance() -> None:
    # What holds even when the clock goes back: the allowance is counted over the whole session.
    policy = with_sessions(s=session(lifetime=3600))
    ctx = in_session(profile="s")
    usage = Usage(session_started_at=NOW, session_spent=ALLOWANCE)
    for now in (NOW - 1, NOW):
        refused(decide(policy, offer(1), ctx, usage, now), "session_allowance_exceeded")
    # and a clock set back a day is refused before the allowance is even looked at
    refused(decide(policy, offer(1), ctx, usage, NOW - 86_400), "session_expired")


# --- properties --------------------------------------------------------------------------------

HOSTS = ["api.example.com", "a.example.org", "evil.net"]
PAYEES = [PAYEE, OTHER_PAYEE]
ASSETS = [(BASE, USDC)] * 4 + [(BASE_SEPOLIA, TUSDC)] * 2 + [(BASE, OTHER_TOKEN), (OPTIMISM, USDC)]
big = st.integers(min_value=0, max_value=2**63 - 1)
small = st.integers(min_value=0, max_value=2_000)
mostly_small = st.one_of(small, small, small, big)


@st.composite
def limits(draw: st.DrawFn) -> dict[str, Any]:
    cap = draw(st.one_of(small, big))
    daily = draw(st.none() | st.integers(cap, 2**63 - 1) | st.integers(cap, min(cap + 3_000, 2**63 - 1)))
    approval = draw(st.none() | st.integers(0, cap - 1)) if cap > 0 else None
    return {"per_request_max": cap, "daily_max": daily, "approval_above": approval}


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    assets = [usdc(**draw(limits()))]
    if draw(st.booleans()):
        assets.append(tusdc(**draw(limits())))
    sessions = {}
    for name in draw(st.lists(st.sampled_from([DEFAULT_SESSION, "s"]), unique=True, max_size=2)):
        lifetime = draw(st.integers(1, 10_000))
        allowance = {}
        for a in assets:
            if draw(st.booleans()):
                top = a["daily_max"] if a["daily_max"] is not None else 2**63 - 1
                allowance[a["symbol"]] = draw(st.integers(0, min(top, 5_000)))
        allowance = allowance or {"USDC": 0}
        scope = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "hosts": st.lists(st.sampled_from(HOSTS), max_size=2),
                    "payees": st.lists(st.sampled_from(PAYEES), max_size=2),
                    "networks": st.lists(st.sampled_from([BASE, BASE_SEPOLIA]), max_size=2),
                },
            )
        )
        sessions[name] = session(allowance, lifetime, **scope)
    return make_policy(
        *assets,
        hosts=draw(st.sampled_from([{}, {"deny": ["evil.net"]}, {"allow": ["*.example.org"]}])),
        payees=draw(st.sampled_from([{}, {"deny": [OTHER_PAYEE]}, {"allow": [PAYEE]}])),
        max_payments_per_minute=draw(st.none() | st.integers(1, 5)),
        circuit_breaker=draw(
            st.none() | st.builds(lambda n: {"max_consecutive_failures": n}, st.integers(1, 3))
        ),
        sessions=sessions,
    )


usages = st.builds(
    Usage,
    daily_spent=mostly_small,
    session_spent=mostly_small,
    session_started_at=st.none() | st.floats(NOW - 20_000, NOW + 20_000),
    payments_last_minute=st.integers(0, 6),
    consecutive_failures=st.sampled_from([0, 0, 0, 0, 1, 2, 3]),
)


@st.composite
def offers(draw: st.DrawFn) -> FakeOffer:
    network, asset = draw(st.sampled_from(ASSETS))
    return FakeOffer(
        network=network, asset=asset, amount=draw(mostly_small), pay_to=draw(st.sampled_from(PAYEES))
    )


contexts = st.builds(
    lambda host, session_id, profile: context(f"https://{host}/paid", session_id, profile),
    st.sampled_from(HOSTS),
    st.sampled_from([None, "conn-1", "conn-1"]),
    st.none() | st.sampled_from([DEFAULT_SESSION, "s", "unknown"]),
)


@settings(max_examples=1000, deadline=None)
@given(
    policy=policies(),
    the_offer=offers(),
    ctx=contexts,
    usage=usages,
    now=st.floats(NOW - 20_000, NOW + 20_000),
)
def test_decide_never_allows_more_than_the_limits(
    policy: Policy, the_offer: FakeOffer, ctx: PaymentContext, usage: Usage, now: float
) -> None:
    d = decide(policy, the_offer, ctx, usage, now)
    event(d.reason if not d.allowed or ctx.session is None else "allowed in a session")
    # deterministic: same inputs, same answer, also for the same policy parsed again
    assert decide(policy, the_offer, ctx, usage, now) == d
    assert decide(Policy.model_validate_json(policy.canonical_json()), the_offer, ctx, usage, now) == d
    assert d.reason == "allowed" if d.allowed else d.reason in REFUSALS
    if not d.allowed:
        assert d.needs_approval is False
        return
    rule = d.asset
    assert rule is not None and rule == policy.find_asset(the_offer.network, the_offer.asset)
    assert the_offer.amount <= rule.per_request_max
    assert rule.daily_max is None or usage.daily_spent + the_offer.amount <= rule.daily_max
    if policy.max_payments_per_minute is not None:
        assert usage.payments_last_minute < policy.max_payments_per_minute
    if policy.circuit_breaker is not None:
        assert usage.consecutive_failures < policy.circuit_breaker.max_consecutive_failures
    assert d.needs_approval is (rule.approval_above is not None and the_offer.amount > rule.approval_above)
    if ctx.session is not None and policy.sessions:
        applying = session_rule(policy, ctx)
        assert applying is not None
        allowance = next(v for k, v in applying.allowance.items() if policy.asset(k) == rule)
        assert usage.session_spent + the_offer.amount <= allowance
        if usage.session_started_at is not None:
            assert now - usage.session_started_at < applying.lifetime_seconds
    for text in d.remaining.values():
        assert text.endswith(f" {rule.symbol}")


@settings(max_examples=200, deadline=None)
@given(policy=policies(), the_offer=offers(), ctx=contexts, usage=usages)
def test_more_spent_never_turns_a_refusal_into_an_allowance(
    policy: Policy, the_offer: FakeOffer, ctx: PaymentContext, usage: Usage
) -> None:
    d = decide(policy, the_offer, ctx, usage, NOW)
    more = replace(
        usage,
        daily_spent=usage.daily_spent + 1,
        session_spent=usage.session_spent + 1,
        payments_last_minute=usage.payments_last_minute + 1,
        consecutive_failures=usage.consecutive_failures + 1,
    )
    if not d.allowed:
        assert not decide(policy, the_offer, ctx, more, NOW).allowed
    bigger = replace(the_offer, amount=the_offer.amount + 1)
    if not d.allowed:
        assert not decide(policy, bigger, ctx, usage, NOW).allowed
