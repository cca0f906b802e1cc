"""Is one policy only tighter than another? Tightening needs no device: it can only spend less.

``loosenings(new, base)`` lists every way ``new`` would allow something ``base`` does not; an
empty list means ``new`` may replace ``base`` without a device signature. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator

from .policy import AllowDeny, AssetRule, Policy, Scope, SessionRule


def _at_most(new: int | None, base: int | None) -> bool:
    """A limit (None = unlimited) no looser than the base's."""
    return base is None or (new is not None and new <= base)


def _threshold_kept(new: int | None, base: int | None) -> bool:
    """An approval threshold (None = never ask) that asks at least as often."""
    return base is None or (new is not None and new <= base)


def _lists(name: str, new: AllowDeny, base: AllowDeny) -> Iterator[str]:
    if base.allow is not None and (new.allow is None or not set(new.allow) <= set(base.allow)):
        yield f"{name}.allow admits more than before"
    if not set(base.deny) <= set(new.deny):
        yield f"{name}.deny drops entries"


def _asset(new: AssetRule, base: AssetRule) -> Iterator[str]:
    where = f"assets.{new.symbol}"
    if (new.decimals, new.eip712_name, new.eip712_version) != (
        base.decimals,
        base.eip712_name,
        base.eip712_version,
    ):
        yield f"{where}: token description changed"
    if new.per_request_max > base.per_request_max:
        yield f"{where}.per_request_max raised"
    if not _at_most(new.daily_max, base.daily_max):
        yield f"{where}.daily_max raised or removed"
    if not _threshold_kept(new.approval_above, base.approval_above):
        yield f"{where}.approval_above raised or removed"
    if (new.max_channel_deposit or 0) > (base.max_channel_deposit or 0):  # unset: none allowed
        yield f"{where}.max_channel_deposit raised or added"


def _narrower(new: tuple[str, ...] | None, base: tuple[str, ...] | None) -> bool:
    return base is None or (new is not None and set(new) <= set(base))


def _scope(name: str, new: Scope, base: Scope) -> Iterator[str]:
    for field in ("hosts", "url_prefixes", "payees", "networks", "assets"):
        if not _narrower(getattr(new, field), getattr(base, field)):
            yield f"sessions.{name}.scope.{field} widened"


def _session(
    name: str, new: SessionRule, base: SessionRule, new_policy: Policy, base_policy: Policy
) -> Iterator[str]:
    if new.lifetime_seconds > base.lifetime_seconds:
        yield f"sessions.{name}.lifetime_seconds raised"
    base_allowance = {
        base_policy.asset(k).asset_id: v  # type: ignore[union-attr]
        for k, v in base.allowance.items()
    }
    for key, amount in new.allowance.items():
        asset = new_policy.asset(key)
        if asset is None or amount > base_allowance.get(asset.asset_id, -1):
            yield f"sessions.{name}.allowance.{key} raised or added"
    yield from _scope(name, new.scope, base.scope)


def loosenings(new: Policy, base: Policy) -> list[str]:
    found: list[str] = []
    if new.version < base.version:
        found.append("version is lower")
    if (new.account, new.chain_id) != (base.account, base.chain_id):
        found.append("account or chain changed")
    if new.day != base.day:
        found.append("day definition changed")
    base_assets = {a.asset_id: a for a in base.assets}
    for asset in new.assets:
        if asset.asset_id not in base_assets:
            found.append(f"assets.{asset.symbol}: new asset")
        else:
            found.extend(_asset(asset, base_assets[asset.asset_id]))
    found.extend(_lists("hosts", new.hosts, base.hosts))
    found.extend(_lists("payees", new.payees, base.payees))
    found.extend(_lists("networks", new.networks, base.networks))
    if not _at_most(new.max_payments_per_minute, base.max_payments_per_minute):
        found.append("max_payments_per_minute raised or removed")
    if base.circuit_breaker is not None and (
        new.circuit_breaker is None
        or new.circuit_breaker.max_consecutive_failures > base.circuit_breaker.max_consecutive_failures
    ):
        found.append("circuit_breaker loosened or removed")
    if base.sessions and not new.sessions:
        found.append("sessions removed: sessions would be unlimited")
    for name, session in new.sessions.items():
        if name not in base.sessions:
            found.append(f"sessions.{name}: new session profile")
        else:
            found.extend(_session(name, session, base.sessions[name], new, base))
    if new.max_authorization_seconds > base.max_authorization_seconds:
        found.append("max_authorization_seconds raised")
    if not set(new.private_allow) <= set(base.private_allow):
        found.append("private_network.allow admits more than before")
    # Re-access spends nothing, but it has the paying key sign sign-in messages: signing where
    # it did not, or for longer after a payment, is the device's to allow.
    reaccess, base_reaccess = new.reaccess_rule, base.reaccess_rule
    if reaccess.sign_in and (
        not base_reaccess.sign_in or reaccess.max_entitlement_seconds > base_reaccess.max_entitlement_seconds
    ):
        found.append("reaccess widened: signs in where it did not, or longer after a payment")
    return found
