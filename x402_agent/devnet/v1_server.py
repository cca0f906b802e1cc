"""Launcher for ``localworld/v1-server.mjs``: the official x402 v1 server (npm x402-express).

The Python SDK cannot serve v1, so the world runs the reference TypeScript
server in a node child process. Configuration (including the facilitator key)
goes through the environment, never argv. The script prints one JSON line when
both its paid API and its facilitator listen; that line is the readiness
signal and also carries the route catalogue, so prices live in one place.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

from ..paths import PROJECT_ROOT
from .info import PriceInfo, RouteInfo
from .proc import ManagedProcess, child_env
from .usdc import TokenInfo

V1_SCRIPT = PROJECT_ROOT / "localworld" / "v1-server.mjs"
_READY_TIMEOUT_S = 15.0


@dataclass
class V1Server:
    """A running v1 server: its base URL, facilitator address and routes."""

    process: ManagedProcess
    url: str
    facilitator_address: str
    routes: tuple[RouteInfo, ...]

    @classmethod
    def start(
        cls,
        *,
        rpc_url: str,
        network: str,
        token: TokenInfo,
        pay_to: str,
        facilitator_key: str,
    ) -> V1Server:
        """Start node, wait for its ready line, and describe what it serves."""
        node = shutil.which("node")
        if node is None:
            raise FileNotFoundError("node is not on PATH; the v1 server needs Node.js >= 20")
        env = child_env(
            {
                "X402_RPC_URL": rpc_url,
                "X402_NETWORK": network,
                "X402_TOKEN_ADDRESS": token.address,
                "X402_TOKEN_NAME": token.name,
                "X402_TOKEN_VERSION": token.version,
                "X402_TOKEN_DECIMALS": str(token.decimals),
                "X402_PAY_TO": pay_to,
                "X402_FACILITATOR_KEY": facilitator_key,
                "X402_PORT": "0",
                # If this Python process dies without stopping us, node exits too.
                "X402_EXIT_ON_STDIN_EOF": "1",
            }
        )
        process = ManagedProcess(
            "x402 v1 server (node)", [node, str(V1_SCRIPT)], env=env, cwd=PROJECT_ROOT, keep_stdin_open=True
        )
        try:
            line = process.wait_for_line(_is_ready_line, _READY_TIMEOUT_S)
            ready: dict[str, Any] = json.loads(line)
        except BaseException:
            process.stop()
            raise
        url: str = ready["url"]
        routes = tuple(
            RouteInfo(
                method=route["method"],
                path=route["path"],
                url=url + route["path"],
                version=1,
                accepts=(PriceInfo(network, token, int(route["amount"]), ready["payTo"]),),
                description=route["description"],
            )
            for route in ready["routes"]
        )
        return cls(process=process, url=url, facilitator_address=ready["facilitator"], routes=routes)

    def stop(self) -> None:
        """Stop the node process (idempotent)."""
        self.process.stop()


def _is_ready_line(line: str) -> bool:
    return line.startswith("{") and '"ready"' in line
