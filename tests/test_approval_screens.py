"""The policy approval screens show what loosens (issue 12, item 2).

Every field of the policy model is either shown on the device or listed, with the reason, as not
widening spending: a field added later fails here until it is classified. A change is shown as
its diff against the approved policy (old and new values, hosts added and removed), the full new
values included, and the digest stays the last line. On the device simulator (through HWI) a
scripted person turns the pages of the screen, reads the whole text and approves only what it
expects: a widened host list names the host, a raised limit shows old and new values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from test_device_policy import screens  # noqa: F401 (the fixture)

from x402_agent.approval import PolicyRejected, approval_message, bitcoin_message_digest
from x402_agent.approval_text import MAX_TEXT_BYTES, NOT_SHOWN_FIELDS, SHOWN_FIELDS
from x402_agent.device.simulator import DeviceSimulator, Screen
from x402_agent.device.simulator.workflow import CONTINUED
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.policy import Policy, load_policy
from x402_agent.policy_store import APPROVAL_FILE, POLICY_FILE, PROPOSED_FILE

CLI = [sys.executable, "-m", "x402_agent.cli"]
SCREEN_WAIT = 60.0
PAYEE = "0x00000000000000000000000000000000000000A1"


# ---- the policy model: every field classified -------------------------------------------------
def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the model's leaf fields (through nested models, tuples and dicts of them)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _model_in(info.annotation)
        if nested is None:
            yield path
        else:
            yield from _fields(nested, path + ".")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def test_every_policy_field_is_shown_or_said_not_to_widen() -> None:
    fields = set(_fields(Policy))
    assert fields == SHOWN_FIELDS | set(NOT_SHOWN_FIELDS), (
        f"classify in approval_text: new {sorted(fields - SHOWN_FIELDS - set(NOT_SHOWN_FIELDS))}, "
        f"gone {sorted((SHOWN_FIELDS | set(NOT_SHOWN_FIELDS)) - fields)}"
    )
    assert not SHOWN_FIELDS & set(NOT_SHOWN_FIELDS)


BASE: dict[str, Any] = {
    "version": 1,
    "account": "0x1200000000000000000000000000000000000Ab0",
    "chain_id": 8453,
    "assets": [
        {
            "network": "eip155:8453",
            "address": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "symbol": "USDC",
            "decimals": 6,
            "eip712_name": "USD Coin",
            "eip712_version": "2",
            "per_request_max": 100_000,
            "daily_max": 5_000_000,
            "approval_above": 50_000,
        }
    ],
    "hosts": {"allow": ["api.example.com"]},
    "payees": {"allow": [PAYEE]},
    "networks": {"allow": ["eip155:8453"]},
    "max_payments_per_minute": 10,
    "circuit_breaker": {"max_consecutive_failures": 3},
    "sessions": {
        "default": {
            "lifetime_seconds": 3600,
            "allowance": {"USDC": 1_000_000},
            "scope": {"hosts": ["api.example.com"]},
        }
    },
    "private_network": {"allow": ["127.0.0.1:4021"]},
    "max_paid_body_bytes": 1_000_000,
}


def _asset(data: dict[str, Any]) -> dict[str, Any]:
    asset: dict[str, Any] = data["assets"][0]
    return asset


def _scope(data: dict[str, Any]) -> dict[str, Any]:
    scope: dict[str, Any] = data["sessions"]["default"]["scope"]
    return scope


# One widening (or at least visible) change per shown field, and what the text must then say.
CHANGES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "version": (lambda d: d.update(version=2), "x402-agent policy v2 replaces v1"),
    "account": (lambda d: d.update(account=PAYEE), f"account: {PAYEE.lower()} (was 0x12"),
    "chain_id": (lambda d: d.update(chain_id=1), "chain 1 (was 8453)"),
    "day.kind": (lambda d: d.update(day={"kind": "calendar"}), "day calendar UTC (was rolling 24h)"),
    "day.timezone": (
        lambda d: d.update(day={"kind": "calendar", "timezone": "Asia/Tokyo"}),
        "day calendar Asia/Tokyo (was rolling 24h)",
    ),
    "assets.network": (
        lambda d: (_asset(d).update(network="eip155:1"), d["networks"].update(allow=["eip155:1"])),
        "+ pay USDC on eip155:1 token",
    ),
    "assets.address": (
        lambda d: _asset(d).update(address=PAYEE),
        f"+ pay USDC on eip155:8453 token {PAYEE.lower()}",
    ),
    "assets.symbol": (
        lambda d: (_asset(d).update(symbol="USDT"), d["sessions"]["default"].update(allowance={"USDT": 1})),
        "+ pay USDT on eip155:8453",
    ),
    "assets.decimals": (lambda d: _asset(d).update(decimals=2), "decimals 2 (was 6)"),
    "assets.per_request_max": (
        lambda d: _asset(d).update(per_request_max=300_000),
        "per-request 0.30 (was 0.10)",
    ),
    "assets.daily_max": (lambda d: _asset(d).update(daily_max=None), "daily no limit (was 5.00)"),
    "assets.approval_above": (
        lambda d: _asset(d).update(approval_above=None),
        "device approval above never (was 0.05)",
    ),
    "assets.schemes": (
        lambda d: _asset(d).update(schemes=["exact", "upto"]),
        "schemes exact upto (added upto)",
    ),
    "assets.max_channel_deposit": (
        lambda d: _asset(d).update(max_channel_deposit=2_000_000),
        "channel deposit 2.00",
    ),
    "hosts.allow": (
        lambda d: d["hosts"].update(allow=["api.example.com", "evil.example"]),
        "hosts: allow api.example.com evil.example (added evil.example)",
    ),
    "hosts.deny": (lambda d: d["hosts"].update(deny=["ads.example"]), "deny ads.example (added ads.example)"),
    "payees.allow": (lambda d: d["payees"].update(allow=None), f"payees: allow any (was {PAYEE.lower()})"),
    "payees.deny": (
        lambda d: d["payees"].update(deny=[PAYEE.replace("A1", "B2")]),
        "deny 0x0000000000000000000000000000000000000",
    ),
    "networks.allow": (lambda d: d["networks"].update(allow=None), "networks: allow any (was eip155:8453)"),
    "networks.deny": (lambda d: d["networks"].update(deny=["eip155:1"]), "deny eip155:1 (added eip155:1)"),
    "max_payments_per_minute": (lambda d: d.update(max_payments_per_minute=100), "rate 100/min (was 10/min)"),
    "circuit_breaker.max_consecutive_failures": (
        lambda d: d.update(circuit_breaker=None),
        "breaker none (was after 3 failures)",
    ),
    "sessions.lifetime_seconds": (
        lambda d: d["sessions"]["default"].update(lifetime_seconds=7200),
        "lifetime 2h (was 1h)",
    ),
    "sessions.allowance": (
        lambda d: d["sessions"]["default"].update(allowance={"USDC": 2_000_000}),
        "USDC@eip155:8453 2.00 (was 1.00)",
    ),
    "sessions.scope.hosts": (
        lambda d: _scope(d).update(hosts=["api.example.com", "*.example.org"]),
        "hosts api.example.com *.example.org (added *.example.org)",
    ),
    "sessions.scope.url_prefixes": (
        lambda d: _scope(d).update(url_prefixes=["https://api.example.com/v1/"]),
        "url prefixes https://api.example.com/v1/ (was any)",
    ),
    "sessions.scope.payees": (
        lambda d: _scope(d).update(payees=[PAYEE]),
        f"payees {PAYEE.lower()} (was any)",
    ),
    "sessions.scope.networks": (
        lambda d: _scope(d).update(networks=["eip155:8453"]),
        "networks eip155:8453 (was any)",
    ),
    "sessions.scope.assets": (
        lambda d: _scope(d).update(assets=["USDC"]),
        "assets USDC@eip155:8453 (was any)",
    ),
    "max_authorization_seconds": (
        lambda d: d.update(max_authorization_seconds=3600),
        "authorization up to 1h (was 5m)",
    ),
    "private_network.allow": (
        lambda d: d.update(private_network={"allow": ["127.0.0.1:4021", "10.0.0.0/8"]}),
        "private network: allow 127.0.0.1:4021 10.0.0.0/8 (added 10.0.0.0/8)",
    ),
    "max_paid_body_bytes": (
        lambda d: d.update(max_paid_body_bytes=None),
        "paid body max default (was 1000000 B)",
    ),
    "reaccess.sign_in": (
        lambda d: d.update(reaccess={"sign_in": False}),
        "re-access off (was 1d)",
    ),
    "reaccess.max_entitlement_seconds": (
        lambda d: d.update(reaccess={"max_entitlement_seconds": 3600}),
        "re-access 1h (was 1d)",
    ),
}


def test_every_shown_field_has_a_change_checked_below() -> None:
    assert set(CHANGES) == SHOWN_FIELDS


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_a_change_of_each_shown_field_is_on_the_screen(field: str) -> None:
    old = Policy.model_validate(BASE)
    data = json.loads(json.dumps(BASE))
    data["version"] = 2
    change, expected = CHANGES[field]
    change(data)
    new = Policy.model_validate(data)
    text = approval_message(new, old)
    assert expected in text, text
    assert text.splitlines()[-1] == new.digest  # the digest stays the last line
    # The full new policy is on it too: the text without the diff's annotations is the same.
    assert approval_message(new).splitlines()[1:] == [
        _without_diff(line) for line in text.splitlines()[1:] if not line.startswith("- ")
    ]


def _without_diff(line: str) -> str:
    """The line as it reads without a previous policy: no '+ ' marks, no '(was ...)'/'(added ...)'."""
    import re

    return re.sub(r" \((?:was|added|removed) [^)]*\)", "", line.removeprefix("+ "))


def test_a_removed_asset_is_named() -> None:
    two = json.loads(json.dumps(BASE))
    two["assets"].append({**BASE["assets"][0], "symbol": "EURC", "address": PAYEE})
    old = Policy.model_validate(two)
    new = Policy.model_validate({**BASE, "version": 2})
    assert f"- pay EURC on eip155:8453 token {PAYEE.lower()}: removed" in approval_message(new, old)


def test_a_text_longer_than_a_device_signs_is_refused_with_a_reason() -> None:
    hosts = [f"host-{i:03d}.example.com" for i in range(60)]
    data = {**BASE, "hosts": {"allow": hosts}}
    with pytest.raises(PolicyRejected) as refused:
        approval_message(Policy.model_validate(data))
    assert refused.value.reason == "policy_text_too_long"
    assert f"above the {MAX_TEXT_BYTES}" in refused.value.message and "hosts" in refused.value.message


def test_long_texts_use_the_bitcoin_varint() -> None:
    """Past 252 bytes the signed-message length is 0xfd + 2 bytes (as the device hashes it)."""
    import hashlib

    text = approval_message(Policy.model_validate(BASE))
    assert 0xFD <= len(text.encode()) <= MAX_TEXT_BYTES
    data = text.encode()
    payload = b"\x18Bitcoin Signed Message:\n" + b"\xfd" + len(data).to_bytes(2, "little") + data
    assert bitcoin_message_digest(text) == hashlib.sha256(hashlib.sha256(payload).digest()).digest()


# ---- on the device simulator, a scripted person reading the pages -----------------------------
def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def start_approve(home: Path) -> subprocess.Popen[str]:
    """`x402-agent policy approve`, left waiting for the person at the device."""
    return subprocess.Popen(
        [*CLI, "policy", "approve"],
        env={**os.environ, "X402_AGENT_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_every_page(simulator: DeviceSimulator) -> tuple[Screen, str]:
    """What a person reads: wait for the screen, turn every page, put the message together
    (a display line ending in the continuation mark goes on on the next one)."""
    screen = simulator.wait_for_screen(timeout=SCREEN_WAIT)
    assert screen is not None, "the device was never asked"
    seen = [screen.pages[simulator.page]]
    while simulator.next_page():
        seen.append(screen.pages[simulator.page])
    assert len(seen) == len(screen.pages) > 1  # a long text: several pages, all shown
    rows = "\n".join(seen).split("\n")
    lines, joined = [], ""
    for row in rows[rows.index("Message:") + 1 :]:
        if row.endswith(CONTINUED):
            joined += row.removesuffix(CONTINUED)
        else:
            lines.append(joined + row)
            joined = ""
    return screen, "\n".join(lines)


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> Path:
    """A devnet home whose approved v1 allows one host (the world's API address)."""
    data = devnet_policy(world).model_dump(by_alias=True)
    data["hosts"] = {"allow": ["127.0.0.1"]}
    return provision_devnet_home(world, tmp_path / "home", Policy.model_validate(data)).root


def _propose(home: Path, tmp_path: Path, hosts: tuple[str, ...], per_request_max: int) -> Policy:
    current = load_policy(home / POLICY_FILE)
    data = current.model_dump(by_alias=True)
    data["version"] = current.version + 1
    data["hosts"]["allow"] = list(hosts)
    for asset in data["assets"]:
        asset["per_request_max"] = per_request_max
    new = Policy.model_validate(data)
    path = tmp_path / f"v{new.version}.json"
    path.write_text(new.model_dump_json(by_alias=True))
    done = run(home, "policy", "propose", str(path))
    assert done.returncode == 0, done.stderr
    return new


def test_the_person_reads_the_added_host_and_the_raised_limit_on_the_pages(
    world: WorldInfo,
    home: Path,
    device_simulator: DeviceSimulator,
    screens: list[Screen],  # noqa: F811
    tmp_path: Path,
) -> None:
    v1 = load_policy(home / POLICY_FILE)
    device_simulator.confirm, device_simulator.honor_debuglink = "wait", False

    # A compromised host slips another host into the proposal: the person, who asked only for a
    # higher limit, reads the pages, finds the host named, and rejects.
    sneaky = _propose(home, tmp_path, ("127.0.0.1", "attacker.example"), 300_000)
    approving = start_approve(home)
    _, text = read_every_page(device_simulator)
    assert "hosts: allow 127.0.0.1 attacker.example (added attacker.example)" in text
    assert "per-request 0.30 (was 0.10)" in text
    assert text.splitlines()[-1] == sneaky.digest  # the digest is the last thing read
    assert device_simulator.reject()
    _, err = approving.communicate(timeout=120)
    assert approving.returncode == 1 and "[device_rejected]" in err
    assert load_policy(home / POLICY_FILE) == v1  # nothing installed

    # What the person asked for: the limit raised, the host list as it was. Read, then approved.
    wanted = _propose(home, tmp_path, ("127.0.0.1",), 300_000)
    approving = start_approve(home)
    screen, text = read_every_page(device_simulator)
    assert text.startswith(f"x402-agent policy v{wanted.version} replaces v1")
    assert "hosts: allow 127.0.0.1, deny none" in text  # unchanged: no diff mark
    assert "attacker.example" not in text
    assert text.count("per-request 0.30 (was 0.10)") == len(wanted.assets)
    assert text.splitlines()[-1] == wanted.digest and wanted.digest.endswith(screen.pages[-1].split("\n")[-1])
    assert text == approval_message(wanted, v1)  # the pages hold exactly the signed text
    assert device_simulator.approve()
    out, err = approving.communicate(timeout=120)
    assert approving.returncode == 0, err
    assert "no chain anchor (plain-key home)" in out  # and says it is weaker
    assert load_policy(home / POLICY_FILE).digest == wanted.digest
    assert not (home / PROPOSED_FILE).exists()
    assert json.loads((home / APPROVAL_FILE).read_text())["previous"]["version"] == 1
    assert [s.kind for s in screens] == ["sign_message", "sign_message"]
