"""Drive the pay-and-fetch flow over httpx, synchronously or with asyncio.

Drivers execute the flow's steps and hand back answers; failures of a step are thrown into the
flow as typed errors so that it can record what it must (a paid request lost in transit stays
counted) before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import httpx

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

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Drop idle connections before common servers do (uvicorn: 5 s), so a request is rarely sent
# on a connection the server is closing.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20,
                              keepalive_expiry=2.0)
T = TypeVar("T")
Approver = Callable[[ApprovalRequest], bool | None]
AsyncApprover = Callable[[ApprovalRequest], Awaitable[bool | None] | bool | None]
_rpc_ids = itertools.count(1)


def _rpc_body(step: RpcCall) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": next(_rpc_ids), "method": step.method,
            "params": list(step.params)}


def _rpc_result(response: httpx.Response, step: RpcCall) -> Any:
    try:
        data = response.json()
    except ValueError as exc:
        raise ChainError(f"RPC {step.method} answered non-JSON") from exc
    if response.status_code != 200 or not isinstance(data, dict) or "error" in data:
        error = data.get("error") if isinstance(data, dict) else None
        raise ChainError(f"RPC {step.method} failed", status=response.status_code,
                         rpc_error=str(error)[:200])
    return data.get("result")


def run_wallet_call(step: WalletCall) -> Any:
    """Run a blocking wallet call; anything untyped it raises is a chain failure."""
    try:
        return step.run()
    except X402AgentError:
        raise
    except Exception as exc:
        raise ChainError(f"the wallet's {step.name} failed: {type(exc).__name__}",
                         cause=type(exc).__name__) from exc


def _too_large(size: int) -> UpstreamError:
    return UpstreamError("response body is larger than the limit", reason="response_too_large",
                         limit=MAX_RESPONSE_BYTES, size=size)


class X402Client:
    """Synchronous pay-and-fetch over one pooled httpx.Client."""

    def __init__(self, payer: Payer, http: httpx.Client | None = None,
                 approver: Approver | None = None) -> None:
        self.payer = payer
        self.approver = approver
        self._http = http or httpx.Client(timeout=DEFAULT_TIMEOUT, limits=DEFAULT_LIMITS,
                                          follow_redirects=False)

    def __enter__(self) -> X402Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def fetch(self, request: FetchRequest) -> FetchOutcome:
        return self.run(fetch_flow(self.payer, request))

    def run(self, flow: Generator[Step, Any, T]) -> T:
        try:
            step = next(flow)
            while True:
                try:
                    answer = self._execute(step)
                except X402AgentError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(answer)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _execute(self, step: Step) -> Any:
        if isinstance(step, ApprovalCall):
            return None if self.approver is None else self.approver(step.request)
        if isinstance(step, WalletCall):
            return run_wallet_call(step)
        if isinstance(step, RpcCall):
            try:
                response = self._http.post(step.url, json=_rpc_body(step))
            except httpx.HTTPError as exc:
                raise ChainError(f"RPC {step.method} unreachable", cause=type(exc).__name__) from exc
            return _rpc_result(response, step)
        return self._send(step)

    def _send(self, step: HttpCall) -> HttpAnswer:
        try:
            response = self._http.send(step.request, stream=True, follow_redirects=False)
            try:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise _too_large(size)
                    chunks.append(chunk)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"request to {step.request.url.host} failed: {type(exc).__name__}",
                                cause=type(exc).__name__) from exc
        return HttpAnswer(response.status_code, response.headers, b"".join(chunks))


class AsyncX402Client:
    """Asynchronous pay-and-fetch over one pooled httpx.AsyncClient."""

    def __init__(self, payer: Payer, http: httpx.AsyncClient | None = None,
                 approver: AsyncApprover | None = None) -> None:
        self.payer = payer
        self.approver = approver
        self._http = http or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=DEFAULT_LIMITS,
                                               follow_redirects=False)

    async def __aenter__(self) -> AsyncX402Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, request: FetchRequest) -> FetchOutcome:
        return await self.run(fetch_flow(self.payer, request))

    async def run(self, flow: Generator[Step, Any, T]) -> T:
        try:
            step = next(flow)
            while True:
                try:
                    answer = await self._execute(step)
                except X402AgentError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(answer)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _execute(self, step: Step) -> Any:
        if isinstance(step, ApprovalCall):
            if self.approver is None:
                return None
            answer = self.approver(step.request)
            return await answer if inspect.isawaitable(answer) else answer
        if isinstance(step, WalletCall):
            return await asyncio.to_thread(run_wallet_call, step)
        if isinstance(step, RpcCall):
            try:
                response = await self._http.post(step.url, json=_rpc_body(step))
            except httpx.HTTPError as exc:
                raise ChainError(f"RPC {step.method} unreachable", cause=type(exc).__name__) from exc
            return _rpc_result(response, step)
        return await self._send(step)

    async def _send(self, step: HttpCall) -> HttpAnswer:
        try:
            response = await self._http.send(step.request, stream=True, follow_redirects=False)
            try:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise _too_large(size)
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"request to {step.request.url.host} failed: {type(exc).__name__}",
                                cause=type(exc).__name__) from exc
        return HttpAnswer(response.status_code, response.headers, b"".join(chunks))
