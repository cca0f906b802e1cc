"""Workflows: what a request does on the device, as a generator the engine drives.

A workflow yields either a protobuf message to send (and is resumed with the host's next
message) or a ``Confirm`` step (the engine sends a ButtonRequest, waits for ButtonAck and for
the user's decision, and resumes it with ``True`` or ``False``). It returns the final response.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar, Union

from trezorlib.messages import ButtonRequestType, FailureType
from trezorlib.protobuf import MessageType

M = TypeVar("M", bound=MessageType)

# What one page of the display holds (about what a Model T shows of a message in its monospace
# font): longer screens page, and the device shows every page before its confirm button.
SCREEN_COLUMNS = 18
SCREEN_ROWS = 5
CONTINUED = "\u2026"  # ends a piece of a line that goes on on the next screen line


class WorkflowFailure(Exception):
    """Ends the workflow with ``Failure(code, message)`` sent to the host."""

    def __init__(self, code: FailureType, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnexpectedMessage(Exception):
    """The host sent something the workflow did not ask for; the engine restarts with it."""

    def __init__(self, received: MessageType) -> None:
        super().__init__(type(received).__name__)
        self.received = received


@dataclass(frozen=True)
class Screen:
    """What the device would display for a confirmation (and what the UI callback receives).

    ``kind`` is a stable identifier ("sign_message", "show_address", "eth_sign_message",
    "eth_sign_typed_data", "eth_sign_typed_hash", "eth_show_address", "show_public_key",
    "ping", "apply_settings"); ``fields`` are ordered (label, value) pairs.
    """

    kind: str
    title: str
    fields: tuple[tuple[str, str], ...]

    def field(self, label: str) -> str | None:
        for name, value in self.fields:
            if name == label:
                return value
        return None

    def text(self) -> str:
        lines = [self.title]
        lines += [f"  {label}: {value}" for label, value in self.fields]
        return "\n".join(lines)

    @property
    def pages(self) -> tuple[str, ...]:
        """The display's pages: each field as its label line, then its value's lines, a line
        longer than the screen cut (not word-wrapped) into pieces of ``SCREEN_COLUMNS`` - 1
        characters, each but the last marked ``CONTINUED``; ``SCREEN_ROWS`` lines a page."""
        width = SCREEN_COLUMNS - len(CONTINUED)
        lines: list[str] = []
        for label, value in self.fields:
            for line in (f"{label}:", *value.split("\n")):
                while len(line) > SCREEN_COLUMNS:
                    lines.append(line[:width] + CONTINUED)
                    line = line[width:]
                lines.append(line)
        return tuple("\n".join(lines[i : i + SCREEN_ROWS]) for i in range(0, len(lines), SCREEN_ROWS))


@dataclass(frozen=True)
class Confirm:
    screen: Screen
    code: ButtonRequestType


Step = Union[MessageType, Confirm]  # noqa: UP007 (a runtime alias)
Workflow = Generator[Step, object, MessageType]


def expect(received: object, cls: type[M]) -> M:
    if not isinstance(received, cls):
        assert isinstance(received, MessageType)
        raise UnexpectedMessage(received)
    return received


def confirm(
    screen: Screen, code: ButtonRequestType = ButtonRequestType.Other
) -> Generator[Step, object, None]:
    """Show ``screen`` and wait for the user; a rejection ends the workflow as the firmware does."""
    approved = yield Confirm(screen, code)
    if not approved:
        raise WorkflowFailure(FailureType.ActionCancelled, "Cancelled")
