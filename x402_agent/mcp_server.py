"""`x402-agent mcp`: the agent tools over the Model Context Protocol (stdio or streamable HTTP).

Tools: ``fetch``, ``quote``, ``budget``, ``receipts``; read-only resources: the policy in force
and the recent receipts. One MCP connection is one agent session (its own session allowance).
Refusals are tool errors (``isError``) whose structured content carries the reason code, a next
step and, for spending refusals, what remains of the budget. Payments above the policy's
approval threshold are put to the user through MCP elicitation when the client supports it;
otherwise they are refused (``approval_required``).

Start-up stays light: the payment machinery (web3, the x402 SDK, the ledger) is imported and
the agent opened at the first tool call, so ``tools/list`` answers as soon as ``mcp`` is loaded.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import inspect
import json
import os
import secrets
import sys
import weakref
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from .agent_tools import (
    RECEIPTS_LIMIT_HINT,
    AgentTools,
    BudgetResult,
    FetchResult,
    QuoteResult,
    ReceiptsResult,
    ReceiptState,
    ToolRefusal,
    refusal,
)
from .deadline import TIMEOUT_DOC, TIMEOUT_HINT
from .request_limits import SCHEMA_HINTS

if TYPE_CHECKING:
    from .flow import ApprovalRequest
    from .operations import Agent

TOKEN_ENV = "X402_AGENT_MCP_TOKEN"
INSTRUCTIONS = (
    "x402-agent pays for HTTP resources that answer 402 Payment Required, within a spending "
    "policy approved on the user's hardware wallet. Use `fetch` to get a URL (it pays when "
    "asked and allowed), `quote` to learn a price without paying, `budget` to see what remains, "
    "`receipts` to list payments. A refused call is an error whose `reason` says why; do not "
    "retry a refusal unchanged.")
REASONS_DOC = """
Error reasons (the tool error's JSON has `reason`, `message`, `next_step`, and `budget` for
spending refusals):
- per_request_cap_exceeded: price above the policy's per-request cap. Do not retry.
- price_above_max: price above your max_price. Skip it or ask the user.
- session_allowance_exceeded / daily_limit_exceeded: budget spent. Stop paying, tell the user.
- approval_required / approval_denied: a human must approve / said no. Do not retry.
- circuit_open: payments stopped after failures; a human must reset it.
- rate_limited: wait, then retry.
- unsupported_url, invalid_url, url_too_long, invalid_header, header_injection,
  reserved_header, too_many_headers, header_too_large, body_too_large, invalid_max_price,
  max_price_asset_mismatch, invalid_idempotency_key, invalid_method, invalid_limit: fix the
  arguments (the limits are in the argument schema).
- paid_not_delivered: paid but the resource did not arrive; report the receipt, do not repay.
- payment_rejected / payment_not_settled: the server refused (`server_reason`) or failed
  without taking the payment; nothing settled; counted until `expires_at_iso`.
- upstream_unreachable: the server could not be reached; nothing was paid.
- deadline_exceeded: no answer within timeout_seconds; nothing was paid. Retry later.
- paid_deadline_exceeded: paid, but the answer did not arrive in time; it stays counted. Retry
  with the same idempotency_key (the same payment is resent, never a second one).
"""

FETCH_DOC = """Fetch an HTTP(S) URL, paying for it if the server asks for payment (HTTP 402 /
x402) and the spending policy allows it. Use it to get paid APIs and content; use `quote` first
if you only want the price. Returns the status, the body (text, or base64 when binary; cut at
64 KiB, see `truncated`; a paid body is kept whole: read the rest from the resource
`content_uri`), and what was paid (`amount` in atomic units, `price` for humans) with its
`receipt_id`. An HTTP error status from the server is a normal result, not a refusal.
Give every call that may pay an `idempotency_key` (a UUID) and reuse it to retry: a retry then
never pays twice."""

_current_ctx: contextvars.ContextVar[Context[Any, Any] | None] = contextvars.ContextVar(
    "x402_mcp_ctx", default=None)


class PaymentApproval(BaseModel):
    approve: bool = Field(description="Pay this amount for this request?")


async def _elicit_approval(request: ApprovalRequest) -> bool | None:
    """The agent's approver inside an MCP tool call: ask the user through elicitation."""
    ctx = _current_ctx.get()
    if ctx is None:
        return None
    caps = ctx.client_capabilities
    if caps is None or caps.elicitation is None:
        return None  # nobody can be asked: the payment is refused (approval_required)
    answer = await ctx.elicit(request.prompt(), PaymentApproval)
    if answer.action == "accept":
        return bool(answer.data.approve)
    return False


