"""`x402-agent devnet`: run the local world in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from ..reasons import Reason
from .provision import (
    devnet_policy,
    provision_devnet_home,
    provision_smart_account_home,
    smart_account_policy,
)
from .world import LocalWorld


def run_devnet(
    home: Path | None, wallet: str = "smart-account", schemes: tuple[str, ...] | None = None
) -> int:
    """``wallet``: ``smart-account`` (an X402Account owned by the simulator, topped up through
    the bundler) or ``key`` (a plain funded key pays). ``schemes``: what the home's policy lets
    its assets be paid with (unset: exact only, the policy's default)."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if home is not None and (home / "config.json").exists():
        from ..errors import ConfigError

        raise ConfigError(
            f"{home} is already an agent home; devnet provisions a new one", reason=Reason.HOME_EXISTS
        )
    smart = wallet == "smart-account"
    with tempfile.TemporaryDirectory(prefix="x402-devnet-") as scratch, LocalWorld(bundler=smart) as world:
        root = home or Path(scratch) / "agent-home"
        if smart:
            agent_home = provision_smart_account_home(
                world,
                root,
                policy=lambda account: smart_account_policy(world, account, schemes=schemes),
            )
        else:
            agent_home = provision_devnet_home(world, root, policy=devnet_policy(world, schemes=schemes))
        signer = agent_home.config.signer
        ready = {
            "ready": True,
            "rpc_url": world.rpc_url,
            "chain_id": world.chain_id,
            "network": world.network,
            "token": world.usdc.address,
            "tokens": {"USDC": world.usdc.address, "EURC": world.eurc.address},
            "api_url": world.api_url,
            "v1_api_url": world.v1_api_url,
            "facilitator_url": world.facilitator_url,  # /supported and the Bazaar listing (discover)
            "agent_home": str(root),
            "payer": agent_home.payer_address(),
            "funder": world.payer_address,
            "wallet": signer.model_dump(include={"kind", "account", "vault", "bundler_url"}),
            "factory": world.factory_address,
            # the batch-settlement contracts and the /v2/batch server (receiver, authorizer, delay)
            "batch": dataclasses.asdict(world.batch) if world.batch else None,
            "routes": [
                {
                    "method": r.method,
                    "url": r.url,
                    "x402_version": r.version,
                    "price_atomic": str(r.price_atomic),
                    # exact / upto (a maximum), and the transfer method when not EIP-3009's
                    "scheme": r.accepts[0].scheme if r.accepts else None,
                    "transfer_method": r.accepts[0].transfer_method if r.accepts else None,
                    # the server declares payment-identifier and answers a repeated id from cache
                    "payment_identifier": r.payment_identifier,
                    # the server declares sign-in-with-x: who paid signs in instead of paying again
                    "sign_in": r.sign_in,
                }
                for r in world.routes
            ],
        }
        print(json.dumps(ready), flush=True)
        stop.wait()
        print(json.dumps({"stopping": True}), file=sys.stderr, flush=True)
    return 0
