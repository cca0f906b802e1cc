"""`x402-agent` command line: a thin adapter over the operations. Heavy imports stay lazy."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

from .deadline import DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS
from .reasons import Reason

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Receipts are read into memory to be printed: enough for any export, bounded all the same.
RECEIPTS_LIMIT_MAX = 100_000


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are typed (reason ``invalid_arguments``) like every other
    refusal, so that main() reports them in one way."""

    def error(self, message: str) -> NoReturn:
        from .errors import InvalidRequest

        raise InvalidRequest(f"{self.prog}: {message} (see --help)", reason=Reason.INVALID_ARGUMENTS)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="x402-agent", description="Pay for HTTP 402 resources within limits.")
    parser.add_argument("--home", type=Path, help="agent home (default $X402_AGENT_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    def request_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("url")
        p.add_argument("-X", "--method", default="GET")
        p.add_argument("-d", "--data", help="request body; @FILE reads a file")
        p.add_argument("-H", "--header", action="append", default=[], metavar="NAME: VALUE")
        p.add_argument("--max-price", help="ceiling for this request, e.g. 0.05 or '0.05 USDC'")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT_SECONDS,
            metavar="SECONDS",
            help="overall deadline of the request, connect to last "
            f"byte (default {DEFAULT_TIMEOUT_SECONDS:g}, at most "
            f"{MAX_TIMEOUT_SECONDS:g})",
        )
        session_args(p)

    def session_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--session", help="named session: its allowance and lifetime apply")
        p.add_argument("--session-profile", help="session rule of the policy (default 'default')")

    init = sub.add_parser(
        "init",
        help="create an agent home for a network (then: device enroll, "
        "wallet create, policy propose/approve)",
    )
    init.add_argument("--network", required=True, help="CAIP-2 id, e.g. eip155:84532 (Base Sepolia)")
    init.add_argument("--rpc-url", required=True)
    init.add_argument("--ledger", help="postgresql://... for a fleet sharing one budget")
    init.add_argument(
        "--new-key",
        action="store_true",
        help="also create a plain payer key (encrypted with $X402_AGENT_KEY_PASSWORD)",
    )
    fetch = sub.add_parser("fetch", help="fetch a URL, paying if it asks for payment")
    request_args(fetch)
    fetch.add_argument("--idempotency-key", help="never pay twice for the same key")
    quote = sub.add_parser("quote", help="what a URL costs and whether the policy allows it")
    request_args(quote)
    discover = sub.add_parser(
        "discover", help="find paid resources in a facilitator's Bazaar listing, with the policy's verdicts"
    )
    discover.add_argument("query", nargs="?", help="words every result must contain")
    discover.add_argument("--max-price", help="only resources at most this price, e.g. 0.01 or '0.01 USDC'")
    discover.add_argument("--network", help="only offers on this network, e.g. eip155:8453")
    discover.add_argument("--limit", type=int, default=20, help="how many results (1 to 50)")
    discover.add_argument("--facilitator", help="the facilitator's URL (default: the home's facilitator_url)")
    discover.add_argument("--json", action="store_true", help="machine-readable output")
    discover.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS")
    session_args(discover)
    receipts = sub.add_parser("receipts", help="list payment receipts")
    receipts.add_argument("--format", choices=("table", "json", "csv"), default="table")
    receipts.add_argument("--limit", type=int, default=50)
    receipts.add_argument(
        "--sign-ins",
        action="store_true",
        help="list accesses by sign-in-with-x instead (paid earlier, no payment of their own)",
    )
    budget = sub.add_parser(
        "budget",
        help="what remains: daily and session allowances, payments in flight, unknown outcomes, breaker",
    )
    session_args(budget)
    budget.add_argument("--json", action="store_true")
    breaker = sub.add_parser("breaker", help="the circuit breaker")
    breaker.add_argument("action", choices=("reset",))
    from .cli_channels import register as register_channels
    from .cli_policy import register
    from .cli_wallet import register as register_wallet

    register(sub)
    register_wallet(sub)
    register_channels(sub)
    mcp = sub.add_parser("mcp", help="serve the agent tools over MCP (stdio by default)")
    mcp.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio, or streamable HTTP (bearer token required)",
    )
    mcp.add_argument("--host", default="127.0.0.1", help="HTTP listen address (loopback)")
    mcp.add_argument("--port", type=int, default=8402, help="HTTP port")
    mcp.add_argument(
        "--token",
        help="HTTP bearer token (default $X402_AGENT_MCP_TOKEN, else generated and printed to stderr)",
    )
    mcp.add_argument("--session-profile", help="session rule of the policy for each connection")
    devnet = sub.add_parser(
        "devnet",
        help="run a local x402 world (anvil, USDC, bundler, paid API, "
        "device simulator) and an agent home for it, until Ctrl-C",
    )
    devnet.add_argument(
        "--wallet",
        choices=("smart-account", "key"),
        default="smart-account",
        help="pay from a device-owned smart account (default) or a plain key",
    )
    devnet.add_argument(
        "--schemes",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        help="comma-separated schemes the home's policy lets USDC be paid with, e.g. exact,upto "
        "(default: exact only)",
    )
    demo = sub.add_parser(
        "demo",
        help="the whole story in one command: local world, device, smart "
        "account, an MCP agent paying until refused, a device-approved change",
    )
    demo.add_argument(
        "--interactive", action="store_true", help="approve or reject each device screen yourself"
    )
    return parser