class _Sessions:
    """One ``Agent`` for the server; one ``AgentTools`` (agent session) per MCP connection."""

    def __init__(self, home: Path | None, session_profile: str | None) -> None:
        self.home = home
        self.session_profile = session_profile
        self._agent: Agent | None = None
        self._lock = asyncio.Lock()
        self._by_session: weakref.WeakKeyDictionary[Any, asyncio.Future[AgentTools]] = (
            weakref.WeakKeyDictionary())
        self._by_id: dict[str, asyncio.Future[AgentTools]] = {}

    async def agent(self) -> Agent:
        async with self._lock:
            if self._agent is None:
                from .operations import Agent

                self._agent = await asyncio.to_thread(Agent.open, self.home,
                                                      approver=_elicit_approval)
            return self._agent

    async def tools(self, ctx: Context[Any, Any]) -> AgentTools:
        agent = await self.agent()
        # The SDK builds a ServerSession per request around the connection's state: the
        # connection is what one agent session maps to (the HTTP session id as a fallback).
        connection = getattr(ctx.session, "_connection", None)
        if connection is None:
            key = (ctx.headers or {}).get("mcp-session-id") or "default"
            return await self._opened(self._by_id, key, agent)
        return await self._opened(self._by_session, connection, agent)

    async def _opened(self, table: MutableMapping[Any, asyncio.Future[AgentTools]], key: Any,
                      agent: Agent) -> AgentTools:
        """The agent session of ``key``, opened once for the calls that arrive meanwhile.
        Opening writes to the ledger: in a worker thread, so that a ledger waiting on a lock
        holds up this connection only."""
        opening = table.get(key)
        if opening is None:
            opening = table[key] = asyncio.ensure_future(asyncio.to_thread(
                AgentTools, agent, session_profile=self.session_profile))
        try:
            return await asyncio.shield(opening)  # one caller cancelled: the others still wait
        except Exception:
            if table.get(key) is opening:
                del table[key]  # the next call tries again
            raise

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()


def _error(exc: BaseException, tools: AgentTools | None = None) -> CallToolResult:
    refused = exc if isinstance(exc, ToolRefusal) else refusal(exc)
    data = refused.to_dict()
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, sort_keys=True))],
                          structured_content=data, is_error=True)


