"""The resource server's side of the payment-identifier extension, for the local world.

The SDK declares the extension (``declare_payment_identifier_extension``) and reads the id from
a payment (``extract_payment_identifier``) but leaves the cache to the server. This is that
cache, as the extension's specification describes it, in front of the SDK's payment middleware:
a new id is processed normally and a settled answer is kept; the same id with the same payload
gets the kept answer (nothing is verified or settled again); the same id with another payload
gets 409 Conflict. Only answers that carry a settlement are kept, so a refused payment can be
retried. In memory, for the life of the server: a public server would keep it in its store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from x402.extensions.payment_identifier import extract_payment_identifier
from x402.http import PAYMENT_SIGNATURE_HEADER, decode_payment_signature_header
from x402.schemas import PaymentPayload

_SETTLEMENT_HEADER = "payment-response"


@dataclass(frozen=True)
class _Kept:
    payload: dict[str, Any]
    status: int
    headers: dict[str, str]
    body: bytes


class PaymentIdCache:
    """HTTP middleware answering repeated payment identifiers on ``paths``."""

    def __init__(self, paths: frozenset[str]) -> None:
        self.paths = paths
        self._kept: dict[str, _Kept] = {}
        # One attempt per id at a time: a retry racing the first waits for its answer.
        self._locks: dict[str, asyncio.Lock] = {}

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        paid = _identified(request) if request.url.path in self.paths else None
        if paid is None:
            return await call_next(request)
        identifier, payload = paid
        async with self._locks.setdefault(identifier, asyncio.Lock()):
            kept = self._kept.get(identifier)
            if kept is not None:
                if kept.payload != payload:
                    return JSONResponse(
                        {"error": "payment identifier already used with another payment", "id": identifier},
                        status_code=409,
                    )
                return Response(kept.body, status_code=kept.status, headers=kept.headers)
            response = await call_next(request)
            if not (200 <= response.status_code < 300 and _SETTLEMENT_HEADER in response.headers):
                return response
            body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
            headers = dict(response.headers)
            self._kept[identifier] = _Kept(payload, response.status_code, headers, body)
            return Response(body, status_code=response.status_code, headers=headers)


def _identified(request: Request) -> tuple[str, dict[str, Any]] | None:
    """The payment identifier and the whole payload of a v2 payment that carries one."""
    header = request.headers.get(PAYMENT_SIGNATURE_HEADER)
    if not header:
        return None
    try:
        payment = decode_payment_signature_header(header)
    except Exception:  # not decodable: the SDK's middleware answers it as it always does
        return None
    if not isinstance(payment, PaymentPayload):
        return None
    identifier = extract_payment_identifier(payment)
    if identifier is None:
        return None
    return identifier, payment.model_dump(by_alias=True, exclude_none=True)