def _headers(pairs: Sequence[str]) -> dict[str, str]:
    from .errors import InvalidRequest

    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep:
            raise InvalidRequest(
                f"header must be 'Name: value', got {pair[:60]!r}", reason=Reason.INVALID_HEADER
            )
        name = name.strip()
        if name.lower() in (n.lower() for n in headers):
            raise InvalidRequest(f"header {name[:40]!r} is given twice", reason=Reason.INVALID_HEADER)
        headers[name] = value.strip()
    return headers


def _body(data: str | None) -> bytes | None:
    import os

    from .errors import InvalidRequest
    from .request_limits import MAX_BODY_BYTES

    if data is None:
        return None
    if not data.startswith("@"):
        return os.fsencode(data)  # the bytes given, even when they are not UTF-8
    name = data[1:]
    try:
        with open(name, "rb") as file:
            # One byte past the limit tells "too large" without reading a huge file (or
            # /dev/zero) into memory.
            body = file.read(MAX_BODY_BYTES + 1)
    except (OSError, ValueError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(
            f"cannot read the body file {name[:200]!r}: {problem}", reason=Reason.BODY_FILE_UNREADABLE
        ) from None
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(
            f"the body file {name[:200]!r} is larger than the limit of {MAX_BODY_BYTES} bytes",
            reason=Reason.BODY_TOO_LARGE,
            limit=MAX_BODY_BYTES,
        )
    return body


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request as the operations take it, refused here if it breaks any limit: before
    the agent opens (no ledger, no wallet, no network)."""
    from .deadline import check_timeout
    from .request_limits import check_request
    from .selection import PriceLimit

    options = {
        "method": args.method,
        "headers": _headers(args.header),
        "body": _body(args.data),
        "max_price": args.max_price,
        "session": args.session,
        "session_profile": args.session_profile,
        "idempotency_key": getattr(args, "idempotency_key", None),
        "timeout_seconds": check_timeout(args.timeout),
    }
    check_request(
        args.url,
        options["method"],
        options["headers"],
        options["body"],
        options["idempotency_key"],
        options["session"],
    )
    if args.max_price is not None:
        PriceLimit.parse(args.max_price)
    return options


def _device_approver(home: Path | None) -> Any:
    """The CLI's approver: the enrolled hardware device. Never the terminal: whoever drives
    the CLI (an agent too, through a pseudo-terminal) can type into it."""
    from .cli_policy import known_devices, store_for
    from .device.payment import DeviceApprover
    from .home import open_home

    def show(message: str) -> None:
        # stderr, so that stdout stays the resource (or --json output).
        print(f"confirm on the device: {message}", file=sys.stderr, flush=True)

    opened = open_home(home)
    return DeviceApprover(store_for(opened), known_devices(opened), show=show)


def _open_agent(args: argparse.Namespace) -> Any:
    from .operations import Agent
    from .request_limits import check_key

    session = getattr(args, "session", None)
    check_key(session, "session", Reason.INVALID_SESSION)
    # An empty profile would silently mean the default one.
    check_key(getattr(args, "session_profile", None), "session profile", Reason.INVALID_SESSION)
    agent = Agent.open(args.home, approver=_device_approver(args.home))
    if session is not None:
        agent.open_session(args.session_profile, session=session)
    return agent


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _fetch(args: argparse.Namespace) -> int:
    from .receipts import receipt

    options = _request_options(args)
    agent = _open_agent(args)
    try:
        outcome = agent.fetch(args.url, **options)
        # This process exits next: finish the on-chain check (one RPC) so that it can be told.
        outcome = agent.verified(outcome)
    finally:
        agent.close()
    paid = outcome.payment
    if args.json:
        _print_json(
            {
                "status": outcome.status,
                "content_type": outcome.content_type,
                **_json_body(outcome),
                "location": outcome.location,
                "replayed": outcome.replayed,
                "confirmed_on_chain": outcome.confirmed_on_chain,
                "receipt": receipt(paid) if paid else None,
                "sign_in": outcome.sign_in.to_receipt() if outcome.sign_in else None,
            }
        )
    else:
        if outcome.sign_in is not None:
            print(
                f"signed in (paid earlier, nothing paid now; sign-in {outcome.sign_in.id})", file=sys.stderr
            )
        if paid is not None:
            from .money import format_units

            verb = "already paid (idempotent replay, nothing paid again):" if outcome.replayed else "paid"
            print(
                f"{verb} {format_units(paid.amount, paid.decimals)} {paid.symbol} "
                f"({paid.state}, tx {paid.settlement_tx or '-'}, receipt {paid.id})",
                file=sys.stderr,
            )
        if outcome.location is not None:
            print(
                f"redirected after payment to another origin, not followed: {outcome.location}",
                file=sys.stderr,
            )
        with outcome.open_body() as body:  # a kept paid body: the whole file
            shutil.copyfileobj(body, sys.stdout.buffer)
        sys.stdout.flush()
    if paid is not None and paid.verification == "mismatch":
        print(
            f"warning: payment {paid.id}: the chain does not show the settlement the server "
            "claimed; it stays counted and the circuit breaker is open "
            "(x402-agent receipts --format json shows the evidence)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK if outcome.status < 400 else EXIT_FAILED


def _json_body(outcome: Any) -> dict[str, Any]:
    """The body for --json: whole when it is in memory; a kept paid body is referenced by its
    path and hash, with its first part inline."""
    from .agent_tools import MAX_BODY_BYTES

    stored = outcome.stored
    content = outcome.content or b""
    if stored is not None:
        content = content[:MAX_BODY_BYTES]
    try:
        body: dict[str, Any] = {"text": content.decode()}
    except UnicodeDecodeError:
        body = {"base64": base64.b64encode(content).decode()}
    if stored is not None:
        body.update(
            body_path=str(stored.path),
            body_sha256=stored.sha256,
            body_bytes=stored.size,
            body_complete=stored.complete,
            truncated=len(content) < stored.size,
        )
    return body


def _init(args: argparse.Namespace) -> int:
    import os

    from .errors import ConfigError
    from .home import PASSWORD_ENV, init_home
    from .paths import default_home

    root = (args.home or default_home()).expanduser()
    if args.new_key and PASSWORD_ENV not in os.environ:
        raise ConfigError(
            f"set {PASSWORD_ENV}: it encrypts the new key", reason=Reason.KEYSTORE_PASSWORD_MISSING
        )
    home = init_home(root, network=args.network, rpc_url=args.rpc_url, ledger=args.ledger)
    print(f"agent home {root} for {args.network}")
    if args.new_key:
        import secrets

        from .signer import write_keystore

        address = write_keystore(
            home.path(home.config.signer.keystore),
            "0x" + secrets.token_bytes(32).hex(),
            home.keystore_password(),
        )
        print(f"payer key {address} (encrypted in {home.config.signer.keystore}): fund it with USDC")
    print(
        "next: x402-agent device enroll; x402-agent wallet create ... (a smart account) or "
        "--new-key (a plain key); then x402-agent policy propose FILE && x402-agent policy approve"
    )
    return EXIT_OK


def _quote(args: argparse.Namespace) -> int:
    options = _request_options(args)
    agent = _open_agent(args)
    try:
        quote = agent.quote(args.url, **options)
    finally:
        agent.close()
    if args.json:
        _print_json(asdict(quote))
    elif not quote.payment_required:
        print(f"{quote.url}: no payment required (HTTP {quote.status})")
    else:
        verdict = "allowed" if quote.allowed else f"refused ({quote.reason})"
        print(f"{quote.url}: {verdict} under policy v{quote.policy_version}")
        if not quote.allowed:
            print(f"next step: {quote.reason.next_step}")
        for option in quote.options:
            mark = "*" if quote.chosen and option["index"] == quote.chosen["index"] else " "
            price = f"{option.get('price', option['amount'])} {option.get('symbol', option['asset'])}"
            print(f" {mark} {price:>16} on {option['network']} to {option['pay_to']}: {option['reason']}")
    return EXIT_OK if quote.allowed else EXIT_FAILED


def _discover(args: argparse.Namespace) -> int:
    from .agent_tools import LISTING_NOTICE

    agent = _open_agent(args)
    try:
        found = agent.discover(
            args.query,
            max_price=args.max_price,
            network=args.network,
            limit=args.limit,
            facilitator_url=args.facilitator,
            session=args.session,
            session_profile=args.session_profile,
            timeout_seconds=args.timeout,
        )
    finally:
        agent.close()
    if args.json:
        _print_json({"notice": LISTING_NOTICE, **asdict(found)})
        return EXIT_OK
    print(f"{found.facilitator_url}: {found.matched} of {found.examined} listed resources match")
    for item in found.items:
        price = item["price"] or f"{item['amount']} of {item['asset']}"
        print(f"  {item['verdict']:<19} {price:>16}  {item['method']} {item['resource']}")
        if item["description"]:
            print(f"  {'':<19} {'':>16}  listed as: {item['description']}")
    if found.skipped:
        print("malformed items skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(found.skipped.items())))
    return EXIT_OK


def _receipts(args: argparse.Namespace) -> int:
    from .operations import Agent
    from .receipts import render, render_sign_ins
    from .request_limits import check_limit

    check_limit(args.limit, RECEIPTS_LIMIT_MAX)
    agent = Agent.open(args.home)
    try:
        sign_ins = agent.sign_ins(args.limit)
        if args.sign_ins:
            print(render_sign_ins(sign_ins, args.format))
        else:
            print(render(agent.receipts(args.limit), args.format))
            if sign_ins and args.format == "table":
                print(render_sign_ins(sign_ins, "table"))
    finally:
        agent.close()
    return EXIT_OK


def _budget(args: argparse.Namespace) -> int:
    agent = _open_agent(args)
    try:
        view = agent.budget(args.session, args.session_profile, on_chain=True)
    finally:
        agent.close()
    if args.json:
        _print_json(view)
        return EXIT_OK
    print(
        f"policy v{view['policy_version']} ({view['policy_digest'][:19]}...), "
        f"day: {view['day']['kind']} {view['day']['timezone']}"
    )
    for a in view["assets"]:
        daily = (
            f"{a['daily_remaining_display']} of {_units(a['daily_max'], a)} left today"
            if a["daily_max"] is not None
            else "no daily limit"
        )
        print(
            f"  {a['symbol']:6} {a['network']:14} {daily}; per request "
            f"{_units(a['per_request_max'], a)}; in flight {_units(a['in_flight'], a)}; "
            f"unknown {_units(a['unknown'], a)} ({a['unknown_payments']})"
        )
    breaker = view["circuit_breaker"]
    state = "OPEN: paying stopped" if breaker["open"] else "closed"
    print(
        f"  circuit breaker {state} ({breaker['consecutive_failures']} consecutive failures, "
        f"threshold {breaker['threshold']})"
    )
    session = view.get("session")
    if session:
        for allowance in session["allowance"] or []:
            print(
                f"  session {session['id']}: {allowance['remaining_display']} "
                f"{allowance['symbol']} left of its allowance"
            )
    wallet = view.get("wallet")
    if wallet:
        token = {
            "decimals": next(
                (a["decimals"] for a in view["assets"] if a["asset"].lower() == wallet["token"].lower()), 0
            )
        }
        print(
            f"  smart account {wallet['account']} (on chain): {_units(wallet['hot_balance'], token)}"
            f" held, {_units(wallet['vault_available'], token)} more from the vault this period, "
            f"at most {_units(wallet['max_value'], token)} per payment"
        )
    for entitlement in view.get("entitlements", []):
        print(
            f"  paid access, signed in {entitlement['sign_ins']}x, for "
            f"{entitlement['expires_in_seconds']} s more: {entitlement['url']}"
        )
    return EXIT_OK


def _units(atomic: str, asset: dict[str, Any]) -> str:
    from .money import format_units

    return format_units(int(atomic), asset["decimals"])


def _breaker(args: argparse.Namespace) -> int:
    agent = _open_agent(args)
    try:
        agent.reset_breaker()
    finally:
        agent.close()
    print("circuit breaker reset")
    return EXIT_OK


def _policy(args: argparse.Namespace) -> int:
    from .cli_policy import run_policy

    return run_policy(args)


def _device(args: argparse.Namespace) -> int:
    from .cli_policy import run_device

    return run_device(args)


def _wallet(args: argparse.Namespace) -> int:
    from .cli_wallet import run_wallet

    return run_wallet(args)


def _channels(args: argparse.Namespace) -> int:
    from .cli_channels import run_channels

    return run_channels(args)


def _mcp(args: argparse.Namespace) -> int:
    # Over stdio the host's first requests are answered while the rest loads (mcp_start).
    front = None
    if args.transport == "stdio":
        from .mcp_start import StdioFront

        front = StdioFront.start(args.home)
    from .home import open_home
    from .mcp_server import serve
    from .policy_store import PolicyStore, expectations

    # Refuse to start (non-zero exit) without a device-approved policy; the payment code
    # itself loads lazily, at the first tool call, so that tools/list answers fast.
    home = open_home(args.home)
    PolicyStore(home.root, expectations(home)).load()
    try:
        return serve(
            args.home,
            transport=args.transport,
            host=args.host,
            port=args.port,
            token=args.token,
            session_profile=args.session_profile,
        )
    finally:
        if front is not None:
            front.finish()


def _devnet(args: argparse.Namespace) -> int:
    from .devnet.cli import run_devnet

    return run_devnet(args.home, args.wallet, args.schemes)


def _demo(args: argparse.Namespace) -> int:
    from .devnet.demo import run_demo

    return run_demo(interactive=args.interactive)


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import InvalidRequest

    try:
        args = _parser().parse_args(argv)
    except InvalidRequest as exc:  # the message starts with the (sub)command's name
        print(f"{exc.message} [{exc.reason}]", file=sys.stderr)
        print(f"next step: {exc.reason.next_step}", file=sys.stderr)
        return EXIT_USAGE
    from .errors import ConfigError, X402AgentError

    handler: dict[str, Callable[[argparse.Namespace], int]] = {
        "fetch": _fetch,
        "quote": _quote,
        "discover": _discover,
        "receipts": _receipts,
        "devnet": _devnet,
        "demo": _demo,
        "budget": _budget,
        "breaker": _breaker,
        "policy": _policy,
        "device": _device,
        "mcp": _mcp,
        "wallet": _wallet,
        "channels": _channels,
        "init": _init,
    }
    try:
        return handler[args.command](args)
    except X402AgentError as exc:
        from .approval import PolicyRejected  # eth_utils and the policy models: only if needed

        if getattr(args, "json", False):
            _print_json(exc.to_dict())
        else:
            print(f"x402-agent: {exc.message} [{exc.reason}]", file=sys.stderr)
            print(f"next step: {exc.reason.next_step}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError | InvalidRequest | PolicyRejected) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
