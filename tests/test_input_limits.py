"""Every bad input is a typed refusal with a reason, never a traceback, through every way in.

Each case runs through the CLI (``main(argv)`` in this process, and a few as real processes),
the MCP server (a real client session over stdio), the LangChain toolkit and the Python API
(both drivers), against a real agent home on the local world. The target is a request-counting
server on loopback: it must receive nothing, and the ledger must hold nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hostile_server import Canned, HostileServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mcp import stdio_session, structured

from x402_agent import request_limits as limits
from x402_agent.agent_tools import AgentTools, ToolRefusal
from x402_agent.cli import main
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import devnet_policy, provision_devnet_home
from x402_agent.errors import InvalidRequest, PolicyDenied, X402AgentError
from x402_agent.langchain_tools import X402Toolkit
from x402_agent.operations import Agent
from x402_agent.policy import PrivateNetwork
from x402_agent.reasons import Reason

MiB = 1024 * 1024
PATH = "/counted"
EURC_ON_USDC = "0.001 EURC"  # a ceiling in an asset the local world's routes are not sold in


@dataclass(frozen=True)
class Case:
    """One bad request: what it sends (``url`` from the counting server's URL) and the reason
    it must be refused with."""

    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    idempotency_key: str | None = None
    url: Callable[[str], str] = lambda target: target

    def tool_args(self, target: str) -> dict[str, Any]:
        args: dict[str, Any] = {"url": self.url(target)}
        if self.headers:
            args["headers"] = self.headers
        if self.body is not None:
            args["body"] = self.body
        if self.idempotency_key is not None:
            args["idempotency_key"] = self.idempotency_key
        return args

    def argv(self, target: str) -> list[str]:
        argv = ["fetch", self.url(target)]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if self.body is not None:
            argv += ["-d", self.body]
        if self.idempotency_key is not None:
            argv.append(f"--idempotency-key={self.idempotency_key}")
        return argv


CASES = {
    "header_1mb": Case("header_too_large", headers={"X-Big": "a" * MiB}),
    "headers_5000": Case("too_many_headers", headers={f"X-H{i}": "v" for i in range(5000)}),
    "body_10mb": Case("body_too_large", body="a" * 10 * MiB),
    "idempotency_key_1mb": Case("invalid_idempotency_key", idempotency_key="k" * MiB),
    "empty_idempotency_key": Case("invalid_idempotency_key", idempotency_key=""),
    "host_override": Case("reserved_header", headers={"Host": "evil.example"}),
    "content_length": Case("reserved_header", headers={"Content-Length": "5"}),
    "transfer_encoding": Case("reserved_header", headers={"transfer-encoding": "chunked"}),
    "connection": Case("reserved_header", headers={"CONNECTION": "close"}),
    "unclosed_ipv6": Case("invalid_url", url=lambda target: "http://[::1"),
    "query_100kb": Case("url_too_long", url=lambda target: target + "?q=" + "a" * 100 * 1024),
}


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counting() -> Iterator[HostileServer]:
    """A server that records every request it gets; none may arrive."""
    with HostileServer("counting") as server:
        yield server


@pytest.fixture(scope="module")
def home(world: WorldInfo, counting: HostileServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A devnet home whose policy opts the counting server in to the private-network guard, so
    that only the limits can keep a request from it."""
    policy = devnet_policy(world)
    allow = (*policy.private_allow, counting.origin.removeprefix("http://"))
    policy = policy.model_copy(update={"private_network": PrivateNetwork(allow=allow)})
    return provision_devnet_home(world, tmp_path_factory.mktemp("limits") / "home", policy=policy).root


def ledger_rows(home: Path) -> list[Any]:
    with Agent.open(home) as agent:
        return agent.receipts(1000)


def assert_nothing_sent(counting: HostileServer, home: Path) -> None:
    assert counting.received == [], counting.describe()
    assert ledger_rows(home) == []


def run_main(*argv: str) -> tuple[int, str, str]:
    """The CLI's main() in this process: exit code, stdout, stderr."""
    raw = io.BytesIO()
    out, err = io.TextIOWrapper(raw, encoding="utf-8"), io.StringIO()  # stdout has a buffer
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    out.flush()
    return code, raw.getvalue().decode(), err.getvalue()


def assert_refused(code: int, stderr: str, reason: str, exit_code: int = 2) -> None:
    assert code == exit_code and f"[{reason}]" in stderr, (code, stderr[:500])
    # One line for the refusal, one for its next step (from the Reason).
    assert "Traceback" not in stderr, stderr[:500]
    assert stderr.splitlines()[1:] == [f"next step: {Reason[reason.upper()].next_step}"], stderr[:500]


# ---- the limits themselves -------------------------------------------------------------------
def test_every_reason_has_a_next_step() -> None:
    reasons = {case.reason for case in CASES.values()} | {
        "body_file_unreadable",
        "invalid_session",
        "invalid_limit",
        "max_price_asset_mismatch",
        "invalid_arguments",
        "invalid_body",
        "invalid_method",
        "invalid_header",
        "header_injection",
        "unsupported_url",
        "invalid_max_price",
    }
    assert all(Reason[reason.upper()].next_step for reason in reasons)


def test_limits_hold_exactly_at_the_boundary() -> None:
    """At each limit the request passes; one past it is refused with the limit's reason."""
    target = "http://example.test/"
    at_limit = {
        "url": (target + "a" * (limits.MAX_URL_CHARS - len(target)), "url_too_long"),
        "headers": ({f"X-{i}": "v" for i in range(limits.MAX_HEADERS)}, "too_many_headers"),
        "body": (b"b" * limits.MAX_BODY_BYTES, "body_too_large"),
        "idempotency_key": ("k" * limits.MAX_KEY_CHARS, "invalid_idempotency_key"),
        "session": ("s" * limits.MAX_KEY_CHARS, "invalid_session"),
    }
    past = {
        "url": at_limit["url"][0] + "a",
        "headers": {**at_limit["headers"][0], "X-one-more": "v"},
        "body": at_limit["body"][0] + b"b",
        "idempotency_key": at_limit["idempotency_key"][0] + "k",
        "session": at_limit["session"][0] + "s",
    }
    for name, (value, reason) in at_limit.items():
        request = {"url": target, name: value}
        limits.check_request(**request)
        with pytest.raises(InvalidRequest) as refused:
            limits.check_request(**{**request, name: past[name]})
        assert refused.value.reason == reason, name
    limits.check_request(target, headers={"X-V": "v" * limits.MAX_HEADER_VALUE_CHARS})
    two_big = {"X-A": "v" * limits.MAX_HEADER_VALUE_CHARS, "X-B": "v" * limits.MAX_HEADER_VALUE_CHARS}
    with pytest.raises(InvalidRequest, match="together"):
        limits.check_request(target, headers=two_big)  # each fits, together they do not
    # A UTF-8 body counts in bytes: half the limit in two-byte characters plus one is too much.
    with pytest.raises(InvalidRequest) as refused:
        limits.check_request(target, body="é" * (limits.MAX_BODY_BYTES // 2 + 1))
    assert refused.value.reason == "body_too_large"


@pytest.mark.parametrize(
    "name",
    [
        "Proxy-Authorization",
        "proxy-connection",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Expect",
        "payment-signature",
        "X-PAYMENT",
    ],
)
def test_other_reserved_headers(name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        limits.check_request("http://example.test/", headers={name: "x"})
    assert refused.value.reason == "reserved_header"


def test_reserved_payment_headers_are_the_sdks() -> None:
    from x402.http import PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER

    assert {PAYMENT_SIGNATURE_HEADER.lower(), X_PAYMENT_HEADER.lower()} <= limits.RESERVED_HEADERS


# ---- controls: what is valid does reach the counting server -------------------------------
def test_control_valid_requests_reach_the_counting_server(counting: HostileServer, home: Path) -> None:
    """So that "nothing arrived" below means the limits stopped the request, not the guard."""
    fine = Canned.make(200, {"content-type": "text/plain"}, b"fine")
    counting.program("/ok", fine, fine)
    try:
        with Agent.open(home) as agent:
            assert agent.fetch(counting.url("/ok"), headers={"X-Ok": "1"}).content == b"fine"
        code, out, err = run_main("--home", str(home), "fetch", counting.url("/ok"), "-H", "X-Ok: 1")
        assert (code, out) == (0, "fine"), err
        assert [r.path for r in counting.received] == ["/ok", "/ok"]
    finally:
        counting.reset()


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/", "//[x"])
def test_an_unusable_redirect_location_is_not_followed(
    location: str, counting: HostileServer, home: Path
) -> None:
    """A server's Location that cannot be a request is an answer, not a traceback."""
    counting.program("/moved", Canned.make(302, {"location": location}))
    try:
        with Agent.open(home) as agent:
            assert agent.fetch(counting.url("/moved")).status == 302
    finally:
        counting.reset()


# ---- the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_cli_refuses(name: str, counting: HostileServer, home: Path) -> None:
    case = CASES[name]
    code, out, err = run_main("--home", str(home), *case.argv(counting.url(PATH)))
    assert_refused(code, err, case.reason)
    assert out == ""
    assert_nothing_sent(counting, home)


def test_cli_refuses_unreadable_or_oversized_body_files_and_empty_sessions(
    counting: HostileServer, home: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (10 * MiB))
    target = counting.url(PATH)
    for argv, reason in (
        (["fetch", target, "-d", "@/nonexistent"], "body_file_unreadable"),
        (["fetch", target, "-d", f"@{tmp_path}"], "body_file_unreadable"),
        (["fetch", target, "-X", "POST", "-d", f"@{big}"], "body_too_large"),
        (["fetch", target, "--session="], "invalid_session"),
        (["quote", target, "--session", ""], "invalid_session"),
        (["budget", "--session="], "invalid_session"),
        (["budget", "--session-profile="], "invalid_session"),
        (["fetch", target, "-H", "X-A: 1", "-H", "x-a: 2"], "invalid_header"),
        (["receipts", "--limit", str(10**30)], "invalid_limit"),
        (["receipts", "--limit", "-5"], "invalid_limit"),
        (["receipts", "--limit", "0"], "invalid_limit"),
        (["receipts", "--limit", "many"], "invalid_arguments"),
        (["fetch"], "invalid_arguments"),
    ):
        code, _, err = run_main("--home", str(home), *argv)
        assert_refused(code, err, reason)
    assert_nothing_sent(counting, home)
    code, out, _ = run_main("--home", str(home), "receipts", "--limit", "5", "--format", "json")
    assert code == 0 and json.loads(out) == []


def test_cli_max_price_in_another_asset_blames_the_asset(world: WorldInfo, home: Path) -> None:
    route = world.route("GET", "/v2/report")  # sold in USDC
    code, out, err = run_main("--home", str(home), "fetch", route.url, "--max-price", EURC_ON_USDC)
    assert_refused(code, err, "max_price_asset_mismatch", exit_code=1)
    assert "EURC" in err and "USDC" in err and out == ""
    code, out, _ = run_main("--home", str(home), "quote", route.url, "--max-price", EURC_ON_USDC)
    assert code == 1 and "max_price_asset_mismatch" in out
    assert ledger_rows(home) == []


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["fetch", "http://[::1"], "invalid_url"),
        (["fetch", "http://127.0.0.1:9/", "-d", "@/nonexistent"], "body_file_unreadable"),
        (["receipts", "--limit", str(10**30)], "invalid_limit"),
        (["fetch", "http://127.0.0.1:9/?q=" + "a" * 100 * 1024], "url_too_long"),
        (["fetch", "http://127.0.0.1:9/", "--idempotency-key", ""], "invalid_idempotency_key"),
    ],
)
def test_cli_process_prints_one_line_not_a_traceback(argv: list[str], reason: str, home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "x402_agent.cli", "--home", str(home), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_refused(done.returncode, done.stderr, reason)


# ---- the Python API (both drivers) -----------------------------------------------------------
PYTHON_CASES: dict[str, tuple[Case, dict[str, Any]]] = {
    **{name: (case, {}) for name, case in CASES.items()},
    "empty_session": (Case("invalid_session"), {"session": ""}),
}


@pytest.mark.parametrize("name", list(PYTHON_CASES))
def test_python_api_refuses(name: str, counting: HostileServer, home: Path) -> None:
    case, extra = PYTHON_CASES[name]
    target = counting.url(PATH)
    options: dict[str, Any] = {
        "headers": case.headers,
        "body": case.body,
        "idempotency_key": case.idempotency_key,
        **extra,
    }
    with Agent.open(home) as agent:
        for run in (
            lambda: agent.fetch(case.url(target), **options),
            lambda: asyncio.run(agent.afetch(case.url(target), **options)),
            lambda: agent.quote(case.url(target), **options),
        ):
            with pytest.raises(X402AgentError) as refused:
                run()
            assert type(refused.value) is InvalidRequest
            assert refused.value.reason == case.reason, refused.value.to_dict()
    assert_nothing_sent(counting, home)


def test_python_api_max_price_in_another_asset(world: WorldInfo, home: Path) -> None:
    with Agent.open(home) as agent, pytest.raises(PolicyDenied) as refused:
        agent.fetch(world.route("GET", "/v2/report").url, max_price=EURC_ON_USDC)
    assert refused.value.reason == "max_price_asset_mismatch"
    assert ledger_rows(home) == []


# ---- MCP ----------------------------------------------------------------------------------
def test_mcp_refuses_each_case(world: WorldInfo, counting: HostileServer, home: Path, tmp_path: Path) -> None:
    target = counting.url(PATH)

    async def run() -> None:
        async with stdio_session(home, tmp_path / "err.log") as session:
            for name, case in CASES.items():
                result = await session.call_tool("fetch", case.tool_args(target))
                assert result.is_error, name
                error = structured(result)
                assert error["reason"] == case.reason, (name, error)
                assert error["next_step"] == Reason[case.reason.upper()].next_step
                if case.idempotency_key is None and case.body is None:  # quote sends no body
                    quoted = await session.call_tool("quote", case.tool_args(target))
                    assert quoted.is_error and structured(quoted)["reason"] == case.reason, name
            for limit in (10**30, -5, 0):
                result = await session.call_tool("receipts", {"limit": limit})
                assert result.is_error and structured(result)["reason"] == "invalid_limit", limit
            result = await session.call_tool(
                "fetch", {"url": world.route("GET", "/v2/report").url, "max_price": EURC_ON_USDC}
            )
            assert result.is_error
            assert structured(result)["reason"] == "max_price_asset_mismatch", result
            tools = {t.name: t for t in (await session.list_tools()).tools}
            properties = tools["x402_fetch"].input_schema["properties"]
            assert properties["url"]["maxLength"] == limits.MAX_URL_CHARS
            assert properties["idempotency_key"]["maxLength"] == limits.MAX_KEY_CHARS
            assert properties["headers"]["maxProperties"] == limits.MAX_HEADERS
            receipts = (await session.call_tool("receipts", {"limit": 10})).structured_content
            assert receipts == {"receipts": [], "sign_ins": []}

    asyncio.run(run())
    assert "Traceback" not in (tmp_path / "err.log").read_text()
    assert_nothing_sent(counting, home)


# ---- LangChain --------------------------------------------------------------------------------
def test_langchain_refuses_each_case(world: WorldInfo, counting: HostileServer, home: Path) -> None:
    target = counting.url(PATH)
    toolkit = X402Toolkit.open(home)
    try:
        tools = {t.name: t for t in toolkit.get_tools()}

        def refusal(tool: str, args: dict[str, Any]) -> dict[str, Any]:
            message = tools[tool].invoke({"name": tool, "args": args, "id": "c1", "type": "tool_call"})
            assert message.status == "error", (tool, str(message.content)[:300])
            data: dict[str, Any] = json.loads(message.content)
            return data

        for name, case in CASES.items():
            assert refusal("x402_fetch", case.tool_args(target))["reason"] == case.reason, name
            if case.idempotency_key is None:
                assert refusal("x402_quote", case.tool_args(target))["reason"] == case.reason
        for limit in (10**30, -5):
            assert refusal("x402_receipts", {"limit": limit})["reason"] == "invalid_limit"
        mismatch = refusal(
            "x402_fetch", {"url": world.route("GET", "/v2/report").url, "max_price": EURC_ON_USDC}
        )
        assert mismatch["reason"] == "max_price_asset_mismatch"
        assert refusal("x402_fetch", {"url": 5})["reason"] == "invalid_arguments"
        assert refusal("x402_fetch", {})["reason"] == "invalid_arguments"
    finally:
        toolkit.close()
    assert_nothing_sent(counting, home)


# ---- garbage in, typed errors out --------------------------------------------------------------
OPTION_NAMES = [
    "--method",
    "--data",
    "--header",
    "--max-price",
    "--session",
    "--session-profile",
    "--idempotency-key",
    "--limit",
    "--format",
    "--json",
]
garbage_text = st.text(max_size=40) | st.sampled_from(
    [
        "",
        "@",
        "@/",
        "@/nonexistent",
        "http://[::1",
        "http://a:99999/",
        "Host: x",
        "Content-Length: 1",
        "0.001 EURC",
        "-5",
        str(10**30),
        "1e30",
        "GET",
        "CONNECT",
        "a:b\r\nc: d",
        "\x00",
        "http://",
        "https://ex ample/",
        "http://\u00e9.test/",
    ]
)


@given(
    command=st.sampled_from(["fetch", "quote", "receipts", "budget"]),
    options=st.lists(st.tuples(st.sampled_from(OPTION_NAMES), garbage_text), max_size=5),
    url=garbage_text,
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cli_main_turns_garbage_into_typed_errors(
    command: str, options: list[tuple[str, str]], url: str
) -> None:
    """Any arguments: main() returns an exit code with a one-line reason, never raises. The home
    does not exist, so whatever passes validation stops at opening it (no network)."""
    argv = ["--home", "/nonexistent/x402-home", command, *[f"{name}={value}" for name, value in options]]
    if command in ("fetch", "quote"):
        argv += ["--", url]
    code, _, err = run_main(*argv)
    assert code in (1, 2), (argv, err)
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def offline_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentTools]:
    """Agent tools whose policy allows one host that does not exist: whatever passes
    validation is refused by the host list before any connection."""
    from x402_agent.flow import Payer
    from x402_agent.ledger import SQLiteLedger
    from x402_agent.policy import AssetRule, HostLists, Policy
    from x402_agent.signer import LocalKeySigner
    from x402_agent.spendgate import PolicyGate

    policy = Policy(
        version=1,
        hosts=HostLists(allow=("allowed.invalid",)),
        assets=(
            AssetRule(
                network="eip155:84532",
                address="0x" + "11" * 20,
                symbol="USDC",
                decimals=6,
                eip712_name="USD Coin",
                eip712_version="2",
                per_request_max=1000,
            ),
        ),
    )
    ledger = SQLiteLedger(tmp_path_factory.mktemp("garbage") / "ledger.sqlite3")
    agent = Agent(Payer(gate=PolicyGate(policy, ledger), signer=LocalKeySigner(Account.create())))
    tools = AgentTools(agent)
    yield tools
    agent.close()


anything = (
    st.none()
    | st.integers()
    | st.booleans()
    | garbage_text
    | st.lists(garbage_text, max_size=3)
    | st.dictionaries(garbage_text, garbage_text | st.integers(), max_size=3)
)


@given(
    url=anything,
    method=anything,
    headers=anything,
    body=anything,
    max_price=anything,
    key=anything,
    limit=anything,
    state=anything,
)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_agent_tools_turn_garbage_into_refusals(
    offline_tools: AgentTools,
    url: Any,
    method: Any,
    headers: Any,
    body: Any,
    max_price: Any,
    key: Any,
    limit: Any,
    state: Any,
) -> None:
    for call in (
        lambda: offline_tools.fetch(url, method, headers, body, max_price, key),
        lambda: asyncio.run(offline_tools.afetch(url, method, headers, body, max_price, key)),
        lambda: offline_tools.quote(url, method, headers, body, max_price),
    ):
        with pytest.raises(ToolRefusal) as refused:
            call()
        assert refused.value.reason != "internal_error", refused.value.to_dict()
    try:
        offline_tools.receipts(limit, state)
    except ToolRefusal as refused:
        assert refused.reason in ("invalid_limit", "invalid_state"), refused.to_dict()
    assert offline_tools.agent.receipts(10) == []
