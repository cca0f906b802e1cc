"""What remains to spend: the policy's limits minus what the ledger counts."""

from __future__ import annotations

from typing import Any

from .ledger import Ledger
from .ledger.channels import ChannelState
from .ledger.entitlements import Entitlement
from .money import format_units
from .policy import DEFAULT_SESSION, Policy


def budget_view(
    policy: Policy, ledger: Ledger, now: float, session: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    """Per asset: limits, counted today, remaining, in flight, unknown; the breaker; and the
    given session's allowance. Amounts are atomic-unit strings with a human ``*_display``."""
    snapshot = ledger.budget(policy.day.start(now), now)
    usage = {(u.network, u.asset): u for u in snapshot.assets}
    assets = []
    for rule in policy.assets:
        used = usage.get((rule.network, rule.address))
        counted = used.day_counted if used else 0

        def show(value: int | None, decimals: int = rule.decimals) -> str | None:
            return None if value is None else format_units(value, decimals)

        remaining = None if rule.daily_max is None else max(rule.daily_max - counted, 0)
        assets.append(
            {
                "symbol": rule.symbol,
                "network": rule.network,
                "asset": rule.address,
                "decimals": rule.decimals,
                "per_request_max": str(rule.per_request_max),
                "daily_max": None if rule.daily_max is None else str(rule.daily_max),
                "counted_today": str(counted),
                "daily_remaining": None if remaining is None else str(remaining),
                "daily_remaining_display": show(remaining),
                "in_flight": str(used.in_flight if used else 0),
                "unknown": str(used.unknown if used else 0),
                "unknown_payments": used.unknown_count if used else 0,
            }
        )
    breaker = policy.circuit_breaker
    view: dict[str, Any] = {
        "policy_version": policy.version,
        "policy_digest": policy.digest,
        "day": policy.day.model_dump(),
        "day_started_at": policy.day.start(now),
        "assets": assets,
        "circuit_breaker": {
            "consecutive_failures": snapshot.consecutive_failures,
            "threshold": breaker.max_consecutive_failures if breaker else None,
            "open": snapshot.settlement_mismatch is not None
            or bool(breaker and snapshot.consecutive_failures >= breaker.max_consecutive_failures),
            "reset_at": snapshot.breaker_reset_at,
            "settlement_mismatch": snapshot.settlement_mismatch,
        },
    }
    if session is not None:
        view["session"] = _session_view(policy, snapshot.sessions.get(session, {}), session, profile)
    # Re-access bought by payments: resources the agent signs in to instead of paying again.
    view["entitlements"] = [_entitlement_view(e, now) for e in ledger.entitlements.active(now)]
    # Deposits parked in batch-settlement channels: the requests through them count above as
    # payments; ``unused`` is what may still come back (refund or withdrawal).
    view["channels"] = [
        {
            "channel_id": c.channel_id,
            "network": c.network,
            "asset": c.asset,
            "state": str(c.state),
            "deposit": str(c.deposit),
            "charged": str(c.charged),
            "signed": str(c.signed_total),
            "unused": str(c.unused),
        }
        for c in ledger.channels.all()
        if c.state is not ChannelState.CLOSED
    ]
    return view


def _entitlement_view(entitlement: Entitlement, now: float) -> dict[str, Any]:
    return {
        "url": entitlement.url,
        "network": entitlement.network,
        "payer": entitlement.payer,
        "paid_by": entitlement.payment_id,
        "expires_at": entitlement.expires_at,
        "expires_in_seconds": int(entitlement.expires_at - now),
        "sign_ins": entitlement.uses,
    }


def _session_view(policy: Policy, spent: dict[str, int], session: str, profile: str | None) -> dict[str, Any]:
    rule = policy.sessions.get(profile or DEFAULT_SESSION)
    if rule is None:
        return {"id": session, "profile": profile or DEFAULT_SESSION, "allowance": None}
    allowances = []
    for key, amount in rule.allowance.items():
        asset = policy.asset(key)
        assert asset is not None  # the policy validator guarantees it
        used = spent.get(asset.asset_id, 0)
        allowances.append(
            {
                "symbol": asset.symbol,
                "network": asset.network,
                "allowance": str(amount),
                "spent": str(used),
                "remaining": str(max(amount - used, 0)),
                "remaining_display": format_units(max(amount - used, 0), asset.decimals),
            }
        )
    return {
        "id": session,
        "profile": profile or DEFAULT_SESSION,
        "lifetime_seconds": rule.lifetime_seconds,
        "allowance": allowances,
    }
