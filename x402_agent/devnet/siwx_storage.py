"""What the local world's sign-in-with-x server remembers: who paid for which path, until when.

The SDK's ``SIWxStorage`` protocol (``has_paid``/``record_payment``) says nothing of how long a
payment entitles its payer; the SDK's in-memory storage keeps it forever. A seller sells access
for a while, so this one ends each entitlement ``ttl_seconds`` after the payment. The clock is a
parameter so that a test owning its own server can end an entitlement without waiting.

No nonce tracking: the SDK 2.25 request hook looks for ``has_record_nonce`` where the protocol
names ``record_nonce``, so a storage with both nonce methods is refused at start. Its sign-in
messages then stay acceptable for their age limit (5 minutes) to whoever holds them; they grant
only what the payer already paid for.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ExpiringSIWxStorage:
    """Paid (path, address) pairs, each good for ``ttl_seconds`` from its payment."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._ends: dict[tuple[str, str], float] = {}

    def has_paid(self, resource: str, address: str) -> bool:
        end = self._ends.get((resource, address.lower()))
        return end is not None and self._clock() < end

    def record_payment(self, resource: str, address: str) -> None:
        self._ends[(resource, address.lower())] = self._clock() + self.ttl_seconds
