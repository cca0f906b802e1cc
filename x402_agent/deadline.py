"""The overall deadline of one fetch, shared by its HTTP steps (connect, send, wait, read).

A per-read timeout never stops a server that trickles one byte a second, so the drivers give
each HTTP operation at most the time left and check the deadline after every chunk. The clock
is monotonic: a wall-clock jump neither cuts a fetch short nor extends it. Time spent waiting
for a human's approval does not count: a person deciding is not the server being slow.

The async driver cancels the exchange at the deadline exactly. The sync driver cannot change a
read's timeout once the request started: a server that sends a byte just before the deadline
and then stalls holds it for at most one more read timeout (the time that was left when the
request began), so its worst case is twice the deadline, never unbounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import DeadlineExceeded, InvalidRequest
from .reasons import Reason

DEFAULT_TIMEOUT_SECONDS = 60.0
MIN_TIMEOUT_SECONDS = 1.0
MAX_TIMEOUT_SECONDS = 600.0
# The agent tools' argument: its documentation and JSON-schema bounds (enforced by
# ``check_timeout``, so a violation is a refusal with its reason).
TIMEOUT_DOC = (
    f"overall deadline in seconds, connect to last byte (default "
    f"{DEFAULT_TIMEOUT_SECONDS:g}); a paid answer cut by it stays counted and is "
    "fetched again without paying twice by retrying with the same idempotency_key"
)
TIMEOUT_HINT: dict[str, Any] = {"minimum": MIN_TIMEOUT_SECONDS, "maximum": MAX_TIMEOUT_SECONDS}


def check_timeout(seconds: object) -> float:
    """The caller's timeout as a float, or a typed refusal."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS)
    ):
        raise InvalidRequest(
            f"timeout must be between {MIN_TIMEOUT_SECONDS:g} and "
            f"{MAX_TIMEOUT_SECONDS:g} seconds, got {str(seconds)[:40]!r}",
            reason=Reason.INVALID_TIMEOUT,
        )
    return float(seconds)


class Deadline:
    """``seconds`` from now on ``clock``; ``pause`` what must not count against it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = check_timeout(seconds)
        self._clock = clock
        self._at = clock() + self.seconds

    def remaining(self) -> float:
        return self._at - self._clock()

    def extend(self, seconds: float) -> None:
        """Give back time that was spent waiting on something other than the server."""
        self._at += seconds

    def timeouts(self) -> dict[str, float]:
        """httpx's per-operation timeouts (the request's ``timeout`` extension): the time left."""
        left = max(self.remaining(), 0.001)
        return {"connect": left, "read": left, "write": left, "pool": left}

    def exceeded(self, host: str, status: int | None, received_bytes: int) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{host} did not answer within the {self.seconds:g} s deadline",
            host=host,
            deadline_seconds=self.seconds,
            status=status,
            received_bytes=received_bytes,
        )

    def check(self, host: str, status: int | None, received_bytes: int) -> None:
        if self.remaining() <= 0:
            raise self.exceeded(host, status, received_bytes)
