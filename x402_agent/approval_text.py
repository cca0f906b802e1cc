"""The text a device shows and signs to approve a policy: every field that widens spending.

One fact group per line (a Bitcoin signed message may hold newlines; the device pages it over
several screens), the policy's digest always the last line, so what the person reads is bound
to every byte of the document. When an approved policy exists, each changed value carries its
old one (``per-request 0.30 (was 0.10)``), lists name what was added and removed, lines that
are new start with ``+`` and dropped ones are listed as ``- ... removed``: the full new values
are always there, the diff is added to them.

The text stays within what a real device accepts for a signed message (``MAX_TEXT_BYTES``). A
policy whose text would be longer is refused (``policy_text_too_long``) rather than split over
several signatures: one signature over one text is what every verifier, on and off chain,
already checks, and a policy that long (dozens of payees or hosts) is better narrowed.

Pure: no device, HTTP or chain imports.
"""

from __future__ import annotations

from .money import format_units
from .policy import Policy, Scope

MAX_TEXT_BYTES = 1024  # what SignMessage on common devices takes (Trezor, Ledger's BTC app)
Value = str | tuple[str, ...] | None  # None: a list that does not narrow ("any")
Line = tuple[str, tuple[tuple[str, Value], ...]]  # a label and its named parts

# Every field of the policy model, as a dotted path, and whether the text shows it. A field that
# widens spending must be shown; tests/test_approval_screens.py walks the model, so a new field
# fails until it is classified here.
SHOWN_FIELDS = frozenset(
    {
        "version",
        "account",
        "chain_id",
        "day.kind",
        "day.timezone",
        "assets.network",
        "assets.address",
        "assets.symbol",
        "assets.decimals",
        "assets.per_request_max",
        "assets.daily_max",
        "assets.approval_above",
        "assets.schemes",
        "assets.max_channel_deposit",
        "hosts.allow",
        "hosts.deny",
        "payees.allow",
        "payees.deny",
        "networks.allow",
        "networks.deny",
        "max_payments_per_minute",
        "circuit_breaker.max_consecutive_failures",
        "sessions.lifetime_seconds",
        "sessions.allowance",
        "sessions.scope.hosts",
        "sessions.scope.url_prefixes",
        "sessions.scope.payees",
        "sessions.scope.networks",
        "sessions.scope.assets",
        "max_authorization_seconds",
        "private_network.allow",
        "max_paid_body_bytes",
        "reaccess.sign_in",
        "reaccess.max_entitlement_seconds",
    }
)
NOT_SHOWN_FIELDS = {
    "schema_id": "the document format: fixed, bound by the digest",
    "assets.eip712_name": "the token's signing domain: a wrong one only makes payments fail",
    "assets.eip712_version": "the token's signing domain: a wrong one only makes payments fail",
}


class PolicyTextTooLong(ValueError):
    """The approval text would exceed ``MAX_TEXT_BYTES`` (``approval_message`` makes it a
    ``PolicyRejected`` with reason ``policy_text_too_long``)."""


def _money(atomic: int, decimals: int) -> str:
    """Exact, with at least cents: 5000000 at 6 decimals -> '5.00', 1500 -> '0.0015'."""
    whole, _, frac = format_units(atomic, decimals).partition(".")
    return f"{whole}.{frac.ljust(2, '0')}" if decimals >= 2 else whole


