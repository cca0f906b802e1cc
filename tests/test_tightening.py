"""Which policy changes only tighten (no device needed) and which loosen (device needed)."""

from __future__ import annotations

from typing import Any

import pytest

from x402_agent.policy import Policy
from x402_agent.tightening import loosenings

USDC = {
    "network": "eip155:8453",
    "address": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
    "symbol": "USDC",
    "decimals": 6,
    "eip712_name": "USD Coin",
    "eip712_version": "2",
    "per_request_max": 100_000,
    "daily_max": 2_000_000,
    "approval_above": 50_000,
}
BASE: dict[str, Any] = {
    "version": 3,
    "account": "0x1200000000000000000000000000000000000Ab0",
    "chain_id": 8453,
    "assets": [USDC],
    "hosts": {"allow": ["a.example.com", "b.example.com"], "deny": ["x.com"]},
    "max_payments_per_minute": 10,
    "circuit_breaker": {"max_consecutive_failures": 3},
    "sessions": {
        "default": {
            "lifetime_seconds": 3600,
            "allowance": {"USDC": 500_000},
            "scope": {"hosts": ["a.example.com"]},
        }
    },
}


def policy(**changes: Any) -> Policy:
    doc = {**BASE, **changes}
    return Policy.model_validate(doc)


def asset(**changes: Any) -> list[dict[str, Any]]:
    return [{**USDC, **changes}]


TIGHTER = {
    "same": {},
    "lower cap": {"assets": asset(per_request_max=50_001)},
    "lower daily": {"assets": asset(daily_max=1_000_000)},
    "asks more often": {"assets": asset(approval_above=10_000)},
    "fewer hosts": {"hosts": {"allow": ["a.example.com"], "deny": ["x.com"]}},
    "more denied": {"hosts": {"allow": ["a.example.com", "b.example.com"], "deny": ["x.com", "y.com"]}},
    "slower": {"max_payments_per_minute": 5},
    "breaker sooner": {"circuit_breaker": {"max_consecutive_failures": 1}},
    "shorter, smaller session": {
        "sessions": {
            "default": {
                "lifetime_seconds": 600,
                "allowance": {"USDC": 100_000},
                "scope": {"hosts": ["a.example.com"]},
            }
        }
    },
    "higher version": {"version": 4},
    "no sign-in re-access": {"reaccess": {"sign_in": False}},
    "shorter entitlements": {"reaccess": {"max_entitlement_seconds": 3600}},
}
LOOSER = {
    "higher cap": ({"assets": asset(per_request_max=200_000, daily_max=2_000_000)}, "per_request_max"),
    "no daily limit": ({"assets": asset(daily_max=None)}, "daily_max"),
    "no approvals": ({"assets": asset(approval_above=None)}, "approval_above"),
    "any host": ({"hosts": {"allow": None, "deny": ["x.com"]}}, "hosts.allow"),
    "forgets a deny": ({"hosts": {"allow": ["a.example.com"], "deny": []}}, "hosts.deny"),
    "no rate limit": ({"max_payments_per_minute": None}, "max_payments_per_minute"),
    "no breaker": ({"circuit_breaker": None}, "circuit_breaker"),
    "longer session": (
        {
            "sessions": {
                "default": {
                    "lifetime_seconds": 7200,
                    "allowance": {"USDC": 500_000},
                    "scope": {"hosts": ["a.example.com"]},
                }
            }
        },
        "lifetime_seconds",
    ),
    "bigger session": (
        {
            "sessions": {
                "default": {
                    "lifetime_seconds": 3600,
                    "allowance": {"USDC": 600_000},
                    "scope": {"hosts": ["a.example.com"]},
                }
            }
        },
        "allowance",
    ),
    "wider scope": (
        {"sessions": {"default": {"lifetime_seconds": 3600, "allowance": {"USDC": 500_000}}}},
        "scope.hosts",
    ),
    "sessions removed": ({"sessions": {}}, "sessions removed"),
    "new profile": (
        {"sessions": {**BASE["sessions"], "extra": {"lifetime_seconds": 60, "allowance": {"USDC": 1}}}},
        "new session profile",
    ),
    "rollback": ({"version": 2}, "version"),
    "other account": ({"account": "0x3400000000000000000000000000000000000000"}, "account"),
    "calendar day": ({"day": {"kind": "calendar", "timezone": "Pacific/Kiritimati"}}, "day"),
    "longer entitlements": ({"reaccess": {"max_entitlement_seconds": 7 * 86_400}}, "reaccess"),
}


@pytest.mark.parametrize("name", list(TIGHTER))
def test_tighter_policies_need_no_device(name: str) -> None:
    assert loosenings(policy(**TIGHTER[name]), policy()) == []


@pytest.mark.parametrize("name", list(LOOSER))
def test_looser_policies_are_caught(name: str) -> None:
    changes, what = LOOSER[name]
    found = loosenings(policy(**changes), policy())
    assert any(what in item for item in found), found


def test_turning_sign_in_re_access_back_on_needs_the_device() -> None:
    off = policy(reaccess={"sign_in": False})
    assert any("reaccess" in item for item in loosenings(policy(), off))
    assert loosenings(policy(reaccess={"sign_in": False, "max_entitlement_seconds": 30 * 86_400}), off) == []