def build_server(home: Path | None = None, session_profile: str | None = None
                 ) -> tuple[MCPServer[Any], _Sessions]:
    sessions = _Sessions(home, session_profile)
    server: MCPServer[Any] = MCPServer("x402-agent", instructions=INSTRUCTIONS,
                                       log_level="WARNING")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=True)

    async def run(ctx: Context[Any, Any], call: Any) -> CallToolResult:
        token = _current_ctx.set(ctx)
        try:
            tools = await sessions.tools(ctx)
            result: CallToolResult = await call(tools)  # a result model: converted by the SDK
            return result
        except Exception as exc:
            return _error(exc)
        finally:
            _current_ctx.reset(token)

    @server.tool(description=inspect.cleandoc(FETCH_DOC) + "\n" + REASONS_DOC,
                 annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=False, open_world_hint=True))
    async def fetch(
        url: Annotated[str, Field(description="http(s) URL to fetch",
                                  json_schema_extra=SCHEMA_HINTS["url"])],
        ctx: Context[Any, Any],
        method: Annotated[str, Field(description="HTTP method")] = "GET",
        headers: Annotated[dict[str, str] | None,
                           Field(description="extra request headers, name: value",
                                 json_schema_extra=SCHEMA_HINTS["headers"])] = None,
        body: Annotated[str | None, Field(description="request body (text)",
                                          json_schema_extra=SCHEMA_HINTS["body"])] = None,
        max_price: Annotated[str | None, Field(
            description="most you accept to pay for this request, e.g. '0.01' or '0.01 USDC'; "
                        "the policy's caps apply anyway")] = None,
        idempotency_key: Annotated[str | None, Field(
            description="repeat a call with the same key to never pay twice",
            json_schema_extra=SCHEMA_HINTS["idempotency_key"])] = None,
        timeout_seconds: Annotated[float | None, Field(
            description=TIMEOUT_DOC, json_schema_extra=TIMEOUT_HINT)] = None,
    ) -> Annotated[CallToolResult, FetchResult]:
        async def call(tools: AgentTools) -> Any:
            return await tools.afetch(url, method, headers, body, max_price, idempotency_key,
                                      timeout_seconds)
        return await run(ctx, call)

    @server.tool(annotations=read_only)
    async def quote(
        url: Annotated[str, Field(description="http(s) URL to price",
                                  json_schema_extra=SCHEMA_HINTS["url"])],
        ctx: Context[Any, Any],
        method: str = "GET",
        headers: Annotated[dict[str, str] | None,
                           Field(json_schema_extra=SCHEMA_HINTS["headers"])] = None,
        body: Annotated[str | None, Field(json_schema_extra=SCHEMA_HINTS["body"])] = None,
        max_price: str | None = None,
        timeout_seconds: Annotated[float | None, Field(
            description=TIMEOUT_DOC, json_schema_extra=TIMEOUT_HINT)] = None,
    ) -> Annotated[CallToolResult, QuoteResult]:
        """What a URL costs and whether the policy would pay it. Pays nothing. `allowed` false
        comes with the `reason` fetch would refuse with (e.g. per_request_cap_exceeded)."""
        async def call(tools: AgentTools) -> Any:
            return await tools.aquote(url, method, headers, body, max_price, timeout_seconds)
        return await run(ctx, call)

    @server.tool(annotations=read_only)
    async def budget(ctx: Context[Any, Any]) -> Annotated[CallToolResult, BudgetResult]:
        """What remains to spend: per asset the daily allowance left, the per-request cap,
        payments in flight and with unknown outcome; this connection's session allowance; and
        whether the circuit breaker stopped payments. Amounts are atomic units with
        `*_display` for humans. Check it before a series of paid calls."""
        async def call(tools: AgentTools) -> Any:
            return await tools.abudget()
        return await run(ctx, call)

    @server.tool(annotations=read_only)
    async def receipts(
        ctx: Context[Any, Any],
        limit: Annotated[int, Field(description="how many, newest first",
                                    json_schema_extra=RECEIPTS_LIMIT_HINT)] = 20,
        state: Annotated[ReceiptState | None, Field(
            description="only payments in this state")] = None,
    ) -> Annotated[CallToolResult, ReceiptsResult]:
        """Recent payment receipts, newest first: what was paid (amount, asset, payee), for
        which request, the settlement transaction and the policy version that allowed it.
        `settled` = paid and delivered; `unknown` = outcome not yet proven (still counted);
        `released` = never paid."""
        async def call(tools: AgentTools) -> Any:
            return await tools.areceipts(limit, state)
        return await run(ctx, call)

    @server.resource("x402://policy", name="policy", mime_type="application/json",
                     description="The spending policy in force (read-only; approved on the "
                                 "user's hardware wallet).")
    async def policy_resource() -> str:
        agent = await sessions.agent()
        policy = agent.payer.gate.policy
        return json.dumps({"version": policy.version, "digest": policy.digest,
                           "policy": policy.model_dump(mode="json")}, sort_keys=True)

    @server.resource("x402://receipts/recent", name="recent-receipts",
                     mime_type="application/json",
                     description="The 50 most recent payment receipts, newest first.")
    async def receipts_resource() -> str:
        from .receipts import receipt

        agent = await sessions.agent()
        records = await asyncio.to_thread(agent.receipts, 50)
        return json.dumps([receipt(r) for r in records], sort_keys=True, default=str)

    @server.resource("x402://content/{sha256}", name="paid-content",
                     description="A paid body kept in the agent home, whole (up to "
                                 f"{CONTENT_READ_BYTES >> 20} MiB; larger ones by parts). "
                                 "Text when it is UTF-8, else binary.")
    async def content_resource(sha256: str) -> str | bytes:
        return await _read_content(sessions, sha256, None)

    @server.resource("x402://content/{sha256}/{offset}", name="paid-content-part",
                     description=f"Up to {CONTENT_PART_BYTES >> 20} MiB of a kept paid body "
                                 "from byte <offset>: the next part is at offset + its size.")
    async def content_part_resource(sha256: str, offset: str) -> str | bytes:
        if not offset.isdigit():
            raise ResourceError("offset must be a byte offset (a non-negative integer)")
        return await _read_content(sessions, sha256, int(offset))

    return server, sessions


# Reading a kept body through MCP: whole up to the first bound, else in parts of the second.
CONTENT_READ_BYTES = 16 * 1024 * 1024
CONTENT_PART_BYTES = 4 * 1024 * 1024


async def _read_content(sessions: _Sessions, sha256: str, offset: int | None) -> str | bytes:
    agent = await sessions.agent()
    store = agent.payer.content_store
    stored = store.get(sha256) if store is not None else None
    if stored is None:
        raise ResourceNotFoundError(f"no paid body {sha256[:64]!r} is kept here")
    if offset is None and stored.size > CONTENT_READ_BYTES:
        raise ResourceError(f"the body has {stored.size} bytes: read it in parts, "
                         f"x402://content/{stored.sha256}/0 first")
    data = await asyncio.to_thread(stored.read, offset or 0,
                                   None if offset is None else CONTENT_PART_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


class BearerAuth:
    """ASGI middleware: every request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error":"unauthorized","reason":"bearer_token_required"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="x402-agent"'),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serve(home: Path | None = None, transport: str = "stdio", host: str = "127.0.0.1",
          port: int = 8402, token: str | None = None, session_profile: str | None = None) -> int:
    server, sessions = build_server(home, session_profile)
    try:
        if transport == "stdio":
            server.run("stdio")
            return 0
        import anyio
        import uvicorn

        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            token = secrets.token_urlsafe(32)
            print(f"x402-agent mcp: bearer token {token}", file=sys.stderr, flush=True)
        app = BearerAuth(server.streamable_http_app(host=host), token)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        http = uvicorn.Server(config)
        print(f"x402-agent mcp: listening on http://{host}:{port}/mcp", file=sys.stderr,
              flush=True)
        anyio.run(http.serve)
        return 0
    finally:
        sessions.close()
