"""Numbered ledger migrations: a ledger written by the previous release (d37c352, the last
before numbered migrations) migrates when this release opens it, on SQLite and PostgreSQL.

The old ledger is written by that release's own code: its tree is taken from git
(``git archive d37c352``) and run in a child process (tests/ledger_release.py) with it first on
PYTHONPATH, so the schema under test is the one it created, not a copy of it. Every row, the
budget and the usage it read back must read the same through this release, and what was in
flight must still count against the daily limit.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from x402_agent.decision import Usage
from x402_agent.errors import PolicyDenied
from x402_agent.ledger import Ledger, SQLiteLedger
from x402_agent.ledger.migrations import LATEST, MIGRATIONS
from x402_agent.reasons import Reason

PREVIOUS_RELEASE = "d37c352"
REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "ledger_release.py"
CHILD_TIMEOUT = 120

sys.path.insert(0, str(SCRIPT.parent))
import ledger_release  # noqa: E402  (the child script, imported for its constants)


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's package tree, from git."""
    tree = tmp_path_factory.mktemp("release-d37c352")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "x402_agent"],
        capture_output=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def run_release(tree: Path | None, *args: str) -> dict[str, Any]:
    """Run the child script under the release in ``tree`` (None: this release)."""
    env = {**os.environ, "PYTHONPATH": str(tree or REPO)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=tree or REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "ledger.sqlite3")


def open_spec(spec: str) -> Ledger:
    return ledger_release.open_ledger(spec)


def schema_versions(spec: str) -> list[tuple[int, str, str]]:
    query = "SELECT version, name, applied_by FROM schema_version ORDER BY version"
    if spec.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(spec) as conn:
            return [tuple(row) for row in conn.execute(query).fetchall()]
    with sqlite3.connect(spec) as db:
        return [tuple(row) for row in db.execute(query).fetchall()]


def written_by_previous_release(tree: Path, spec: str, now: float) -> dict[str, Any]:
    before = run_release(tree, "write", spec, repr(now))
    assert before["release"].startswith(str(tree)), "the child must run the previous release"
    states = sorted(row["state"] for row in before["rows"])
    assert states == sorted(ledger_release.AMOUNTS), states
    return before


def test_previous_release_ledger_migrates_on_open_rows_and_budget_intact(
    previous_release: Path, spec: str
) -> None:
    now = time.time() + 60
    before = written_by_previous_release(previous_release, spec, now)

    after = run_release(None, "figures", spec, repr(now))
    assert after["release"].startswith(str(REPO / "x402_agent"))
    # Every row as the old release read it, and the new columns filled as that release meant.
    assert len(after["rows"]) == len(before["rows"]) == len(ledger_release.AMOUNTS)
    for old, new in zip(before["rows"], after["rows"], strict=True):
        assert {key: new[key] for key in old} == old
        assert (new["scheme"], new["credential"]) == ("exact", "eip3009")
        assert new["settled_amount"] == (old["amount"] if old["state"] == "settled" else None)
    assert after["budget"] == before["budget"]
    assert after["usage"] == before["usage"]
    # What is or may become a transfer (settled, sent, unknown, reserved) is counted, the
    # released row is not.
    counted = sum(v for k, v in ledger_release.AMOUNTS.items() if k != "released")
    assert after["usage"]["daily_spent"] == counted == 4123
    (asset,) = after["budget"]["assets"]
    assert (asset["in_flight"], asset["unknown"], asset["unknown_count"]) == (4020, 3, 1)

    assert (
        [v for v, _, _ in schema_versions(spec)]
        == [v for v, _, _ in MIGRATIONS]
        == list(range(1, LATEST + 1))
    )

    # The old rows still count against the daily limit: with the limit at what they add up to
    # plus 1, one more unit is allowed and two are refused.
    limit = counted + 1

    def daily_limit(amount: int) -> Any:
        def check(usage: Usage) -> None:
            if usage.daily_spent + amount > limit:
                raise PolicyDenied("over the daily limit", reason=Reason.DAILY_LIMIT_EXCEEDED)

        return check

    ledger = open_spec(spec)
    try:
        payment = ledger_release.payment("new", 2)
        with pytest.raises(PolicyDenied) as refused:
            ledger.reserve(payment, ledger_release.query(now), daily_limit(2))
        assert refused.value.reason == Reason.DAILY_LIMIT_EXCEEDED
        one = ledger.reserve(ledger_release.payment("new", 1), ledger_release.query(now), daily_limit(1))
        assert (one.scheme, one.credential, one.amount) == ("exact", "eip3009", 1)
    finally:
        ledger.close()
    # Opening the migrated ledger again applied nothing more.
    assert len(schema_versions(spec)) == LATEST


def open_at_once(spec: str, openers: int = 2) -> list[str]:
    """Start ``openers`` processes of this release that each open ``spec`` at the same word;
    their owner ids."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "open", spec],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(openers)
    ]
    try:
        for child in children:  # every child has imported everything: the opens start together
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        owners = []
        for child in children:
            out, err = child.communicate(timeout=CHILD_TIMEOUT)
            assert child.returncode == 0, err
            owners.append(json.loads(out)["owner"])
        return owners
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_two_processes_opening_an_old_ledger_at_once_migrate_it_once(
    previous_release: Path, spec: str
) -> None:
    now = time.time() + 60
    before = written_by_previous_release(previous_release, spec, now)

    owners = open_at_once(spec)

    versions = schema_versions(spec)
    # Each migration recorded once, all by one of the two openers (the other found it done);
    # had both run one, the second's ALTER TABLE or version insert would have failed its open.
    assert [v for v, _, _ in versions] == list(range(1, LATEST + 1))
    (migrator,) = {by for _, _, by in versions}
    assert migrator in owners and len(set(owners)) == 2
    after = run_release(None, "figures", spec, repr(now))
    assert after["budget"] == before["budget"] and after["usage"] == before["usage"]
    assert len(after["rows"]) == len(before["rows"])


def test_a_new_ledger_is_created_at_the_latest_version(tmp_path: Path) -> None:
    ledger = SQLiteLedger(tmp_path / "new.sqlite3")
    ledger.close()
    versions = schema_versions(str(tmp_path / "new.sqlite3"))
    assert [(v, name) for v, name, _ in versions] == [(v, name) for v, name, _ in MIGRATIONS]
    assert {by for _, _, by in versions} == {ledger.owner}


def test_a_ledger_from_a_newer_release_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    SQLiteLedger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO schema_version (version, name, applied_at, applied_by) VALUES (?, ?, ?, ?)",
            (LATEST + 1, "from_the_future", time.time(), "someone"),
        )
    from x402_agent.errors import LedgerError

    with pytest.raises(LedgerError, match="newer than this release"):
        SQLiteLedger(path)
    assert len(schema_versions(str(path))) == LATEST + 1
