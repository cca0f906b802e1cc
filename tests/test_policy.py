"""The spending-policy document: loading, rejection of bad documents, canonical form and digest,
the day window of daily limits, and host patterns. Pure: no network, no chain."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from x402_agent.errors import ConfigError
from x402_agent.policy import (
    DayRule,
    Policy,
    host_matches,
    load_policy,
    parse_policy,
)

POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"

USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # EIP-55 checksummed
TUSDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PAYEE_A = "0x1111111111111111111111111111111111111111"
PAYEE_B = "0x2222222222222222222222222222222222222222"
ACCOUNT = "0x3333333333333333333333333333333333333333"
BASE, BASE_SEPOLIA = "eip155:8453", "eip155:84532"
DAY = 86_400


# --- builders ------------------------------------------------------------------------------


def asset_doc(**fields: Any) -> dict[str, Any]:
    """A valid asset rule (USDC on Base), with ``fields`` replaced."""
    doc: dict[str, Any] = {
        "network": BASE,
        "address": USDC,
        "symbol": "USDC",
        "decimals": 6,
        "eip712_name": "USD Coin",
        "eip712_version": "2",
        "per_request_max": 100_000,
        "daily_max": 1_000_000,
        "approval_above": None,
    }
    return {**doc, **fields}


def tusdc_doc(**fields: Any) -> dict[str, Any]:
    return asset_doc(network=BASE_SEPOLIA, address=TUSDC, symbol="tUSDC", eip712_name="USDC", **fields)


def session_doc(
    allowance: dict[str, int] | None = None, lifetime: int = 3600, **scope: Any
) -> dict[str, Any]:
    return {"lifetime_seconds": lifetime, "allowance": allowance or {"USDC": 500_000}, "scope": scope}


def policy_doc(*assets: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A minimal valid policy document, with ``fields`` replaced."""
    return {"schema": "x402-agent/policy/1", "version": 1, "assets": list(assets) or [asset_doc()], **fields}


def full_doc() -> dict[str, Any]:
    """A document that sets every field to a non-default value."""
    return policy_doc(
        asset_doc(approval_above=50_000),
        tusdc_doc(daily_max=None),
        version=7,
        account=ACCOUNT,
        chain_id=8453,
        day={"kind": "calendar", "timezone": "Asia/Kolkata"},
        hosts={"allow": ["api.example.com", "*.example.org"], "deny": ["bad.example.org"]},
        payees={"allow": [PAYEE_A], "deny": [PAYEE_B]},
        networks={"allow": [BASE, BASE_SEPOLIA], "deny": ["eip155:1"]},
        max_payments_per_minute=30,
        circuit_breaker={"max_consecutive_failures": 5},
        sessions={
            "default": session_doc(),
            "research": session_doc(
                {"USDC": 700_000},
                lifetime=8 * 3600,
                hosts=["api.example.com"],
                url_prefixes=["https://api.example.com/v1/"],
                payees=[PAYEE_A],
                networks=[BASE],
                assets=["USDC"],
            ),
        },
        max_authorization_seconds=120,
    )


def parse(doc: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps(doc))


# --- valid documents: round trip, canonical form, digest --------------------------------------

SHIPPED = sorted(p for p in POLICIES_DIR.glob("*.json") if p.name != "policy.schema.json")


@pytest.mark.parametrize("doc", [policy_doc(), full_doc()], ids=["minimal", "full"])
def test_round_trip_is_exact(doc: dict[str, Any]) -> None:
    policy = parse(doc)
    canonical = policy.canonical_json()
    again = parse_policy(canonical)
    assert again == policy
    assert again.canonical_json() == canonical
    assert again.digest == policy.digest


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policies_load_and_round_trip(path: Path) -> None:
    policy = load_policy(path)
    assert parse_policy(policy.canonical_json()) == policy
    assert load_policy(path).digest == policy.digest


def test_shipped_policies_exist() -> None:
    assert SHIPPED, "policies/*.json should ship at least one example"


