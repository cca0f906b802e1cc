"""The x402 payment-identifier extension, mapped onto our ledger rows.

A server that declares ``payment-identifier`` in its 402 caches its answer under the id the
client sends: the same id with the same payment payload gets the cached answer (no second
settlement), the same id with another payload gets 409 Conflict. Our ledger row is already the
unit of idempotency (an idempotency key finds its row; a retry resends the row's stored
payment header), so the identifier is derived from the row id: it is fixed when the payment is
signed, stored inside the recorded header, and a resend after a crash or a lost answer carries
it unchanged. Servers that do not declare the extension get no ``extensions`` at all.

The SDK's own helpers build and read the extension (declaration echoed, ``info.id`` added).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    append_payment_identifier_to_extensions,
    is_payment_identifier_extension,
    is_valid_payment_id,
)

# The status a server answers when the id was used with another payload (the extension's spec).
CONFLICT_STATUS = 409
_PREFIX = "pay_"


def identifier_for(record_id: str) -> str:
    """The payment identifier of ledger row ``record_id`` (a uuid4 hex: 36 characters, valid)."""
    identifier = _PREFIX + record_id
    if not is_valid_payment_id(identifier):
        raise ValueError(f"ledger row id {record_id!r} does not make a valid payment identifier")
    return identifier


def payment_extensions(declared: dict[str, Any] | None, record_id: str) -> dict[str, Any] | None:
    """The ``extensions`` of a v2 payment payload for the server's declared ``declared``: the
    payment-identifier declaration echoed with our id, or None when the server did not declare
    it (its payload then stays exactly as before). Other declared extensions are not echoed:
    we act on none of them."""
    declaration = (declared or {}).get(PAYMENT_IDENTIFIER)
    if not is_payment_identifier_extension(declaration):
        return None
    return append_payment_identifier_to_extensions(
        {PAYMENT_IDENTIFIER: declaration}, identifier_for(record_id)
    )


def carried_identifier(payment_header: str | None) -> str | None:
    """The payment identifier inside a recorded payment header (None: the server did not
    declare the extension, the header is v1, or it is not one of ours)."""
    if not payment_header:
        return None
    try:
        payload = json.loads(base64.b64decode(payment_header, validate=True))
    except (binascii.Error, ValueError):
        return None
    extensions = payload.get("extensions") if isinstance(payload, dict) else None
    extension = extensions.get(PAYMENT_IDENTIFIER) if isinstance(extensions, dict) else None
    info = extension.get("info") if isinstance(extension, dict) else None
    identifier = info.get("id") if isinstance(info, dict) else None
    return identifier if isinstance(identifier, str) and is_valid_payment_id(identifier) else None
