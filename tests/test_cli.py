"""The `x402-agent` command, run as users run it: a separate process per command."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from chain_reads import token_balance

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home

CLI = [sys.executable, "-m", "x402_agent.cli"]


@pytest.fixture
def home(world: WorldInfo, tmp_path: Path) -> Path:
    return provision_devnet_home(world, tmp_path / "home").root


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_fetch_pays_and_prints_the_resource(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/weather")
    done = run(home, "fetch", route.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)  # the resource itself
    assert "paid 0.001 USDC" in done.stderr


def test_fetch_json_post_and_receipts_in_json_and_csv(world: WorldInfo, home: Path) -> None:
    route = world.route("POST", "/v2/summarize")
    done = run(
        home,
        "fetch",
        route.url,
        "-X",
        "POST",
        "-d",
        '{"text":"hi"}',
        "-H",
        "content-type: application/json",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == 200 and result["receipt"]["state"] == "settled"
    assert result["receipt"]["amount"] == str(route.price_atomic)

    as_json = json.loads(run(home, "receipts", "--format", "json").stdout)
    assert [r["id"] for r in as_json] == [result["receipt"]["id"]]
    assert as_json[0]["settlement_tx"] == result["receipt"]["settlement_tx"]
    rows = list(csv.DictReader(io.StringIO(run(home, "receipts", "--format", "csv").stdout)))
    assert len(rows) == 1 and rows[0]["price"] == "0.005" and rows[0]["method"] == "POST"
    assert rows[0]["policy_digest"].startswith("sha256:")
    table = run(home, "receipts").stdout
    assert "settled" in table and route.url in table


def test_quote_reports_price_and_verdict_without_paying(world: WorldInfo, home: Path) -> None:
    before = token_balance(world.rpc_url, world.usdc.address, world.payer_address)
    allowed = run(home, "quote", world.route("GET", "/v2/report").url, "--json")
    assert allowed.returncode == 0
    assert json.loads(allowed.stdout)["chosen"]["price"] == "0.01"
    refused = run(home, "quote", world.route("GET", "/v2/premium").url)
    assert refused.returncode == 1 and "per_request_cap_exceeded" in refused.stdout
    assert token_balance(world.rpc_url, world.usdc.address, world.payer_address) == before


def test_max_price_refusal_is_a_typed_error(world: WorldInfo, home: Path) -> None:
    done = run(home, "fetch", world.route("GET", "/v2/report").url, "--max-price", "0.005", "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["reason"] == "price_above_max" and error["error"] == "PolicyDenied"


def test_idempotency_key_holds_across_processes(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/report")
    before = token_balance(world.rpc_url, world.usdc.address, route.pay_to)
    first = run(home, "fetch", route.url, "--idempotency-key", "invoice-7", "--json")
    second = run(home, "fetch", route.url, "--idempotency-key", "invoice-7", "--json")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["replayed"] is True
    assert json.loads(second.stdout)["receipt"]["id"] == json.loads(first.stdout)["receipt"]["id"]
    assert token_balance(world.rpc_url, world.usdc.address, route.pay_to) - before == (route.price_atomic)
    conflict = run(home, "fetch", route.url, "-X", "POST", "--idempotency-key", "invoice-7")
    assert conflict.returncode == 1 and "idempotency_key_conflict" in conflict.stderr


def test_missing_home_is_a_clear_usage_error(tmp_path: Path) -> None:
    done = run(tmp_path / "nowhere", "fetch", "http://127.0.0.1:9/x")
    assert done.returncode == 2 and "home_missing" in done.stderr


def test_secrets_never_reach_output(world: WorldInfo, home: Path) -> None:
    password = (home / "payer.password").read_text()
    outputs = [
        run(home, "fetch", world.route("GET", "/v2/weather").url, "--json"),
        run(home, "receipts", "--format", "json"),
        run(home, "fetch", world.route("GET", "/v2/premium").url),
    ]
    key = world.payer_private_key.removeprefix("0x").lower()
    for done in outputs:
        text = (done.stdout + done.stderr).lower()
        assert key not in text and password.lower() not in text


def test_devnet_command_runs_a_world_a_fetch_can_pay(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "devnet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert {"rpc_url", "chain_id", "token", "api_url", "agent_home"} <= set(ready)
        assert ready["batch"]["settlement"] == "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
        done = run(Path(ready["agent_home"]), "fetch", ready["api_url"] + "/v2/weather")
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not Path(ready["agent_home"]).exists()  # scratch home removed with the world
    for url in (ready["rpc_url"], ready["api_url"], ready["v1_api_url"], ready["batch"]["api_url"]):
        with pytest.raises(httpx.ConnectError):  # nothing left listening
            httpx.get(url, timeout=5)


def test_demo_command_runs_to_the_end() -> None:
    """The README's first command, as a user runs it (the table itself: test_demo.py)."""
    done = subprocess.run(
        [*CLI, "demo"], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("│ settled │") == 11
    assert (
        "refusals, in order: per_request_cap_exceeded, session_allowance_exceeded, "
        "daily_limit_exceeded, session_allowance_exceeded"
    ) in done.stdout
    assert "nothing left running" in done.stdout


def test_budget_and_named_session(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/report")  # 0.01 USDC
    for _ in range(2):
        assert run(home, "fetch", route.url, "--session", "job-a").returncode == 0
    view = json.loads(run(home, "budget", "--session", "job-a", "--json").stdout)
    usdc = next(a for a in view["assets"] if a["network"] == world.network)
    assert usdc["counted_today"] == "20000" and usdc["daily_remaining"] == str(2_000_000 - 20_000)
    assert usdc["in_flight"] == "0" and usdc["unknown"] == "0"
    (allowance,) = view["session"]["allowance"]
    assert allowance["spent"] == "20000" and allowance["remaining_display"] == "0.48"
    assert view["circuit_breaker"]["open"] is False
    text = run(home, "budget", "--session", "job-a").stdout
    assert "1.98 of 2 left today" in text and "0.48 USDC left" in text
    assert run(home, "breaker", "reset").returncode == 0


def test_init_makes_a_home_with_an_encrypted_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "X402_AGENT_KEY_PASSWORD"}
    args = [
        *CLI,
        "--home",
        str(home),
        "init",
        "--network",
        "eip155:84532",
        "--rpc-url",
        "http://127.0.0.1:8545",
        "--new-key",
    ]
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "keystore_password_missing" in refused.stderr
    assert not (home / "config.json").exists()  # nothing written before the password is known
    password = "correct horse battery staple"
    done = subprocess.run(
        args, env={**env, "X402_AGENT_KEY_PASSWORD": password}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((home / "config.json").read_text())
    assert config["chain_id"] == 84532 and config["rpc_urls"] == {"eip155:84532": "http://127.0.0.1:8545"}
    keystore = json.loads((home / "payer.keystore.json").read_text())
    assert keystore["address"].lower() in done.stdout.lower() and "crypto" in keystore
    assert password not in done.stdout + done.stderr
    assert oct((home / "payer.keystore.json").stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run(
        [*CLI, "--home", str(tmp_path / "other"), "init", "--network", "solana:x", "--rpc-url", "http://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "config_invalid" in bad.stderr
