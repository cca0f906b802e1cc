"""Serve an ASGI app with uvicorn on a free loopback port, in a daemon thread.

The socket is bound and listening before uvicorn starts, so the URL is known at once and early
connections queue instead of failing: readiness is uvicorn's own ``started`` flag, no polling.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import uvicorn

_STOP_TIMEOUT_S = 10.0
_START_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    """uvicorn.Server that signals the end of its start-up (success or not) on an Event."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class ServedApp:
    """``with ServedApp(app, "name") as served: httpx.get(served.url + "/")``, or
    ``served = ServedApp(name=...)``, read ``served.url``, then ``served.start(app)``."""

    def __init__(self, app: Any = None, name: str = "asgi") -> None:
        # The app may come at start(): the URL is known first, so routes can name it.
        self.app = app
        self.name = name
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, app: Any = None) -> ServedApp:
        self.app = app if app is not None else self.app
        ready = threading.Event()
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            log_level="critical",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config, ready)
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError(f"{self.name} server did not start")
        return self

    def _serve(self) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._server.ready.set()
            self._socket.close()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name} server did not stop within {_STOP_TIMEOUT_S}s")
            self._thread = None
        self._socket.close()

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
