"""The policy documents shipped in policies/: examples load, the schema file is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from x402_agent.cli import main
from x402_agent.policy import json_schema, load_policy

POLICIES = Path(__file__).resolve().parents[1] / "policies"


@pytest.mark.parametrize("name", ["default", "research-agent", "fleet"])
def test_example_policies_load(name: str) -> None:
    policy = load_policy(POLICIES / f"{name}.json")
    assert policy.version >= 1 and policy.assets
    assert all(a.daily_max is not None for a in policy.assets), "examples set daily limits"


def test_schema_file_is_what_the_code_exports(capsys: pytest.CaptureFixture[str]) -> None:
    on_disk = json.loads((POLICIES / "policy.schema.json").read_text())
    assert on_disk == json_schema(), "regenerate: x402-agent policy schema > policies/policy.schema.json"
    assert main(["policy", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == on_disk
