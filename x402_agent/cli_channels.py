"""``x402-agent channels``: the batch-settlement channels this agent opened.

``list`` shows each channel's deposit, what our vouchers allow (signed), what the server
confirmed (charged), claimed on chain, and what came back (refunded, withdrawn). ``refund`` asks
a channel's server for its unused deposit. ``watch`` runs the channel watchdog: it reports a
claim above our vouchers and withdraws the channels of a server that stopped answering, after
the contract's delay (``--once``: one round, then exit).
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser is built at every start: no ledger import for it
    from .ledger.channels import ChannelRecord


def register(sub: Any) -> None:
    channels = sub.add_parser("channels", help="batch-settlement channels: list, refund, watch")
    actions = channels.add_subparsers(dest="channels_action", required=True)
    listed = actions.add_parser("list", help="every channel and what is in it")
    listed.add_argument("--json", action="store_true")
    refund = actions.add_parser("refund", help="ask the channel's server for the unused deposit")
    refund.add_argument("channel_id")
    refund.add_argument("--json", action="store_true")
    watch = actions.add_parser(
        "watch", help="run the channel watchdog (withdraws a silent server's channels)"
    )
    watch.add_argument("--once", action="store_true", help="one round, then exit")
    watch.add_argument("--interval", type=float, default=30.0, metavar="SECONDS")
    watch.add_argument(
        "--silence", type=float, default=60.0, metavar="SECONDS", help="a server silent this long is gone"
    )
    watch.add_argument("--json", action="store_true")


def _view(channel: ChannelRecord) -> dict[str, Any]:
    data = asdict(channel)
    data["state"] = str(channel.state)
    data["config"] = data.pop("config_json") and channel.config
    for name in ("deposit", "signed_total", "charged", "claimed", "refunded", "withdrawn"):
        data[name] = str(data[name])  # atomic units, exact in JSON
    data["unused"] = str(channel.unused)
    return data


def _print(channels: list[ChannelRecord], as_json: bool) -> None:
    from .cli import _print_json

    if as_json:
        _print_json([_view(c) for c in channels])
        return
    for c in channels:
        print(
            f"{c.channel_id} {c.state} deposit {c.deposit} signed {c.signed_total} charged {c.charged} "
            f"claimed {c.claimed} refunded {c.refunded} withdrawn {c.withdrawn} ({c.asset} on {c.network})"
        )


def run_channels(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, _open_agent

    agent = _open_agent(args)
    try:
        if args.channels_action == "list":
            _print(agent.channels(), args.json)
        elif args.channels_action == "refund":
            _print([agent.refund_channel(args.channel_id)], args.json)
        else:
            watchdog = agent.channel_watchdog(interval=args.interval, silence=args.silence)
            if args.once:
                _print(watchdog.round(), args.json)
            else:
                watchdog.start()
                threading.Event().wait()  # until interrupted (KeyboardInterrupt: exit 130)
        return EXIT_OK
    finally:
        agent.close()
