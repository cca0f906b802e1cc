"""The debug link (UDP port + 1): YES/NO button presses and the current screen.

HWI's emulator client presses "yes" here after each ButtonRequest (legacy field ``yes_no``,
wire-compatible with ``button``); trezorlib's ``DebugLink.press_yes/press_no`` send
``DebugLinkDecision(button=...)`` then ``DebugLinkGetState``. Unlike the real emulator, the state
never contains the mnemonic or any key.
"""

from __future__ import annotations

import json

from trezorlib import messages as m
from trezorlib.protobuf import MessageType

from .engine import Engine, Out

_ACKNOWLEDGED = (m.DebugLinkRecordScreen, m.DebugLinkWatchLayout, m.DebugLinkReseedRandom)


def state(engine: Engine) -> m.DebugLinkState:
    screen = engine.screen
    layout: dict[str, object]
    if screen is None:
        layout = {"component": "Homescreen", "label": engine.device.label}
    else:
        layout = {
            "component": "SimulatorConfirm",
            "kind": screen.kind,
            "title": screen.title,
            "fields": [list(pair) for pair in screen.fields],
        }
    return m.DebugLinkState(tokens=[json.dumps(layout)])


def handle(msg: MessageType, engine: Engine, honor_decisions: bool) -> tuple[list[MessageType], list[Out]]:
    """Returns (replies on the debug link, messages for the host's main channel)."""
    if isinstance(msg, m.DebugLinkDecision):
        to_host: list[Out] = []
        if msg.button in (m.DebugButton.YES, m.DebugButton.NO) and honor_decisions:
            to_host = engine.decide(msg.button == m.DebugButton.YES, source="debug link") or []
        return ([state(engine)] if msg.wait else []), to_host
    if isinstance(msg, m.DebugLinkGetState):
        return [state(engine)], []
    if isinstance(msg, m.DebugLinkStop):
        return [], []
    if isinstance(msg, _ACKNOWLEDGED):
        return [m.Success()], []
    return [
        m.Failure(
            code=m.FailureType.UnexpectedMessage,
            message=f"{type(msg).__name__} is not supported by the x402-agent simulator",
        )
    ], []