def _lifetime(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _asset_label(policy: Policy, key: str) -> str:
    rule = policy.asset(key)
    return f"{rule.symbol}@{rule.network}" if rule is not None else key


def _lower(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    # Addresses shown in full and in one case: a person compares them character by character.
    return None if values is None else tuple(v.lower() for v in values)


def _scope_parts(policy: Policy, scope: Scope) -> tuple[tuple[str, Value], ...]:
    if scope == Scope():
        return (("scope", "any"),)
    assets = None if scope.assets is None else tuple(_asset_label(policy, k) for k in scope.assets)
    return (
        ("hosts", scope.hosts),
        ("url prefixes", scope.url_prefixes),
        ("payees", _lower(scope.payees)),
        ("networks", scope.networks),
        ("assets", assets),
    )


def policy_lines(policy: Policy) -> list[Line]:
    """Every shown field (``SHOWN_FIELDS``), grouped in labelled lines of named parts."""
    lines: list[Line] = [
        ("account", (("", (policy.account or "any").lower()), ("chain", str(policy.chain_id or "any")))),
    ]
    for rule in policy.assets:
        limits: tuple[tuple[str, Value], ...] = (
            ("decimals", str(rule.decimals)),
            ("per-request", _money(rule.per_request_max, rule.decimals)),
            ("daily", "no limit" if rule.daily_max is None else _money(rule.daily_max, rule.decimals)),
            (
                "device approval above",
                "never" if rule.approval_above is None else _money(rule.approval_above, rule.decimals),
            ),
            ("schemes", rule.allowed_schemes),
        )
        if rule.max_channel_deposit is not None:  # unset refuses channels: nothing to show
            limits += (("channel deposit", _money(rule.max_channel_deposit, rule.decimals)),)
        lines.append((f"pay {rule.symbol} on {rule.network} token {rule.address.lower()}", limits))
    for name, lists in (("hosts", policy.hosts), ("payees", policy.payees), ("networks", policy.networks)):
        allow, deny = (
            (_lower(lists.allow), _lower(lists.deny)) if name == "payees" else (lists.allow, lists.deny)
        )
        lines.append((name, (("allow", allow), ("deny", deny or ()))))
    for name, session in sorted(policy.sessions.items()):
        allowance = tuple(
            (_asset_label(policy, key), _money(amount, (policy.asset(key) or policy.assets[0]).decimals))
            for key, amount in sorted(session.allowance.items())
        )
        parts = (
            ("lifetime", _lifetime(session.lifetime_seconds)),
            *allowance,
            *_scope_parts(policy, session.scope),
        )
        lines.append((f"session {name}", parts))
    breaker = policy.circuit_breaker
    lines.append(
        (
            "limits",
            (
                (
                    "rate",
                    "none"
                    if policy.max_payments_per_minute is None
                    else f"{policy.max_payments_per_minute}/min",
                ),
                (
                    "breaker",
                    "none" if breaker is None else f"after {breaker.max_consecutive_failures} failures",
                ),
                ("authorization up to", _lifetime(policy.max_authorization_seconds)),
                (
                    "paid body max",
                    "default" if policy.max_paid_body_bytes is None else f"{policy.max_paid_body_bytes} B",
                ),
                (
                    "day",
                    "rolling 24h" if policy.day.kind == "rolling_24h" else f"calendar {policy.day.timezone}",
                ),
                (
                    # Signing in (sign-in-with-x) instead of paying again, for how long after a
                    # payment; short: the whole text must stay within what a device signs.
                    "re-access",
                    _lifetime(policy.reaccess_rule.max_entitlement_seconds)
                    if policy.reaccess_rule.sign_in
                    else "off",
                ),
            ),
        )
    )
    lines.append(("private network", (("allow", policy.private_allow),)))
    return lines


def _shown(value: Value) -> str:
    if value is None:
        return "any"
    if isinstance(value, tuple):
        return " ".join(value) if value else "none"
    return value


def _part(name: str, new: Value, old: Value, compared: bool) -> str:
    text = f"{name} {_shown(new)}".strip()
    if not compared or new == old:
        return text
    if isinstance(new, tuple) and isinstance(old, tuple):
        added = [v for v in new if v not in old]
        removed = [v for v in old if v not in new]
        changes = [f"added {' '.join(added)}"] * bool(added) + [f"removed {' '.join(removed)}"] * bool(
            removed
        )
        return f"{text} ({'; '.join(changes)})" if changes else text
    return f"{text} (was {_shown(old)})"


def _render(line: Line, before: dict[str, dict[str, Value]] | None) -> str:
    label, parts = line
    old = None if before is None else before.get(label)
    if before is not None and old is None:
        label = "+ " + label  # a line the approved policy does not have (a new asset, a session)
    body = ", ".join(
        _part(name, value, None if old is None else old.get(name), old is not None) for name, value in parts
    )
    return f"{label}: {body}"


def approval_text(policy: Policy, previous: Policy | None = None) -> str:
    """The lines the device shows; with ``previous`` (the approved policy) the changes marked.

    Raises PolicyTextTooLong past ``MAX_TEXT_BYTES``."""
    head = f"x402-agent policy v{policy.version}"
    head += " (first approval)" if previous is None else f" replaces v{previous.version}"
    lines = policy_lines(policy)
    before = None if previous is None else {label: dict(parts) for label, parts in policy_lines(previous)}
    body = [_render(line, before) for line in lines]
    if before is not None:
        kept = {label for label, _ in lines}
        body += [f"- {label}: removed" for label in before if label not in kept]
    text = "\n".join([head, *body, policy.digest])
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        longest = max(body, key=len)
        raise PolicyTextTooLong(
            f"the approval text of policy v{policy.version} is {size} bytes, above the {MAX_TEXT_BYTES} "
            f"a device signs: shorten its lists (longest line: {longest[:60]}...)"
        )
    return text


def legacy_line(policy: Policy) -> str:
    """The one-line text approvals were signed over before every field was shown: kept so
    those approvals still verify; new approvals use ``approval_text``."""
    head = f"x402-agent policy v{policy.version}"
    if policy.account:
        head += f" acct {policy.account[:4].lower()}..{policy.account[-2:].lower()}"
    if policy.chain_id:
        head += f" chain {policy.chain_id}"
    parts = []
    for asset in policy.assets:
        limits = [f"per-request {_money(asset.per_request_max, asset.decimals)}"]
        if asset.daily_max is not None:
            limits.insert(0, f"daily {_money(asset.daily_max, asset.decimals)} {asset.symbol}")
        else:
            limits[0] = f"{asset.symbol} {limits[0]}"
        for name, session in sorted(policy.sessions.items()):
            for key, amount in session.allowance.items():
                if policy.asset(key) == asset:
                    label = "session" if name == "default" else f"session {name}"
                    limits.append(
                        f"{label} {_money(amount, asset.decimals)}/{_lifetime(session.lifetime_seconds)}"
                    )
        parts.append(", ".join(limits))
    return f"{head}: {'; '.join(parts)}, {policy.digest}"