def test_canonical_json_is_sorted_compact_ascii() -> None:
    doc = full_doc()
    doc["assets"][0]["eip712_name"] = "USD\u20ae Coin \u00e9"  # non-ASCII must be escaped
    canonical = parse(doc).canonical_json()
    assert canonical.isascii()
    assert b"\\u20ae" in canonical and b"\\u00e9" in canonical
    data = json.loads(canonical)
    assert canonical == json.dumps(data, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert b" " not in canonical.replace(b"USD\\u20ae Coin \\u00e9", b"")
    assert b"\n" not in canonical
    assert data["schema"] == "x402-agent/policy/1"  # the alias, not the attribute name
    assert "schema_id" not in data


def test_canonical_json_includes_defaults() -> None:
    data = json.loads(parse(policy_doc()).canonical_json())
    assert data["day"] == {"kind": "rolling_24h", "timezone": "UTC"}
    assert data["max_authorization_seconds"] == 300
    assert data["hosts"] == {"allow": None, "deny": []}
    assert data["sessions"] == {}


def test_digest_is_sha256_of_canonical_json() -> None:
    policy = parse(full_doc())
    assert policy.digest == "sha256:" + hashlib.sha256(policy.canonical_json()).hexdigest()


def test_digest_is_stable_across_spellings_of_the_same_policy() -> None:
    doc = full_doc()
    reordered = dict(reversed(list(copy.deepcopy(doc).items())))
    reordered["assets"][0] = dict(reversed(list(reordered["assets"][0].items())))
    respelled = copy.deepcopy(doc)
    respelled["assets"][0]["address"] = USDC.lower()  # normalised to its checksum
    respelled["hosts"]["allow"] = ["API.Example.COM", "*.example.org."]  # lowered, dot dropped
    respelled["assets"][1]["address"] = TUSDC.lower()
    respelled["networks"]["deny"] = ["eip155:1"]
    digests = {parse(d).digest for d in (doc, reordered, respelled)}
    digests.add(parse_policy(json.dumps(doc, indent=4).encode()).digest)
    digests.add(parse(doc).digest)
    assert len(digests) == 1


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


# Every field of the full document, changed to another valid value.
FIELD_CHANGES = {
    "version": 8,
    "account": PAYEE_A,
    "chain_id": 84532,
    "day.kind": "rolling_24h",
    "day.timezone": "UTC",
    "assets.0.network": "eip155:10",
    "assets.0.address": "0x4444444444444444444444444444444444444444",
    "assets.1.symbol": "tUSD",
    "assets.0.decimals": 18,
    "assets.0.eip712_name": "USDC",
    "assets.0.eip712_version": "1",
    "assets.0.per_request_max": 100_001,
    "assets.0.daily_max": 1_000_001,
    "assets.0.approval_above": 50_001,
    "hosts.allow": ["api.example.com"],
    "hosts.deny": [],
    "payees.allow": None,
    "payees.deny": [PAYEE_B, ACCOUNT],
    "networks.allow": None,
    "networks.deny": ["eip155:2"],
    "max_payments_per_minute": 31,
    "circuit_breaker": None,
    "sessions.default.lifetime_seconds": 3601,
    "sessions.default.allowance": {"USDC": 500_001},
    "sessions.research.scope.hosts": None,
    "sessions.research.scope.url_prefixes": ["https://api.example.com/v2/"],
    "sessions.research.scope.payees": [PAYEE_B],
    "sessions.research.scope.networks": [BASE, BASE_SEPOLIA],
    "sessions.research.scope.assets": ["USDC", "tUSDC"],
    "max_authorization_seconds": 121,
}


def test_digest_changes_with_every_field() -> None:
    base = parse(full_doc())
    digests = {base.digest}
    for path, value in FIELD_CHANGES.items():
        doc = full_doc()
        if path == "assets.0.network":
            doc["networks"]["allow"].append(value)
        _set(path, value)(doc)
        changed = parse(doc)
        assert changed != base, path
        assert changed.digest not in digests, path
        digests.add(changed.digest)
    renamed = full_doc()
    renamed["sessions"]["other"] = renamed["sessions"].pop("research")
    assert parse(renamed).digest not in digests
    reordered = full_doc()  # the order of the asset list is part of the document
    reordered["assets"].reverse()
    assert parse(reordered).digest not in digests


amounts = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def asset_rules(draw: st.DrawFn, network: str, address: str, symbol: str) -> dict[str, Any]:
    per_request = draw(st.integers(min_value=1, max_value=2**63 - 1))
    daily = draw(st.none() | st.integers(min_value=per_request, max_value=2**63 - 1))
    approval = draw(st.none() | st.integers(min_value=0, max_value=per_request - 1))
    return asset_doc(
        network=network,
        address=address,
        symbol=symbol,
        decimals=draw(st.integers(0, 36)),
        per_request_max=per_request,
        daily_max=daily,
        approval_above=approval,
    )


@st.composite
def policy_docs(draw: st.DrawFn) -> dict[str, Any]:
    assets = [draw(asset_rules(BASE, USDC, "USDC"))]
    if draw(st.booleans()):
        assets.append(draw(asset_rules(BASE_SEPOLIA, TUSDC, "tUSDC")))
    sessions = {}
    for name in draw(st.lists(st.sampled_from(["default", "a", "b"]), unique=True, max_size=2)):
        lifetime = draw(st.integers(1, 30 * DAY))
        cap = assets[0]["daily_max"] if lifetime <= DAY and assets[0]["daily_max"] else 2**63 - 1
        sessions[name] = session_doc({"USDC": draw(st.integers(0, cap))}, lifetime)
    return policy_doc(
        *assets,
        version=draw(st.integers(1, 2**40)),
        day={
            "kind": draw(st.sampled_from(["rolling_24h", "calendar"])),
            "timezone": draw(st.sampled_from(["UTC", "Asia/Kolkata", "America/New_York"])),
        },
        max_payments_per_minute=draw(st.none() | st.integers(1, 1000)),
        sessions=sessions,
        max_authorization_seconds=draw(st.integers(10, DAY)),
    )


@settings(max_examples=150, deadline=None)
@given(policy_docs())
def test_random_valid_policies_round_trip(doc: dict[str, Any]) -> None:
    policy = parse(doc)
    again = parse_policy(policy.canonical_json())
    assert again == policy
    assert again.canonical_json() == policy.canonical_json()
    assert again.digest == policy.digest
    assert policy.canonical_json().isascii()


# --- invalid documents --------------------------------------------------------------------------


def _with_asset(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["assets"][0].update(fields)


def _with(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update(fields)


def _add_asset(asset: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["assets"].append(asset)


def _session(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return _with(sessions={"s": session_doc(**kw)})


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.pop(key)


MISCHECKSUMMED = USDC.replace("fCD6", "fcD6")  # one letter's case flipped: EIP-55 fails

# (id, change to a valid document, the field path the message must name, another word it names)
INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # amounts: integers in atomic units, 0 .. 2**63-1, strictly typed
    ("negative-amount", _with_asset(per_request_max=-1), "assets.0.per_request_max", ""),
    ("float-amount", _with_asset(per_request_max=1.5), "assets.0.per_request_max", ""),
    ("integral-float-amount", _with_asset(per_request_max=100.0), "assets.0.per_request_max", ""),
    ("string-amount", _with_asset(daily_max="1000000"), "assets.0.daily_max", ""),
    ("bool-amount", _with_asset(approval_above=True), "assets.0.approval_above", ""),
    ("amount-2**63", _with_asset(daily_max=2**63), "assets.0.daily_max", ""),
    ("amount-huge", _with_asset(per_request_max=10**80), "assets.0.per_request_max", ""),
    ("session-amount-negative", _session(allowance={"USDC": -5}), "sessions.s.allowance.USDC", ""),
    ("decimals-37", _with_asset(decimals=37), "assets.0.decimals", ""),
    ("bad-symbol", _with_asset(symbol="1USD"), "assets.0.symbol", ""),
    # contradictions inside one asset
    ("cap-above-daily", _with_asset(per_request_max=2_000_000), "assets.0", "per_request_max"),
    ("approval-equals-cap", _with_asset(approval_above=100_000), "assets.0", "approval_above"),
    ("approval-above-cap", _with_asset(approval_above=100_001), "assets.0", "approval_above"),
    (
        "approval-with-zero-cap",
        _with_asset(per_request_max=0, approval_above=0),
        "assets.0",
        "approval_above",
    ),
    # the asset list
    ("no-assets", _with(assets=[]), "assets", ""),
    ("duplicate-asset", _add_asset(asset_doc(per_request_max=5)), "assets.1", "listed twice"),
    ("duplicate-asset-other-case", _add_asset(asset_doc(address=USDC.lower())), "assets.1", "listed twice"),
    # the day
    (
        "unknown-time-zone",
        _with(day={"kind": "calendar", "timezone": "Mars/Olympus_Mons"}),
        "day.timezone",
        "Mars/Olympus_Mons",
    ),
    ("empty-time-zone", _with(day={"timezone": ""}), "day.timezone", ""),
    ("path-time-zone", _with(day={"timezone": "../../etc/passwd"}), "day.timezone", ""),
    ("unknown-day-kind", _with(day={"kind": "weekly"}), "day.kind", ""),
    # networks: CAIP-2 EVM ids only
    ("v1-network-name", _with_asset(network="base"), "assets.0.network", "CAIP-2"),
    ("v1-network-sepolia", _with_asset(network="base-sepolia"), "assets.0.network", "CAIP-2"),
    (
        "non-evm-network",
        _with_asset(network="solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"),
        "assets.0.network",
        "CAIP-2",
    ),
    ("chain-zero", _with_asset(network="eip155:0"), "assets.0.network", ""),
    ("chain-leading-zero", _with_asset(network="eip155:08453"), "assets.0.network", ""),
    ("network-list-v1-name", _with(networks={"allow": ["base"]}), "networks.allow.0", ""),
    ("network-deny-non-evm", _with(networks={"deny": ["solana:mainnet"]}), "networks.deny.0", ""),
    ("scope-network-v1-name", _session(networks=["base"]), "sessions.s.scope.networks.0", ""),
    # addresses
    ("address-not-hex", _with_asset(address="0x" + "zz" * 20), "assets.0.address", ""),
    ("address-short", _with_asset(address=USDC[:-2]), "assets.0.address", ""),
    ("address-mischecksummed", _with_asset(address=MISCHECKSUMMED), "assets.0.address", "checksum"),
    ("account-mischecksummed", _with(account=MISCHECKSUMMED), "account", "checksum"),
    ("payee-not-address", _with(payees={"deny": ["alice.eth"]}), "payees.deny.0", ""),
    (
        "scope-payee-mischecksummed",
        _session(payees=[MISCHECKSUMMED]),
        "sessions.s.scope.payees.0",
        "checksum",
    ),
    # host patterns: bare host names or *.domain, nothing else
    ("host-with-scheme", _with(hosts={"allow": ["https://api.example.com"]}), "hosts.allow.0", ""),
    ("host-with-path", _with(hosts={"deny": ["example.com/paid"]}), "hosts.deny.0", ""),
    ("host-with-port", _with(hosts={"allow": ["example.com:8443"]}), "hosts.allow.0", ""),
    ("host-with-userinfo", _with(hosts={"allow": ["me@example.com"]}), "hosts.allow.0", ""),
    ("host-double-wildcard", _with(hosts={"allow": ["*.*.example.com"]}), "hosts.allow.0", ""),
    ("host-inner-wildcard", _with(hosts={"allow": ["api*.example.com"]}), "hosts.allow.0", ""),
    ("host-empty-label", _with(hosts={"deny": ["a..example.com"]}), "hosts.deny.0", ""),
    ("host-bare-wildcard", _with(hosts={"deny": ["*."]}), "hosts.deny.0", ""),
    ("host-empty", _with(hosts={"deny": [""]}), "hosts.deny.0", ""),
    ("scope-host-with-scheme", _session(hosts=["http://a.example.com"]), "sessions.s.scope.hosts.0", ""),
    (
        "url-prefix-no-scheme",
        _session(url_prefixes=["api.example.com/"]),
        "sessions.s.scope.url_prefixes.0",
        "",
    ),
    # allowed and denied at once
    (
        "host-allowed-and-denied",
        _with(hosts={"allow": ["Api.Example.com"], "deny": ["api.example.com."]}),
        "hosts",
        "both",
    ),
    (
        "payee-allowed-and-denied",
        _with(payees={"allow": [PAYEE_A], "deny": [PAYEE_A.lower()]}),
        "payees",
        "both",
    ),
    ("network-allowed-and-denied", _with(networks={"allow": [BASE], "deny": [BASE]}), "networks", "both"),
    # sessions
    ("allowance-unknown-symbol", _session(allowance={"DAI": 1}), "sessions.s.allowance.DAI", ""),
    (
        "allowance-unknown-id",
        _session(allowance={f"eip155:1/{USDC}": 1}),
        f"sessions.s.allowance.eip155:1/{USDC}",
        "",
    ),
    (
        "allowance-ambiguous-symbol",
        _both(_add_asset(asset_doc(network=BASE_SEPOLIA, address=TUSDC)), _session()),
        "sessions.s.allowance.USDC",
        "ambiguous",
    ),
    (
        "allowance-same-asset-twice",
        _session(allowance={"USDC": 1, f"{BASE}/{USDC}": 2}),
        f"sessions.s.allowance.{BASE}/{USDC}",
        "already",
    ),
    (
        "allowance-empty",
        _with(sessions={"s": {"lifetime_seconds": 60, "allowance": {}}}),
        "sessions.s.allowance",
        "",
    ),
    ("scope-unknown-asset", _session(assets=["USDC", "DAI"]), "sessions.s.scope.assets.1", "DAI"),
    (
        "allowance-above-daily-max-24h",
        _session(allowance={"USDC": 1_000_001}, lifetime=DAY),
        "sessions.s.allowance.USDC",
        "daily_max",
    ),
    (
        "allowance-above-daily-max-1h",
        _session(allowance={"USDC": 1_000_001}, lifetime=3600),
        "sessions.s.allowance.USDC",
        "daily_max",
    ),
    ("lifetime-zero", _session(lifetime=0), "sessions.s.lifetime_seconds", ""),
    ("lifetime-above-30-days", _session(lifetime=30 * DAY + 1), "sessions.s.lifetime_seconds", ""),
    ("lifetime-float", _session(lifetime=60.0), "sessions.s.lifetime_seconds", ""),
    # the network lists refuse an asset's own network
    ("asset-on-denied-network", _with(networks={"deny": [BASE]}), "assets.0.network", "refuse"),
    (
        "asset-not-on-allowed-network",
        _both(_add_asset(tusdc_doc()), _with(networks={"allow": [BASE]})),
        "assets.1.network",
        "refuse",
    ),
    # the document itself
    ("version-0", _with(version=0), "version", ""),
    ("version-negative", _with(version=-3), "version", ""),
    ("version-string", _with(version="1"), "version", ""),
    ("version-missing", _drop("version"), "version", ""),
    ("wrong-schema", _with(schema="x402-agent/policy/2"), "schema", ""),
    ("unknown-root-field", _with(colour="blue"), "colour", "Extra"),
    ("unknown-asset-field", _with_asset(max_per_request=5), "assets.0.max_per_request", "Extra"),
    ("unknown-scope-field", _session(paths=["/x"]), "sessions.s.scope.paths", "Extra"),
    ("unknown-day-field", _with(day={"kind": "calendar", "tz": "UTC"}), "day.tz", "Extra"),
    ("max-auth-too-small", _with(max_authorization_seconds=9), "max_authorization_seconds", ""),
    ("max-auth-too-large", _with(max_authorization_seconds=DAY + 1), "max_authorization_seconds", ""),
    ("chain-id-zero", _with(chain_id=0), "chain_id", ""),
    ("rate-zero", _with(max_payments_per_minute=0), "max_payments_per_minute", ""),
    (
        "breaker-zero",
        _with(circuit_breaker={"max_consecutive_failures": 0}),
        "circuit_breaker.max_consecutive_failures",
        "",
    ),
]


@pytest.fixture(params=["parse_policy", "load_policy"])
def loader(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[bytes], Policy]:
    if request.param == "parse_policy":
        return parse_policy

    def from_file(raw: bytes) -> Policy:
        path = tmp_path / "policy.json"
        path.write_bytes(raw)
        return load_policy(path)

    return from_file


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 20
    assert len({case[0] for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize(("mutate", "path", "word"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_policy_is_rejected_naming_the_field(
    loader: Callable[[bytes], Policy], mutate: Callable[[dict[str, Any]], None], path: str, word: str
) -> None:
    doc = policy_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as caught:
        loader(json.dumps(doc).encode())
    assert caught.value.reason == "policy_invalid"
    message = caught.value.message
    assert f"{path}:" in message, message
    assert word in message, message


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"null", b"\xff\xfe{}", b'{"version": 1, "x": "\xff"}'],
    ids=["empty", "truncated", "array", "null", "utf16-bom", "bad-utf8"],
)
def test_unparseable_policy_is_policy_invalid(loader: Callable[[bytes], Policy], raw: bytes) -> None:
    with pytest.raises(ConfigError) as caught:
        loader(raw)
    assert caught.value.reason == "policy_invalid"


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(policy_doc(version=0)))
    with pytest.raises(ConfigError, match=r"mine\.json"):
        load_policy(path)


@pytest.mark.parametrize("name", ["absent.json", "."], ids=["missing-file", "directory"])
def test_unreadable_policy_file_is_policy_missing(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(tmp_path / name)
    assert caught.value.reason == "policy_missing"


def test_boundary_values_are_accepted() -> None:
    top = 2**63 - 1
    policy = parse(
        policy_doc(
            asset_doc(per_request_max=top, daily_max=top, approval_above=top - 1),
            version=1,
            max_authorization_seconds=10,
            sessions={"s": session_doc({"USDC": top}, lifetime=30 * DAY)},
        )
    )
    assert policy.assets[0].daily_max == top
    assert parse(policy_doc(max_authorization_seconds=DAY)).max_authorization_seconds == DAY
    assert parse(policy_doc(asset_doc(per_request_max=0, daily_max=0))).assets[0].daily_max == 0


def test_allowance_above_daily_max_is_fine_for_sessions_longer_than_a_day() -> None:
    doc = policy_doc(sessions={"s": session_doc({"USDC": 1_000_001}, lifetime=DAY + 1)})
    assert parse(doc).sessions["s"].allowance == {"USDC": 1_000_001}


def test_allowance_may_name_an_asset_by_id_or_unique_symbol() -> None:
    doc = policy_doc(
        asset_doc(), tusdc_doc(), sessions={"s": session_doc({f"{BASE}/{USDC.lower()}": 5, "tusdc": 6})}
    )
    policy = parse(doc)
    assert policy.asset(f"{BASE}/{USDC.lower()}") == policy.assets[0]
    assert policy.asset("TUSDC") == policy.assets[1]


def test_ambiguous_symbol_needs_the_asset_id() -> None:
    doc = policy_doc(
        asset_doc(),
        asset_doc(network=BASE_SEPOLIA, address=TUSDC),
        sessions={"s": session_doc({f"{BASE_SEPOLIA}/{TUSDC}": 5})},
    )
    policy = parse(doc)
    assert policy.asset("USDC") is None
    assert policy.asset(f"{BASE_SEPOLIA}/{TUSDC}") == policy.assets[1]


def test_addresses_and_hosts_are_normalised() -> None:
    policy = parse(
        policy_doc(
            asset_doc(address=USDC.lower()),
            account=ACCOUNT,
            hosts={"allow": ["API.Example.com.", "*.Example.ORG"]},
        )
    )
    assert policy.assets[0].address == USDC
    assert policy.hosts.allow == ("api.example.com", "*.example.org")


# --- the day window ---------------------------------------------------------------------------


def ts(text: str, zone: str = "UTC") -> float:
    """A local wall-clock time in ``zone`` as a Unix time (first occurrence if repeated)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def calendar(zone: str) -> DayRule:
    return DayRule(kind="calendar", timezone=zone)


@pytest.mark.parametrize("now", [0.0, 1_780_000_000.0, 1_780_000_000.123456, ts("2026-03-08T07:30")])
def test_rolling_day_is_exactly_the_last_86400_seconds(now: float) -> None:
    assert DayRule().kind == "rolling_24h"
    assert DayRule().start(now) == now - 86_400
    assert DayRule(kind="rolling_24h", timezone="Asia/Kolkata").start(now) == now - 86_400


@pytest.mark.parametrize(
    ("zone", "now_utc", "midnight_utc"),
    [
        ("UTC", "2026-05-17T13:45:12", "2026-05-17T00:00:00"),
        ("UTC", "2026-05-17T00:00:00", "2026-05-17T00:00:00"),
        ("UTC", "2026-05-17T23:59:59", "2026-05-17T00:00:00"),
        ("Asia/Kolkata", "2026-05-17T13:45:00", "2026-05-16T18:30:00"),  # 00:00 +05:30
        ("Asia/Kolkata", "2026-05-17T18:29:59", "2026-05-16T18:30:00"),
        ("Asia/Kolkata", "2026-05-17T18:30:00", "2026-05-17T18:30:00"),
        ("America/New_York", "2026-01-15T03:00:00", "2026-01-14T05:00:00"),  # EST, -05:00
        ("America/New_York", "2026-07-15T03:00:00", "2026-07-14T04:00:00"),  # EDT, -04:00
        ("Asia/Kathmandu", "2026-05-17T12:00:00", "2026-05-16T18:15:00"),  # +05:45
        ("Pacific/Kiritimati", "2026-05-17T12:00:00", "2026-05-17T10:00:00"),  # +14:00
    ],
)
def test_calendar_day_starts_at_local_midnight(zone: str, now_utc: str, midnight_utc: str) -> None:
    assert calendar(zone).start(ts(now_utc)) == ts(midnight_utc)


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("America/New_York", "2026-03-08", 23),  # spring forward at 02:00
        ("America/New_York", "2026-11-01", 25),  # fall back at 02:00
        ("Europe/London", "2026-03-29", 23),  # BST begins at 01:00
        ("Europe/London", "2026-10-25", 25),  # BST ends at 02:00
        ("Asia/Kolkata", "2026-03-08", 24),  # no DST
        ("Australia/Lord_Howe", "2026-04-05", 24.5),  # half-hour DST
    ],
)
def test_dst_days_start_at_their_own_midnight(zone: str, day: str, hours: float) -> None:
    rule = calendar(zone)
    midnight = ts(f"{day}T00:00", zone)
    next_midnight = ts((date.fromisoformat(day) + timedelta(days=1)).isoformat() + "T00:00", zone)
    assert next_midnight - midnight == hours * 3600
    for offset in (0, 1, 3600, 3 * 3600, 12 * 3600, next_midnight - midnight - 1):
        assert rule.start(midnight + offset) == midnight, offset
    assert rule.start(next_midnight) == next_midnight


def test_new_york_dst_midnights_in_utc() -> None:
    rule = calendar("America/New_York")
    assert rule.start(ts("2026-03-08T20:00")) == ts("2026-03-08T05:00")  # midnight EST
    assert rule.start(ts("2026-03-09T20:00")) == ts("2026-03-09T04:00")  # midnight EDT
    assert rule.start(ts("2026-11-01T20:00")) == ts("2026-11-01T04:00")  # midnight EDT
    assert rule.start(ts("2026-11-02T20:00")) == ts("2026-11-02T05:00")  # midnight EST
    # inside the repeated hour (01:00-02:00 twice) the day is still the one that began at 04:00Z
    assert rule.start(ts("2026-11-01T05:30")) == ts("2026-11-01T04:00")
    assert rule.start(ts("2026-11-01T06:30")) == ts("2026-11-01T04:00")


def test_repeated_hour_containing_midnight_starts_at_the_first_midnight() -> None:
    # Havana falls back from 01:00 CDT to 00:00 CST on 2026-11-01: 00:00-01:00 happens twice.
    rule = calendar("America/Havana")
    first_midnight = ts("2026-11-01T04:00")
    second_pass = ts("2026-11-01T05:30")  # 00:30 local, for the second time (fold=1)
    assert datetime.fromtimestamp(second_pass, ZoneInfo("America/Havana")).fold == 1
    assert rule.start(ts("2026-11-01T04:30")) == first_midnight
    assert rule.start(second_pass) == first_midnight


def test_skipped_midnight_starts_the_day_at_the_first_instant() -> None:
    # Santiago springs forward from 24:00 to 01:00 on 2026-09-06: midnight does not exist.
    rule = calendar("America/Santiago")
    start = rule.start(ts("2026-09-06T15:00"))
    assert start == ts("2026-09-06T04:00")
    assert datetime.fromtimestamp(start, ZoneInfo("America/Santiago")).hour == 1
    assert datetime.fromtimestamp(start - 1, ZoneInfo("America/Santiago")).day == 5


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/New_York", "Europe/London"])
def test_payments_either_side_of_local_midnight_fall_in_different_days(zone: str) -> None:
    rule = calendar(zone)
    midnight = ts("2026-11-01T00:00", zone)
    before, after = midnight - 1, midnight + 1
    assert rule.start(after) == midnight
    assert rule.start(before) < midnight
    assert rule.start(before) <= before
    # the ledger counts payments made at or after start(now): the one before midnight is not
    # in the new day's window, the one after is, and both were in the old one
    assert not before >= rule.start(after)
    assert after >= rule.start(after)
    assert before >= rule.start(before)


ZONES = [
    "UTC",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Pacific/Kiritimati",
    "Pacific/Apia",
]
TIMES = st.integers(min_value=int(ts("2000-01-01T00:00")), max_value=int(ts("2040-01-01T00:00")))


@settings(max_examples=400, deadline=None)
@given(now=TIMES, zone=st.sampled_from(ZONES), frac=st.sampled_from([0.0, 0.25, 0.999]))
def test_calendar_start_is_the_first_instant_of_the_local_day(now: int, zone: str, frac: float) -> None:
    tz = ZoneInfo(zone)
    start = calendar(zone).start(now + frac)
    assert start <= now + frac
    assert now + frac - start < 25 * 3600
    assert start == int(start)
    local_day = datetime.fromtimestamp(now, tz).date()
    assert datetime.fromtimestamp(start, tz).date() == local_day
    assert datetime.fromtimestamp(start - 1, tz).date() < local_day


@settings(max_examples=100, deadline=None)
@given(now=TIMES, zone=st.sampled_from(ZONES))
def test_rolling_start_property(now: int, zone: str) -> None:
    assert DayRule(kind="rolling_24h", timezone=zone).start(now) == now - 86_400


def test_day_window_does_not_depend_on_the_machine_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    now = ts("2026-05-17T02:00")
    expected = calendar("Asia/Kolkata").start(now)
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        assert calendar("Asia/Kolkata").start(now) == expected
        assert calendar("UTC").start(now) == datetime(2026, 5, 17, tzinfo=UTC).timestamp()
    finally:
        monkeypatch.undo()
        if hasattr(time, "tzset"):
            time.tzset()


# --- host patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("example.com", ("example.com",), True),
        ("api.example.com", ("example.com",), False),  # exact means exact
        ("sub.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),  # the wildcard is for subdomains only
        ("badexample.com", ("*.example.com",), False),
        ("example.com.evil.net", ("*.example.com",), False),
        ("example.com.evil.net", ("example.com",), False),
        ("Sub.EXAMPLE.com", ("*.example.com",), True),  # hosts are case-insensitive
        ("EXAMPLE.COM", ("example.com",), True),
        ("example.com.", ("example.com",), True),  # trailing dot: the same host
        ("sub.example.com.", ("*.example.com",), True),
        ("example.com.", ("*.example.com",), False),
        ("other.org", ("example.com", "*.other.org"), False),
        ("x.other.org", ("example.com", "*.other.org"), True),
        ("example.com", (), False),
    ],
)
def test_host_matches(host: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert host_matches(host, patterns) is expected


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("Example.COM", "example.com", True),
        ("example.com.", "example.com", True),  # a pattern's trailing dot is dropped at load
        ("example.com.", "example.com.", True),
        ("*.Example.com.", "api.example.com", True),
        ("*.example.com.", "example.com", False),
    ],
)
def test_host_patterns_from_a_policy_match_as_written(pattern: str, host: str, expected: bool) -> None:
    hosts = parse(policy_doc(hosts={"deny": [pattern]})).hosts.deny
    assert host_matches(host, hosts) is expected
