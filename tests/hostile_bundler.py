"""A stand-in for a provider's bundler that refuses every user operation with one JSON-RPC error.

A fake on purpose: no bundler that runs here (alto) can be made to answer each ERC-7769 code on
demand, and a provider's bundler cannot be reached offline. It answers ``eth_chainId`` and
``eth_supportedEntryPoints`` truthfully, so the client takes it for a bundler, and refuses
``eth_estimateUserOperationGas`` and ``eth_sendUserOperation`` with the configured error. It
records each request's path and query, to check what URL (and API key) the client used.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REFUSED_METHODS = ("eth_estimateUserOperationGas", "eth_sendUserOperation")


class HostileBundler:
    def __init__(self, chain_id: int, entry_point: str, code: int, message: str) -> None:
        self.chain_id, self.entry_point = chain_id, entry_point
        self.error: dict[str, Any] = {"code": code, "message": message}
        self.paths: list[str] = []
        self.methods: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileBundler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        method = request.get("method")
        self.methods.append(str(method))
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
        if method == "eth_chainId":
            reply["result"] = hex(self.chain_id)
        elif method == "eth_supportedEntryPoints":
            reply["result"] = [self.entry_point]
        elif method in REFUSED_METHODS:
            reply["error"] = self.error
        else:
            reply["error"] = {"code": -32601, "message": f"method {method} not found"}
        return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        bundler = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bundler.paths.append(self.path)
                length = int(self.headers.get("content-length", 0))
                body = json.dumps(bundler._answer(json.loads(self.rfile.read(length)))).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet: pytest shows failures
                pass

        return Handler
