"""Drive the pay-and-fetch flow over httpx, synchronously or with asyncio.

Drivers execute the flow's steps and hand back answers; failures of a step are thrown into the
flow as typed errors so that it can record what it must (a paid request lost in transit stays
counted) before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import inspect
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any, TypeVar

import httpx

from .content_store import INLINE_BYTES
from .deadline import Deadline
from .errors import ChainError, UpstreamError, X402AgentError
from .flow import (
    ApprovalCall,
    ApprovalRequest,
    FetchOutcome,
    FetchRequest,
    HttpAnswer,
    HttpCall,
    Payer,
    RpcCall,
    Step,
    WalletCall,
    fetch_flow,
)
from .name_pools import AsyncNamePooledTransport, NamePooledTransport
from .netguard import NetworkGuard, Resolver
from .reasons import Reason

# Told of every step the async driver is about to run (a price request, an approval, a top-up,
# the paid request, a settlement check): an adapter sets it around one call to report progress.
STEP_OBSERVER: contextvars.ContextVar[Callable[[Step], Awaitable[None]] | None] = contextvars.ContextVar(
    "x402_step_observer", default=None
)

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_DEFAULT_TIMEOUTS = DEFAULT_TIMEOUT.as_dict()
# Drop idle connections before common servers do (uvicorn: 5 s), so a request is rarely sent
# on a connection the server is closing.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)
T = TypeVar("T")
Approver = Callable[[ApprovalRequest], bool | None]
AsyncApprover = Callable[[ApprovalRequest], Awaitable[bool | None] | bool | None]
_rpc_ids = itertools.count(1)


def _rpc_body(step: RpcCall) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": next(_rpc_ids), "method": step.method, "params": list(step.params)}


def _rpc_result(response: httpx.Response, step: RpcCall) -> Any:
    try:
        data = response.json()
    except ValueError as exc:
        raise ChainError(f"RPC {step.method} answered non-JSON") from exc
    if response.status_code != 200 or not isinstance(data, dict) or "error" in data:
        error = data.get("error") if isinstance(data, dict) else None
        raise ChainError(f"RPC {step.method} failed", status=response.status_code, rpc_error=str(error)[:200])
    return data.get("result")


def run_wallet_call(step: WalletCall) -> Any:
    """Run a blocking wallet call; anything untyped it raises is a chain failure."""
    try:
        return step.run()
    except X402AgentError:
        raise
    except Exception as exc:
        raise ChainError(
            f"the wallet's {step.name} failed: {type(exc).__name__}", cause=type(exc).__name__
        ) from exc


def _too_large(size: int, limit: int) -> UpstreamError:
    return UpstreamError(
        "response body is larger than the limit",
        reason=Reason.RESPONSE_TOO_LARGE,
        limit=limit,
        size=size,
    )


def _prepare(step: HttpCall, deadline: Deadline | None) -> httpx.Request:
    """The request as the transport gets it. Requests go to the transport directly, not through
    httpx's Client.send: its cookie jar (filled from every response, never sent: Client.send
    adds no Cookie header), auth and redirect layers cost about a third of the event loop's CPU
    per paid fetch. What it would add that applies is added here: the timeouts (every operation
    gets the time left before the deadline), and credentials written in the URL as Basic auth.
    No environment proxy is used (as before: a client given its own transport mounts none)."""
    request = step.request
    request.extensions["timeout"] = deadline.timeouts() if deadline is not None else _DEFAULT_TIMEOUTS
    url = request.url
    if (url.username or url.password) and "authorization" not in request.headers:
        token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
        request.headers["authorization"] = f"Basic {token}"
    return request


def _failed(
    host: str, exc: Exception, deadline: Deadline | None, status: int | None, size: int
) -> UpstreamError:
    if deadline is not None and isinstance(exc, TimeoutError | httpx.TimeoutException):
        # Every operation was given only the time left: its timeout is the deadline.
        return deadline.exceeded(host, status, size)
    return UpstreamError(f"request to {host} failed: {type(exc).__name__}", cause=type(exc).__name__)


def _advance(resume: Callable[[], Step]) -> tuple[bool, Any]:
    """Run the flow to its next step: (False, step), or (True, result) when it is done.
    StopIteration cannot cross a future, so the result travels as a value."""
    try:
        return False, resume()
    except StopIteration as done:
        return True, done.value


class _Body:
    """A response body as it arrives: in memory up to the limit, or, for a paid 2xx answer,
    streamed to the content store (its first INLINE_BYTES also kept in memory). The async
    driver writes the file on the event loop: chunk-sized writes to a local file, like a log."""

    def __init__(self, step: HttpCall, status: int) -> None:
        paid_content = step.sink is not None and 200 <= status < 300
        self._writer = step.sink.open() if paid_content and step.sink is not None else None
        self._chunks: list[bytes] = []
        self._kept = 0
        self._limit = step.max_bytes or MAX_RESPONSE_BYTES

    def add(self, chunk: bytes) -> bool:
        """Take ``chunk``; False: stop reading (the paid body reached the policy's cap)."""
        if self._writer is None:
            self._kept += len(chunk)
            if self._kept > self._limit:
                raise _too_large(self._kept, self._limit)
            self._chunks.append(chunk)
            return True
        if self._kept < INLINE_BYTES:
            part = chunk[: INLINE_BYTES - self._kept]
            self._chunks.append(part)
            self._kept += len(part)
        return self._writer.write(chunk)

    def answer(self, response: httpx.Response) -> HttpAnswer:
        stored = self._writer.commit() if self._writer is not None else None
        self._writer = None
        return HttpAnswer(response.status_code, response.headers, b"".join(self._chunks), stored)

    def discard(self) -> None:
        """Drop a partial file (the read failed); nothing once ``answer`` kept it."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _record_interruption(flow: Generator[Step, Any, Any]) -> None:
    """Ctrl-C with the payment sent: the flow records it (unknown, counted, with evidence)
    before the interrupt goes on; the answer is lost, the chain settles the rest later."""
    try:
        flow.throw(
            UpstreamError(
                "interrupted after the payment was sent", reason=Reason.INTERRUPTED, cause="KeyboardInterrupt"
            )
        )
    except X402AgentError:
        pass  # the flow's own account of it (paid, not delivered): the interrupt wins
    finally:
        flow.close()


class X402Client:
    """Synchronous pay-and-fetch over one httpx.Client, pooled per TLS server name."""

    def __init__(
        self,
        payer: Payer,
        approver: Approver | None = None,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.payer = payer
        self.approver = approver
        # Every request goes to an address checked against the policy in force (read per
        # request); ``resolver`` replaces the system's only in tests, as ``verify`` the CAs.
        self._guard = NetworkGuard(lambda: payer.gate.policy.private_allow, resolver)
        # Pooled per TLS server name: a connection verified for one name never serves another
        # at the same address (the guard sends requests to addresses).
        self._transport = NamePooledTransport(verify, DEFAULT_LIMITS)
        self._http = httpx.Client(  # JSON-RPC reads of the flow's chain steps
            transport=self._transport,
            timeout=DEFAULT_TIMEOUT,
            follow_redirects=False,
        )

    def __enter__(self) -> X402Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def fetch(self, request: FetchRequest) -> FetchOutcome:
        return self.run(fetch_flow(self.payer, request), request.timeout_seconds)

    def run(self, flow: Generator[Step, Any, T], timeout: float | None = None) -> T:
        """Drive ``flow``; its HTTP steps together get ``timeout`` seconds (None: no deadline,
        the client's per-operation timeouts only)."""
        deadline = Deadline(timeout) if timeout is not None else None
        try:
            step = next(flow)
            while True:
                try:
                    answer = self._execute(step, deadline)
                except X402AgentError as exc:
                    step = flow.throw(exc)
                except KeyboardInterrupt:
                    if isinstance(step, HttpCall) and step.paid:
                        _record_interruption(flow)
                    raise
                else:
                    step = flow.send(answer)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _execute(self, step: Step, deadline: Deadline | None) -> Any:
        if isinstance(step, ApprovalCall):
            if self.approver is None:
                return None
            asked = time.monotonic()
            try:
                return self.approver(step.request)
            finally:
                if deadline is not None:
                    deadline.extend(time.monotonic() - asked)
        if isinstance(step, WalletCall):
            return run_wallet_call(step)
        if isinstance(step, RpcCall):
            try:
                response = self._http.post(step.url, json=_rpc_body(step))
            except httpx.HTTPError as exc:
                raise ChainError(f"RPC {step.method} unreachable", cause=type(exc).__name__) from exc
            return _rpc_result(response, step)
        return self._send(step, deadline)

    def _send(self, step: HttpCall, deadline: Deadline | None) -> HttpAnswer:
        host, status, size = step.request.url.host, None, 0
        request = self._guard.pin(_prepare(step, deadline))  # refused here, before any connection
        try:
            response = self._transport.handle_request(request)
            response.request = request
            status = response.status_code
            body = _Body(step, status)
            try:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if not body.add(chunk):
                        break
                    # A trickle never trips a per-read timeout: the deadline is checked here.
                    if deadline is not None:
                        deadline.check(host, status, size)
                answer = body.answer(response)
            finally:
                body.discard()
                response.close()
        except httpx.HTTPError as exc:
            raise _failed(host, exc, deadline, status, size) from exc
        return answer


class _Progress:
    paid = False  # a request carrying a payment was (or is being) sent


async def _outlive_cancellation(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` however often the caller is cancelled meanwhile (an anyio scope, as the
    MCP server's, would re-deliver its cancellation at every wait: the shield stops that)."""
    import anyio

    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                continue
    if not task.cancelled():
        task.exception()  # retrieved: its outcome is in the ledger, the caller was cancelled


class AsyncX402Client:
    """Asynchronous pay-and-fetch over one httpx.AsyncClient, pooled per TLS server name."""

    def __init__(
        self,
        payer: Payer,
        approver: AsyncApprover | None = None,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.payer = payer
        self.approver = approver
        self._guard = NetworkGuard(lambda: payer.gate.policy.private_allow, resolver)
        self._transport = AsyncNamePooledTransport(verify, DEFAULT_LIMITS)
        self._http = httpx.AsyncClient(  # JSON-RPC reads of the flow's chain steps
            transport=self._transport,
            timeout=DEFAULT_TIMEOUT,
            follow_redirects=False,
        )

    async def __aenter__(self) -> AsyncX402Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, request: FetchRequest) -> FetchOutcome:
        # Without an idempotency key the flow reads no ledger before its first request (it
        # validates and checks the policy): that part runs on the loop, one thread hop saved.
        return await self.run(
            fetch_flow(self.payer, request),
            request.timeout_seconds,
            start_on_loop=request.idempotency_key is None,
        )

    async def run(
        self, flow: Generator[Step, Any, T], timeout: float | None = None, *, start_on_loop: bool = False
    ) -> T:
        """Drive ``flow`` without ever blocking the event loop: the flow's own code between
        two steps (ledger reads and writes, signing) runs in a worker thread, one hop per step,
        so a ledger waiting on a lock stalls this fetch only, not the loop's other sessions.
        ``start_on_loop``: the code before the first step does no blocking I/O."""
        deadline = Deadline(timeout) if timeout is not None else None
        progress = _Progress()
        drive = asyncio.ensure_future(self._drive(flow, deadline, progress, start_on_loop))
        try:
            return await asyncio.shield(drive)
        except asyncio.CancelledError:
            if not progress.paid:
                drive.cancel()  # nothing was sent with a payment: stop at once
                raise
            # The payment left: finish the exchange (ledger record, stored body), then let the
            # caller see its cancellation.
            await _outlive_cancellation(drive)
            raise

    async def _drive(
        self,
        flow: Generator[Step, Any, T],
        deadline: Deadline | None,
        progress: _Progress,
        start_on_loop: bool,
    ) -> T:
        resume: Callable[[], Step] = partial(next, flow)
        on_loop = start_on_loop
        while True:
            done, value = _advance(resume) if on_loop else await asyncio.to_thread(_advance, resume)
            on_loop = False
            if done:
                return value  # type: ignore[no-any-return]
            if isinstance(value, HttpCall) and value.paid:
                progress.paid = True
            observer = STEP_OBSERVER.get()
            if observer is not None:
                await observer(value)
            try:
                answer = await self._execute(value, deadline)
            except X402AgentError as exc:
                resume = partial(flow.throw, exc)
            else:
                resume = partial(flow.send, answer)

    async def _execute(self, step: Step, deadline: Deadline | None) -> Any:
        if isinstance(step, ApprovalCall):
            if self.approver is None:
                return None
            asked = time.monotonic()
            try:
                answer = self.approver(step.request)
                return await answer if inspect.isawaitable(answer) else answer
            finally:
                if deadline is not None:
                    deadline.extend(time.monotonic() - asked)
        if isinstance(step, WalletCall):
            return await asyncio.to_thread(run_wallet_call, step)
        if isinstance(step, RpcCall):
            try:
                response = await self._http.post(step.url, json=_rpc_body(step))
            except httpx.HTTPError as exc:
                raise ChainError(f"RPC {step.method} unreachable", cause=type(exc).__name__) from exc
            return _rpc_result(response, step)
        return await self._send(step, deadline)

    async def _send(self, step: HttpCall, deadline: Deadline | None) -> HttpAnswer:
        host, status, size = step.request.url.host, None, 0
        try:
            # The whole exchange is cancelled at the deadline, however the server paces it.
            async with asyncio.timeout(None if deadline is None else deadline.remaining()):
                request = await self._guard.apin(_prepare(step, deadline))  # before any connection
                response = await self._transport.handle_async_request(request)
                response.request = request
                status = response.status_code
                body = _Body(step, status)
                try:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if not body.add(chunk):
                            break
                    answer = body.answer(response)
                finally:
                    body.discard()
                    await response.aclose()
        except (TimeoutError, httpx.HTTPError) as exc:
            raise _failed(host, exc, deadline, status, size) from exc
        return answer
