"""The device's request loop, independent of sockets: messages in, messages out.

One workflow runs at a time. A confirmation shows a screen (ButtonRequest), waits for the
host's ButtonAck, then for the user's decision, which comes from the confirm policy
("auto" approves, "reject" refuses, "wait" waits for ``decide``, "unplug" pulls the cable).
A decision made while the screen is shown but before the ButtonAck is kept for it.
A screen longer than one page (``Screen.pages``) is paged by the user (``turn_page``); an
approval is taken on the last page only, so one given earlier first turns through the rest:
every page has been displayed before anything is confirmed.
A Cancel ends the running workflow with Failure(ActionCancelled); any other request ends it
and is served instead (as the firmware does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Literal

from trezorlib import messages as m
from trezorlib.protobuf import MessageType

from .handlers import HANDLERS, Device
from .workflow import Confirm, Screen, UnexpectedMessage, Workflow, WorkflowFailure

LOG = logging.getLogger("x402_agent.device.simulator")

ConfirmMode = Literal["auto", "reject", "wait", "unplug"]
CONFIRM_MODES: Final = ("auto", "reject", "wait", "unplug")
Outcome = Literal["approved", "rejected", "cancelled", "interrupted", "unplugged"]


class Unplug:
    """Sentinel in the outgoing list: the server must pull the (virtual) cable now."""


UNPLUG: Final = Unplug()
Out = MessageType | Unplug

ScreenCallback = Callable[[Screen], None]
PageCallback = Callable[[Screen, int], None]
ResultCallback = Callable[[Screen, Outcome], None]


class Engine:
    def __init__(
        self,
        device: Device,
        mode: Callable[[], ConfirmMode],
        on_screen: ScreenCallback | None = None,
        on_result: ResultCallback | None = None,
        on_page: PageCallback | None = None,
    ) -> None:
        self.device = device
        self._mode = mode
        self._on_screen = on_screen
        self._on_result = on_result
        self._on_page = on_page
        self._workflow: Workflow | None = None
        self._screen: Screen | None = None  # shown since its ButtonRequest went out
        self._acked = False  # ButtonAck received for the shown screen
        self._early: bool | None = None  # decision made before the ButtonAck
        self._page = 0  # page of the shown screen on display

    @property
    def busy(self) -> bool:
        return self._workflow is not None

    @property
    def screen(self) -> Screen | None:
        return self._screen

    @property
    def page(self) -> int:
        return self._page

    def turn_page(self) -> bool:
        """Show the next page of the shown screen; False when there is none."""
        screen = self._screen
        if screen is None or self._page + 1 >= len(screen.pages):
            return False
        self._page += 1
        if self._on_page is not None:
            try:
                self._on_page(screen, self._page)
            except Exception:
                LOG.exception("on_page callback failed")
        return True

    # ---- inputs --------------------------------------------------------------------------------
    def handle(self, msg: MessageType) -> list[Out]:
        """A message from the host."""
        LOG.debug("host -> device: %s", type(msg).__name__)
        if self._workflow is not None:
            if isinstance(msg, m.Cancel):
                self.abort("cancelled")
                return [m.Failure(code=m.FailureType.ActionCancelled, message="Cancelled")]
            if self._screen is not None:
                if not self._acked and isinstance(msg, m.ButtonAck):
                    self._acked = True
                    return self._after_ack()
                self.abort("interrupted")
            else:
                try:
                    return self._step(msg)
                except UnexpectedMessage:
                    self.abort("interrupted")
        return self._start(msg)

    def handle_aside(self, msg: MessageType) -> list[Out]:
        """A passive request (``handlers.is_passive``) served without touching the running workflow."""
        handler = HANDLERS.get(type(msg))
        try:
            response = handler(self.device, msg) if handler is not None else None
        except WorkflowFailure as failure:
            return [m.Failure(code=failure.code, message=failure.message)]
        if isinstance(response, MessageType):
            return [response]
        if response is not None:
            response.close()
        return [m.Failure(code=m.FailureType.Busy, message="Device is busy")]

    def decide(self, approve: bool, source: str) -> list[Out] | None:
        """The user's decision on the shown screen; ``None`` when no screen is shown."""
        if self._screen is None:
            return None
        LOG.info("decision from %s: %s", source, "approve" if approve else "reject")
        if not self._acked:
            self._early = approve
            return []
        return self._resolve(approve)

    def abort(self, outcome: Outcome) -> bool:
        """End the running workflow without an answer (cancel, interruption, unplug, stop)."""
        if self._workflow is None:
            return False
        workflow, screen = self._workflow, self._screen
        self._clear()
        workflow.close()
        if screen is not None:
            self._notify_result(screen, outcome)
        return True

    # ---- internals -----------------------------------------------------------------------------
    def _start(self, msg: MessageType) -> list[Out]:
        handler = HANDLERS.get(type(msg))
        if handler is None:
            return [
                m.Failure(
                    code=m.FailureType.UnexpectedMessage,
                    message=f"{type(msg).__name__} is not supported by the x402-agent simulator",
                )
            ]
        try:
            response = handler(self.device, msg)
        except WorkflowFailure as failure:
            return [m.Failure(code=failure.code, message=failure.message)]
        if isinstance(response, MessageType):
            return [response]
        self._workflow = response
        return self._step(None)

    def _step(self, value: object) -> list[Out]:
        assert self._workflow is not None
        try:
            step = self._workflow.send(value)
        except StopIteration as done:
            self._clear()
            return [done.value]
        except WorkflowFailure as failure:
            self._clear()
            return [m.Failure(code=failure.code, message=failure.message)]
        except UnexpectedMessage:
            raise
        if isinstance(step, Confirm):
            self._screen, self._acked, self._early, self._page = step.screen, False, None, 0
            out: list[Out] = [m.ButtonRequest(code=step.code, name=step.screen.kind)]
            if self._on_screen is not None:
                try:
                    self._on_screen(step.screen)
                except Exception:
                    LOG.exception("on_screen callback failed")
            return out
        return [step]

    def _after_ack(self) -> list[Out]:
        mode = self._mode()
        if mode == "auto":
            return self._resolve(True)
        if mode == "reject":
            return self._resolve(False)
        if mode == "unplug":
            return [UNPLUG]
        if self._early is not None:
            return self._resolve(self._early)
        return []  # "wait": until decide()

    def _resolve(self, approve: bool) -> list[Out]:
        screen = self._screen
        assert screen is not None
        while approve and self.turn_page():
            pass  # the confirm button is on the last page
        self._screen, self._acked, self._early = None, False, None
        self._notify_result(screen, "approved" if approve else "rejected")
        return self._step(approve)

    def _notify_result(self, screen: Screen, outcome: Outcome) -> None:
        LOG.info("screen %s: %s", screen.kind, outcome)
        if self._on_result is not None:
            try:
                self._on_result(screen, outcome)
            except Exception:
                LOG.exception("on_result callback failed")

    def _clear(self) -> None:
        self._workflow, self._screen, self._acked, self._early = None, None, False, None
