"""A proxy in front of the local world's paid API that misbehaves once a payment arrives.

Modes: ``forward`` (honest), ``fail_after_settle`` (lets the payment settle, then answers 500),
``swallow`` (keeps the payment, forwards without it: the server answers 402 again),
``hold_after_settle`` (lets it settle, signals ``held``, never answers), ``claim_settled``
(keeps the payment, never settles it, and answers 200 with a settlement header naming
``claimed_tx``, a transaction that did not move this payment), ``rewrite_identifier`` (forwards
the payment with its payment-identifier id replaced by ``identifier``: the extension is not
signed, so a middlebox can make two payments carry one id), ``overclaim`` (forwards, then raises
the batch-settlement channel total in the settle response by ``overclaim_by``: no SDK server
claims above the vouchers it holds, so a middlebox plays that server). ``spare``: how many
payments to forward honestly before the mode applies. ``seen`` keeps every
payment header that arrived, in every mode.
"""

from __future__ import annotations

import base64
import json
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
        self.claimed_tx = ""
        self.seen: list[str] = []
        self.identifier = ""
        self.overclaim_by = 0
        self.spare = 0

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
        self.seen += [v for _, v in payment]
        mode = self.mode
        if payment and self.spare:  # payments forwarded honestly before misbehaving
            self.spare -= 1
            mode = "forward"
        if payment and mode == "rewrite_identifier":
            name, value = payment[0]
            headers[name] = self.with_identifier(value)
        if payment and mode == "claim_settled":
            self.captured += payment
            await self.answer(
                send,
                200,
                {"content-type": "text/plain", "payment-response": self.false_claim(payment[0][1])},
                b"content that was never paid for",
            )
            return
        if payment and mode == "swallow":
            self.captured += payment
            headers = {k: v for k, v in headers.items() if k not in PAYMENT_HEADERS}
        query = scope.get("query_string", b"").decode()  # the metered route's ?used=
        target = scope["path"] + (f"?{query}" if query else "")
        status, out_headers, content = await self.forward(scope["method"], target, headers, body)
        if payment and mode == "hold_after_settle":
            assert "payment-response" in out_headers, "upstream did not settle"
            self.held.set()
            while (await receive())["type"] != "http.disconnect":
                pass  # answer nothing; the client is killed meanwhile
            return
        if payment and mode == "overclaim":
            out_headers["payment-response"] = self.raised_total(out_headers["payment-response"])
        if payment and mode == "fail_after_settle":
            assert "payment-response" in out_headers, "upstream did not settle"
            status, out_headers, content = 500, {}, b"internal error after settlement"
        await self.answer(send, status, out_headers, content)

    @staticmethod
    async def answer(send: Any, status: int, headers: dict[str, str], content: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def with_identifier(self, payment_header: str) -> str:
        paid = json.loads(base64.b64decode(payment_header))
        paid["extensions"]["payment-identifier"]["info"]["id"] = self.identifier
        return base64.b64encode(json.dumps(paid).encode()).decode()

    def raised_total(self, settle_header: str) -> str:
        settled = json.loads(base64.b64decode(settle_header))
        state = settled["extra"]["channelState"]
        state["chargedCumulativeAmount"] = str(int(state["chargedCumulativeAmount"]) + self.overclaim_by)
        return base64.b64encode(json.dumps(settled).encode()).decode()

    def false_claim(self, payment_header: str) -> str:
        """A v2 settle response that matches the signed payment in every field but names
        ``claimed_tx``: only the chain can tell it is false."""
        paid = json.loads(base64.b64decode(payment_header))
        auth = paid["payload"]["authorization"]
        claim = {
            "success": True,
            "payer": auth["from"],
            "transaction": self.claimed_tx,
            "network": paid["accepted"]["network"],
            "amount": auth["value"],
        }
        return base64.b64encode(json.dumps(claim).encode()).decode()

    async def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        async with httpx.AsyncClient() as client:
            answer = await client.request(method, self.upstream + path, headers=headers, content=body)
        kept = {
            k: v
            for k, v in answer.headers.items()
            if k not in ("content-length", "content-encoding", "transfer-encoding")
        }
        return answer.status_code, kept, answer.content
