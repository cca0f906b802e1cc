"""`x402-agent mcp` over stdio answers a host's first requests before the MCP SDK has loaded.

Importing the `mcp` package takes most of a second (it builds its protocol models at import), and
hosts start their servers at every launch. So the process splits at start: a front thread owns
the real stdin and stdout, while the server, loading meanwhile in the main thread, reads and
writes pipes put in place of fd 0 and 1. Until the server has said anything, the front answers
``initialize``, ``server/discover`` and ``tools/list`` with what this server answered to the same
request last time, recorded in the agent home with a fingerprint of the code that produced it.
Every message still reaches the server, in order; its own answers to the requests the front
answered are dropped, after a check against what was sent (a difference rewrites the record for
the next start). Anything else waits for the server. The first start, and the first after a
change of code, answer from the server and record. Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .paths import default_home

RECORD_FILE = "mcp-answers.json"
EARLY_METHODS = (b'"initialize"', b'"server/discover"', b'"tools/list"')
# Sent through the server's output pipe once the server has stopped: all it wrote came before.
_END = b"\x00x402-agent: server stopped\n"


def _sources() -> dict[str, list[int]]:
    """Every module file loaded in this process (ours and the libraries'), with its size and
    modification time: the answers are a product of these and of the interpreter only."""
    sources: dict[str, list[int]] = {}
    for module in list(sys.modules.values()):  # copied at once: imports may run meanwhile
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                found = os.stat(path)
                sources[path] = [found.st_mtime_ns, found.st_size]
    return sources


def _unchanged(sources: dict[str, list[int]]) -> bool:
    for path, (mtime_ns, size) in sources.items():
        try:
            found = os.stat(path)
        except OSError:
            return False
        if found.st_mtime_ns != mtime_ns or found.st_size != size:
            return False
    return True


class Record:
    """The server's answers to the early requests, as last given, keyed by request, with the
    files that produced them: a record is used only while none of them has changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, Any] = {}
        try:
            saved = json.loads(path.read_text())
            if (
                saved["python"] == sys.version
                and _unchanged(saved["sources"])
                and isinstance(saved["answers"], dict)
            ):
                self.answers = saved["answers"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: the server answers, and this start records

    def put(self, key: str, result: Any) -> None:
        self.answers[key] = result
        self._save()

    def forget(self, key: str) -> None:
        if self.answers.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:  # replaced whole, so a concurrent start reads the old record or the new one
            scratch.write_text(
                json.dumps(
                    {"python": sys.version, "sources": _sources(), "answers": self.answers}, sort_keys=True
                )
            )
            os.replace(scratch, self.path)
        except OSError:  # a read-only home only starts slower next time
            with contextlib.suppress(OSError):
                scratch.unlink()


class StdioFront:
    """Owns the real stdin/stdout; the server in this process speaks through fd 0 and 1."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.wire_in = os.dup(0)
        self.wire_out = os.dup(1)
        server_in, self.to_server = os.pipe()
        self.from_server, self.server_out = os.pipe()
        os.dup2(server_in, 0)
        os.dup2(self.server_out, 1)
        os.close(server_in)
        self.lock = threading.Lock()  # one writer on the wire at a time; guards the state below
        self.server_spoke = False
        self.handshake: Any = None  # the initialize params of this connection (2025-11-25)
        self.answered: dict[Any, str] = {}  # request id -> record key, answered by the front
        self.recording: dict[Any, str] = {}  # request id -> record key, to record
        self.inbound = threading.Thread(target=self._forward_in, name="mcp-front-in", daemon=True)
        self.outbound = threading.Thread(target=self._forward_out, name="mcp-front-out", daemon=True)

    @classmethod
    def start(cls, home: Path | None) -> StdioFront:
        front = cls(Record((home or default_home()).expanduser() / RECORD_FILE))
        front.inbound.start()
        front.outbound.start()
        return front

    def finish(self) -> None:
        """After the server stopped: deliver what it wrote, then stop."""
        _write_all(self.server_out, _END)
        self.outbound.join()

    # ---- host -> server ----
    def _forward_in(self) -> None:
        with open(self.wire_in, "rb") as wire:
            for line in iter(wire.readline, b""):
                self._answer_early(line)
                _write_all(self.to_server, line)
        os.close(self.to_server)  # the host hung up: the server reads the end and stops

    def _answer_early(self, line: bytes) -> None:
        if not any(method in line for method in EARLY_METHODS):
            return
        try:
            message = json.loads(line)
        except ValueError:
            return  # the server answers malformed input itself
        if (
            not isinstance(message, dict)
            or "id" not in message
            or message.get("method") not in ("initialize", "server/discover", "tools/list")
        ):
            return
        request_id, params = message["id"], message.get("params")
        if not isinstance(request_id, str | int):
            return
        key = json.dumps([self.handshake, message["method"], params], sort_keys=True, separators=(",", ":"))
        if message["method"] == "initialize":
            self.handshake = params  # later answers may depend on the version agreed here
        with self.lock:
            recorded = self.record.answers.get(key)
            if recorded is None:
                self.recording[request_id] = key
            if recorded is None or self.server_spoke:  # the server answers as fast now
                return
            self.answered[request_id] = key
            answer = json.dumps(
                {"jsonrpc": "2.0", "id": request_id, "result": recorded}, separators=(",", ":")
            )
            _write_all(self.wire_out, answer.encode() + b"\n")

    # ---- server -> host ----
    def _forward_out(self) -> None:
        with open(self.from_server, "rb") as pipe:
            for line in iter(pipe.readline, b""):
                if line == _END:
                    return
                with self.lock:
                    self.server_spoke = True
                    deliver, update = self._check(line) if self.answered or self.recording else (True, None)
                    if deliver:
                        _write_all(self.wire_out, line)
                if update is not None:  # after the host has its answer
                    key, result = update
                    if result is None:
                        self.record.forget(key)
                    else:
                        self.record.put(key, result)

    def _check(self, line: bytes) -> tuple[bool, tuple[str, Any] | None]:
        """Whether a line of the server goes to the host, and the record to update (key, result;
        result None: forget it)."""
        try:
            message = json.loads(line)
        except ValueError:
            return True, None
        if not isinstance(message, dict) or "method" in message:
            return True, None
        request_id = message.get("id")
        if not isinstance(request_id, str | int):
            return True, None
        result = message.get("result")
        if request_id in self.answered:  # the host has had its answer: this one never goes
            key = self.answered.pop(request_id)
            if result == self.record.answers.get(key):
                return False, None
            print(
                f"x402-agent mcp: the recorded answer to {key[:80]} was out of date; "
                "recorded anew for the next start",
                file=sys.stderr,
                flush=True,
            )
            return False, (key, result)
        if request_id in self.recording:
            return True, (self.recording.pop(request_id), result)
        return True, None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
