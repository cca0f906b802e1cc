"""Alto, Pimlico's ERC-4337 bundler, from the pinned npm package, against a local anvil.

Alto (npm ``@pimlico/alto``) runs offline: on start it deploys its simulation contracts through
the CREATE2 deployer with the utility key, then serves the bundler JSON-RPC API
(``eth_sendUserOperation``, ``eth_estimateUserOperationGas``, ``eth_getUserOperationReceipt``...).

Start-up has no race and no sleeping: alto is told ``--port 0`` and logs
``Server listening at http://0.0.0.0:<port>`` once bound; that line tells us the port, then a
``eth_supportedEntryPoints`` call (polled until a deadline) confirms it serves our EntryPoint.

The keys go through the environment (alto reads ``ALTO_*`` variables), never argv. Alto runs in
its own process group, which ``stop`` ends as a whole; its stdin is a pipe it watches, so it also
exits if this Python process dies without stopping it. Everything alto prints is copied to
``alto.log`` in a temporary folder; a failed start quotes the end of that log.

Alto binds 0.0.0.0 (its host is not configurable in 0.0.20); we only ever talk to it on loopback.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from ..chain.entrypoint import ENTRY_POINT_V07
from ..paths import PROJECT_ROOT
from .proc import ProcessStartError, child_env

ALTO_JS = PROJECT_ROOT / "node_modules" / "@pimlico" / "alto" / "esm" / "cli" / "alto.js"

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.05
_TAIL_LINES = 60
_LISTENING = re.compile(r"Server listening at https?://[^\s:]+:(\d+)")
# Loaded before alto's own code: exit when our end of stdin closes (we stopped it or died).
_LIFELINE = (
    'data:text/javascript,process.stdin.on("end",()=>process.exit(0));'
    'process.stdin.on("data",()=>{});process.stdin.on("error",()=>process.exit(0));'
)
# Alto reads every ALTO_* variable as a flag and loads a .env file: neither may leak in from ours.
_SCRUBBED_PREFIXES = ("ALTO_", "SENTRY_", "OTEL_")


def _hex_key(key: str | bytes) -> str:
    text = key.hex() if isinstance(key, bytes | bytearray) else key
    text = text.removeprefix("0x")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ValueError("a private key is 32 bytes (64 hex digits)")
    return "0x" + text


class AltoBundler:
    """A running alto bundler bound to a free port; use it as a context manager.

    ``rpc_url`` is an anvil with the EntryPoint already deployed; ``executor_key`` sends the
    bundles and ``utility_key`` deploys alto's simulation contracts (both must hold ETH).
    """

    def __init__(
        self,
        rpc_url: str,
        entry_point: str = ENTRY_POINT_V07,
        *,
        executor_key: str | bytes,
        utility_key: str | bytes,
        log_dir: Path | None = None,
        ready_timeout_s: float = _READY_TIMEOUT_S,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.rpc_url = rpc_url
        self.entry_point = entry_point
        self._executor_key = _hex_key(executor_key)
        self._utility_key = _hex_key(utility_key)
        self._own_log_dir = log_dir is None
        self._log_dir = log_dir
        self._ready_timeout_s = ready_timeout_s
        self._extra_args = extra_args
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._ports: queue.Queue[int | None] = queue.Queue()
        self._exited = threading.Event()
        self._url: str | None = None
        self.startup_seconds: float | None = None

    # ---- public surface ----

    @property
    def url(self) -> str:
        """The bundler's JSON-RPC URL (loopback)."""
        if self._url is None:
            raise RuntimeError("the bundler is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        """alto's process id, which is also its process group id (None once stopped)."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """Where alto's output goes (removed on stop unless the caller gave ``log_dir``)."""
        return None if self._log_dir is None else self._log_dir / "alto.log"

    def argv(self, node: str) -> list[str]:
        """The command line (no secrets: the keys travel in the environment)."""
        return [
            node, "--import", _LIFELINE, str(ALTO_JS),
            "--entrypoints", self.entry_point,
            "--rpc-url", self.rpc_url,
            "--port", "0",
            "--safe-mode", "false",  # anvil has no debug_traceCall tracer for the ERC-7562 rules
            "--deploy-simulations-contract", "true",
            "--json",
            # Every eth_* alto sends would otherwise be logged with its result (EntryPoint code...).
            "--public-client-log-level", "warn",
            "--wallet-client-log-level", "warn",
            *self._extra_args,
        ]  # fmt: skip

    def start(self) -> AltoBundler:
        """Spawn alto and return once it answers ``eth_supportedEntryPoints`` with our EntryPoint."""
        if self._proc is not None:
            raise RuntimeError("the bundler is already started")
        node = shutil.which("node")
        if node is None:
            raise FileNotFoundError("node is not on PATH; alto needs Node.js >= 20")
        if not ALTO_JS.exists():
            raise FileNotFoundError(f"{ALTO_JS} is missing: run `npm ci` in {PROJECT_ROOT}")
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="alto-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in child_env({}).items() if not k.startswith(_SCRUBBED_PREFIXES)}
        env.update(
            {
                "ALTO_EXECUTOR_PRIVATE_KEYS": self._executor_key,
                "ALTO_UTILITY_PRIVATE_KEY": self._utility_key,
                "DOTENV_CONFIG_PATH": str(self._log_dir / "no.env"),
            }
        )
        started = time.monotonic()
        log = (self._log_dir / "alto.log").open("w", encoding="utf-8")
        try:
            self._proc = subprocess.Popen(
                self.argv(node),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._log_dir,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # its own process group, ended as one
            )
        except BaseException:
            log.close()
            raise
        self._reader = threading.Thread(target=self._drain, args=(log,), name="alto-stdout", daemon=True)
        self._reader.start()
        try:
            self._await_ready(started)
        except BaseException:
            self._own_log_dir = False  # keep the log the error points to
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """End alto's whole process group (idempotent); remove our temporary log folder."""
        proc, self._proc, self._url = self._proc, None, None
        if proc is not None:
            _end_group(proc)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if self._reader is not None:
                self._reader.join(timeout=_STOP_TIMEOUT_S)
            if proc.stdout is not None:
                with contextlib.suppress(OSError):
                    proc.stdout.close()
        if self._own_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __enter__(self) -> AltoBundler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def tail(self) -> str:
        """The last lines alto printed."""
        return "\n".join(self._tail)

    # ---- internals ----

    def _drain(self, log: IO[str]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip("\n"))
                found = _LISTENING.search(line)
                if found is not None:
                    self._ports.put(int(found.group(1)))
        self._exited.set()
        self._ports.put(None)

    def _failure(self, what: str) -> ProcessStartError:
        return ProcessStartError(f"alto {what} (log {self.log_path}):\n{self.tail()}")

    def _await_ready(self, started: float) -> None:
        deadline = started + self._ready_timeout_s
        try:
            port = self._ports.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise self._failure(f"did not listen within {self._ready_timeout_s}s") from None
        if port is None:
            assert self._proc is not None
            raise self._failure(f"exited with code {self._proc.wait()} before it listened")
        url = f"http://127.0.0.1:{port}"
        last_error = "no answer"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                try:
                    served = _rpc(client, url, "eth_supportedEntryPoints", [])
                except (httpx.HTTPError, ValueError) as exc:
                    last_error = repr(exc)
                else:
                    if isinstance(served, list) and self.entry_point.lower() in (
                        str(a).lower() for a in served
                    ):
                        self._url = url
                        return
                    last_error = f"it serves {served!r}"
                if self._exited.wait(_POLL_INTERVAL_S):
                    assert self._proc is not None
                    raise self._failure(f"exited with code {self._proc.wait()} while starting")
        raise self._failure(f"not ready within {self._ready_timeout_s}s ({last_error})")


def _rpc(client: httpx.Client, url: str, method: str, params: list[Any]) -> Any:
    reply = client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    reply.raise_for_status()
    body = reply.json()
    if not isinstance(body, dict) or "error" in body:
        raise ValueError(f"{method} failed: {body!r}")
    return body.get("result")


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever of the group is left."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


__all__ = ["ALTO_JS", "AltoBundler"]
