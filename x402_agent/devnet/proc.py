"""Child processes of the local world: start, wait for a ready line, stop.

anvil and the node v1 server both announce readiness on stdout. We read that
line (with a deadline, no sleeping) and then keep draining their output in a
daemon thread: a child whose pipe fills up would block on its next log write.
The last lines are kept so a failed start can say why.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_TAIL_LINES = 40
_STOP_TIMEOUT_S = 5.0


class ProcessStartError(RuntimeError):
    """A child process exited or stayed silent before reporting ready."""


class ManagedProcess:
    """A child process whose stdout is drained and whose ready line is awaited."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        keep_stdin_open: bool = False,
    ) -> None:
        """Spawn ``argv``; with ``keep_stdin_open`` the child's stdin is a pipe that
        closes only when we stop it or this process dies (a lifeline it can watch)."""
        self.name = name
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._watching = True
        self._proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if keep_stdin_open else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._drain, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        for line in stream:
            self._tail.append(line.rstrip("\n"))
            if self._watching:
                self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, match: Callable[[str], bool], timeout_s: float) -> str:
        """Return the first stdout line accepted by ``match``; raise if the child dies first."""
        try:
            while True:
                line = self._lines.get(timeout=timeout_s)
                if line is None:
                    raise ProcessStartError(
                        f"{self.name} exited with code {self._proc.wait()} before it was ready:\n"
                        + self.tail()
                    )
                if match(line):
                    return line.strip()
        except queue.Empty:
            raise ProcessStartError(f"{self.name} not ready after {timeout_s}s:\n" + self.tail()) from None
        finally:
            # Once ready (or failed), later lines are only kept in the tail.
            self._watching = False

    def tail(self) -> str:
        """The last lines the child printed (for error messages)."""
        return "\n".join(self._tail)

    def stop(self) -> None:
        """Terminate, wait, and kill if the child ignores SIGTERM."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(timeout=_STOP_TIMEOUT_S)
        if self._proc.stdout is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment plus ``extra`` (secrets go here, never in argv)."""
    env = dict(os.environ)
    env.update(extra)
    return env
