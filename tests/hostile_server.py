"""A real, programmable, hostile HTTP server for tests.

A small raw-ASGI app served by uvicorn on a free loopback port in a background thread. Tests
program it per path with a queue of canned answers (status, headers, body, or a misbehaviour
such as dropping the connection mid-body) and read back every request it received, so they can
prove that no payment header ever left the client.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from x402_agent.devnet.served import ServedApp

PAYMENT_HEADER_NAMES = frozenset({"payment-signature", "x-payment"})

HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Canned:
    """One programmed answer.

    ``headers`` may repeat a name (a list of pairs). ``stream_bytes`` streams that many filler
    bytes after ``body`` in 1 MiB chunks; ``abort_after_first_chunk`` sends the status line and
    one chunk, then drops the connection.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    stream_bytes: int = 0
    abort_after_first_chunk: bool = False

    @classmethod
    def make(
        cls, status: int = 200, headers: HeaderItems | None = None, body: bytes | str = b"", **kwargs: Any
    ) -> Canned:
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        raw = body.encode() if isinstance(body, str) else body
        return cls(status, tuple((str(k), str(v)) for k, v in items), raw, **kwargs)


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def payment_headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if k in PAYMENT_HEADER_NAMES]


@dataclass
class _Route:
    queue: deque[Canned] = field(default_factory=deque)
    fallback: Canned | None = None


class HostileServer:
    """Programmable HTTP server on 127.0.0.1:<free port>; one instance is one origin."""

    def __init__(self, name: str = "hostile") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._received: list[Received] = []
        self._served = ServedApp(self._app, name)
        self.port: int = self._served.port

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> HostileServer:
        self._served.start()
        return self

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- programming -----------------------------------------------------------------------
    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.origin + path

    def program(self, path: str, *answers: Canned) -> None:
        """Queue answers for ``path``; each request consumes one."""
        with self._lock:
            self._routes.setdefault(path, _Route()).queue.extend(answers)

    def always(self, path: str, answer: Canned) -> None:
        """Answer ``path`` with ``answer`` whenever its queue is empty."""
        with self._lock:
            self._routes.setdefault(path, _Route()).fallback = answer

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._received.clear()

    # ---- inspection ------------------------------------------------------------------------
    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def payment_headers(self) -> list[tuple[str, str, str]]:
        """(path, header name, value) of every payment header that reached this server."""
        return [(r.path, k, v) for r in self.received for k, v in r.payment_headers()]

    def unconsumed(self) -> dict[str, int]:
        with self._lock:
            return {p: len(r.queue) for p, r in self._routes.items() if r.queue}

    def describe(self) -> str:
        """A readable log of what arrived, for assertion messages."""
        lines = [f"{self.name} ({self.origin}) received {len(self.received)} request(s):"]
        for r in self.received:
            pay = [k for k, _ in r.payment_headers()]
            lines.append(
                f"  {r.method} {r.path}{'?' + r.query if r.query else ''}"
                f"{'  payment headers: ' + ','.join(pay) if pay else ''}"
            )
        return "\n".join(lines)

    # ---- the ASGI app ----------------------------------------------------------------------
    def _next_answer(self, path: str) -> Canned:
        with self._lock:
            route = self._routes.get(path)
            if route is not None and route.queue:
                return route.queue.popleft()
            if route is not None and route.fallback is not None:
                return route.fallback
        return Canned.make(599, {"content-type": "text/plain"}, f"{self.name}: nothing programmed for {path}")

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"])
        with self._lock:
            self._received.append(
                Received(
                    scope["method"],
                    scope["path"],
                    scope["query_string"].decode("latin-1"),
                    headers,
                    b"".join(chunks),
                )
            )
        answer = self._next_answer(scope["path"])
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        if answer.abort_after_first_chunk:
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": [*out_headers, (b"content-length", b"1000000")],
                }
            )
            await send({"type": "http.response.body", "body": answer.body or b"partial", "more_body": True})
            raise ConnectionAbortedError("hostile server drops the connection mid-body")
        if not answer.stream_bytes and not any(k == "content-length" for k, _ in answer.headers):
            out_headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": out_headers})
        if not answer.stream_bytes:
            await send({"type": "http.response.body", "body": answer.body})
            return
        await send({"type": "http.response.body", "body": answer.body, "more_body": True})
        left, chunk = answer.stream_bytes, b"x" * (1 << 20)
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
