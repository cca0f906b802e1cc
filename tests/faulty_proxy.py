"""A proxy in front of the local world's paid API that misbehaves once a payment arrives.

Modes: ``forward`` (honest), ``fail_after_settle`` (lets the payment settle, then answers 500),
``swallow`` (keeps the payment, forwards without it: the server answers 402 again),
``hold_after_settle`` (lets it settle, signals ``held``, never answers).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

PAYMENT_HEADERS = ("payment-signature", "x-payment")


class FaultyProxy:
    """Forwards to ``upstream``; ``mode`` says how it misbehaves once a payment arrives."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "forward"
        self.captured: list[tuple[str, str]] = []  # payment headers it kept
        self.held = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() != "host"}
        payment = [(k, v) for k, v in headers.items() if k in PAYMENT_HEADERS]
        if payment and self.mode == "swallow":
            self.captured += payment
            headers = {k: v for k, v in headers.items() if k not in PAYMENT_HEADERS}
        status, out_headers, content = await self.forward(scope["method"], scope["path"],
                                                          headers, body)
        if payment and self.mode == "hold_after_settle":
            assert "payment-response" in out_headers, "upstream did not settle"
            self.held.set()
            while (await receive())["type"] != "http.disconnect":
                pass  # answer nothing; the client is killed meanwhile
            return
        if payment and self.mode == "fail_after_settle":
            assert "payment-response" in out_headers, "upstream did not settle"
            status, out_headers, content = 500, {}, b"internal error after settlement"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in out_headers.items()]})
        await send({"type": "http.response.body", "body": content})

    async def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                      ) -> tuple[int, dict[str, str], bytes]:
        async with httpx.AsyncClient() as client:
            answer = await client.request(method, self.upstream + path, headers=headers,
                                          content=body)
        kept = {k: v for k, v in answer.headers.items()
                if k not in ("content-length", "content-encoding", "transfer-encoding")}
        return answer.status_code, kept, answer.content
