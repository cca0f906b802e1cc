"""One vocabulary of outcomes: every reason code any layer can produce is a ``Reason`` member
with a message and a next step, and the MCP tools, the LangChain tools and docs/reasons.md
list every one of them."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

from test_mcp import stdio_session

from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home
from x402_agent.langchain_tools import DESCRIPTIONS
from x402_agent.reasons import NOT_REFUSALS, Reason, markdown

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "x402_agent"
# Calls with a reason among their positional arguments, and where it is.
REASON_ARGS = {"ToolRefusal": 0, "refuse": 0, "Decision": 1, "check_key": 2, "Quote": 4}
# Keywords and attributes that hold a reason (``release(reason=...)`` is a ledger note, not one).
REASON_NAMES = {"reason", "silence"}


def literals_in(value: ast.expr | None) -> list[ast.expr]:
    """The string literals a reason expression can evaluate to (both branches of an ``if``)."""
    if isinstance(value, ast.IfExp):
        return literals_in(value.body) + literals_in(value.orelse)
    if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        return [value]
    return []


def reason_sites() -> tuple[list[str], set[str]]:
    """String literals where a reason belongs (each a failure), and the members referenced."""
    literals: list[str] = []
    used: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name != "release":
                    for keyword in node.keywords:
                        if keyword.arg in REASON_NAMES:
                            found += literals_in(keyword.value)
                index = REASON_ARGS.get(name)
                if index is not None and len(node.args) > index:
                    found += literals_in(node.args[index])
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(getattr(t, "id", getattr(t, "attr", "")) in REASON_NAMES for t in targets):
                    found += literals_in(node.value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        found += literals_in(value)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Reason"
            ):
                used.add(node.attr)
            literals += [f"{where}:{n.lineno}: {ast.unparse(n)}" for n in found]
    return literals, used


def test_every_reason_site_uses_a_member_and_every_member_is_produced() -> None:
    literals, used = reason_sites()
    # A code written as a string would be a second vocabulary (and could lack a next step).
    assert literals == [], "\n".join(literals)
    members = {r.name for r in Reason}
    assert used - members - {"of"} == set()
    # Every member is produced somewhere (a code nothing returns is a stale entry).
    assert members - used == set()


def test_every_reason_has_a_message_and_a_next_step() -> None:
    assert len({r.value for r in Reason}) == len(Reason)
    for reason in Reason:
        assert reason.value.isidentifier() and reason.value.islower(), reason
        assert reason.message.strip() and reason.next_step.strip(), reason
        assert "{" not in reason.next_step, reason  # every limit it names was filled in
        assert Reason.of(reason.value) is reason
    assert Reason.of("no_such_code") is None


def test_every_refusal_is_in_the_mcp_tool_description(world: WorldInfo, tmp_path: Path) -> None:
    """Through a real tools/list over stdio."""
    home = provision_devnet_home(world, tmp_path / "home").root

    async def describe() -> str:
        async with stdio_session(home, tmp_path / "err.log") as session:
            listed = await session.list_tools()
        return next(t.description or "" for t in listed.tools if t.name == "x402_fetch")

    description = asyncio.run(describe())
    missing = [r.value for r in Reason if r not in NOT_REFUSALS and r.value not in description]
    assert missing == []
    assert "next_step" in description


def test_every_refusal_is_in_the_langchain_tool_description() -> None:
    missing = [r.value for r in Reason if r not in NOT_REFUSALS and r.value not in DESCRIPTIONS["fetch"]]
    assert missing == []


def test_reasons_doc_is_generated_from_the_enum() -> None:
    doc = (ROOT / "docs" / "reasons.md").read_text()
    assert doc == markdown(), "regenerate: python -m x402_agent.reasons > docs/reasons.md"
    for reason in Reason:
        assert f"| `{reason.value}` |" in doc
    done = subprocess.run(
        [sys.executable, "-m", "x402_agent.reasons"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == doc
