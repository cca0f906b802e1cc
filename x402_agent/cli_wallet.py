"""`x402-agent wallet ...`: the smart-account hot wallet (create, status, top-up, session key).

Rotating or revoking the session key is an owner action: the enrolled device signs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InvalidRequest
from .reasons import Reason

if TYPE_CHECKING:  # the parser registers this module's commands: it stays light to import
    from .home import AgentHome

DAY = 86_400


def register(sub: Any) -> None:
    wallet = sub.add_parser("wallet", help="the smart-account hot wallet and its session key")
    wallet_sub = wallet.add_subparsers(dest="wallet_command", required=True)
    create = wallet_sub.add_parser(
        "create", help="give this home a smart account owned by the enrolled device"
    )
    create.add_argument("--network", required=True, help="CAIP-2 network, e.g. eip155:84532")
    create.add_argument("--token", required=True, help="the token the account pays with")
    create.add_argument("--max-value", type=int, required=True, help="per payment, atomic units")
    create.add_argument(
        "--allowance",
        type=int,
        required=True,
        help="what the account may pull from its vault per period, atomic units",
    )
    create.add_argument("--period", type=int, default=DAY, help="allowance period, seconds")
    create.add_argument("--max-window", type=int, default=360, help="longest authorization validity, seconds")
    create.add_argument("--session-days", type=int, default=30)
    create.add_argument(
        "--top-up-to", type=int, default=0, help="refill the hot balance up to this (atomic units)"
    )
    create.add_argument(
        "--payee",
        action="append",
        default=[],
        metavar="0xADDRESS",
        help="pay only this payee, enforced by the account from its creation (repeat for more); "
        "without it the account pays any payee and only the policy restricts",
    )
    create.add_argument(
        "--bundler-url",
        help="ERC-4337 v0.7 bundler JSON-RPC URL; write its API key as ${X402_AGENT_BUNDLER_KEY} "
        "where the provider puts it (query or path) and export that variable: the home stores "
        "only the placeholder",
    )
    create.add_argument(
        "--relayer-keystore", help="keystore (same password) of a key with ETH for handleOps and owner calls"
    )
    deploy = wallet_sub.add_parser(
        "deploy-factory",
        help="deploy the account factory on a chain, once (the same address on every chain)",
    )
    deploy.add_argument("--network", help="CAIP-2 network (default: the home's chain)")
    deploy.add_argument("--rpc-url", help="JSON-RPC URL (default: the home's for that network)")
    deploy.add_argument(
        "--keystore",
        help="keystore of a key with ETH that pays the gas (password: $X402_AGENT_KEY_PASSWORD or "
        "the home's); default: the home's relayer key",
    )
    status = wallet_sub.add_parser("status", help="bounds, balances and what the vault still allows")
    status.add_argument("--json", action="store_true")
    topup = wallet_sub.add_parser("topup", help="refill the hot balance from the vault now")
    topup.add_argument("amount", type=int, nargs="?", help="atomic units (default: up to top-up-to)")
    key = wallet_sub.add_parser("session-key", help="rotate or revoke a session key (on the device)")
    key.add_argument("action", choices=("rotate", "revoke"))
    key.add_argument("--session-days", type=int, default=30, help="rotate: the new key's lifetime")
    key.add_argument("--key", metavar="0xADDRESS", help="revoke: the session key to revoke")
    key.add_argument(
        "--current",
        action="store_true",
        help="revoke: the key this home pays with (stops its payments); alone, names that key",
    )
    withdraw = wallet_sub.add_parser("withdraw", help="move funds out to an address (on the device)")
    withdraw.add_argument("amount", type=int, help="atomic units")
    withdraw.add_argument("--to", required=True)
    withdraw.add_argument("--source", choices=("vault", "account"), default="vault")
    bounds = wallet_sub.add_parser("bounds", help="change the on-chain bounds (on the device)")
    bounds.add_argument("--max-value", type=int, help="per payment, atomic units")
    bounds.add_argument("--max-window", type=int, help="longest authorization validity, seconds")
    bounds.add_argument("--allowance", type=int, help="what the vault releases per period")
    bounds.add_argument("--period", type=int, help="allowance period, seconds")


@contextmanager
def _device_signer(home: AgentHome) -> Iterator[Any]:
    """``sign_line`` for owner actions: the enrolled device, at its enrolled path."""
    from .cli_policy import known_devices, store_for
    from .device.hwi import HwiDevice

    enrollment = store_for(home, for_enrollment=True).enrollment()
    device = HwiDevice.find(enrollment.fingerprint, known_devices(home))
    try:
        yield lambda line: device.sign_message(line, enrollment.path)
    finally:
        device.close()


def run_wallet(args: argparse.Namespace) -> int:
    from .chain.wallet import open_hot_wallet
    from .home import open_home

    if args.wallet_command == "deploy-factory":
        from .cli_factory import deploy_factory_command

        return deploy_factory_command(args)
    home = open_home(args.home)
    if args.wallet_command == "create":
        return _create(home, args)
    wallet = open_hot_wallet(home)  # finishes locally a rotation the chain shows done
    if args.wallet_command == "status":
        from dataclasses import asdict

        from .chain.session_keys import pending_rotation

        pending = pending_rotation(home)
        status = {**wallet.status(), "pending_rotation": None if pending is None else asdict(pending)}
        if pending is not None:
            print(
                f"session key {pending.old_key} is still live: its rotation to {pending.new_key} "
                "has not landed; run `x402-agent wallet session-key rotate` to finish it",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            for name, value in status.items():
                print(f"{name:18} {value}")
        return 0
    if args.wallet_command == "topup":
        funds = wallet.funds()
        amount = (
            args.amount
            if args.amount is not None
            else min(funds.vault_available, max(wallet.top_up_to - funds.hot_balance, 0))
        )
        if amount <= 0:
            print("nothing to top up (hot balance at its target, or the vault allows nothing)")
            return 0
        result = wallet.top_up(amount)
        print(
            json.dumps(
                {
                    "topped_up": amount,
                    "via": result.via,
                    "transaction": result.transaction_hash,
                    "hot_balance": wallet.funds().hot_balance,
                }
            )
        )
        return 0
    if wallet.relayer is None:
        raise ConfigError(
            "owner actions need a relayer key with ETH (wallet.relayer_keystore)",
            reason=Reason.RELAYER_MISSING,
        )
    from .chain.session_keys import check_revocable, pending_rotation, rotate_session_key

    if args.wallet_command == "session-key" and args.action == "revoke":
        # Refused before the device is asked; naming a pending rotation's old key finishes it.
        check_revocable(home, wallet, _revoke_target(wallet, args), current=args.current)
    with _device_signer(home) as sign_line:
        rotating = args.wallet_command == "session-key" and args.action == "rotate"
        if rotating or pending_rotation(home) is not None:
            # Every owner action first finishes an interrupted rotation: the old key stays live
            # until it lands, so it comes before anything else the owner signs.
            print("confirm the session-key rotation on the device...", file=sys.stderr)
            done = rotate_session_key(
                home,
                wallet,
                sign_line,
                wallet.relayer,
                session_seconds=args.session_days * DAY if rotating else 30 * DAY,
                password=home.keystore_password(),
            )
            print(f"session key rotated: {done.old_key} revoked, {done.new_key} active")
            if rotating:
                return 0
            wallet.close()
            wallet = open_hot_wallet(home)  # the new key is the home's now
        if args.wallet_command in ("withdraw", "bounds"):
            return _owner_actions(home, wallet, args, sign_line)
        return _revoke(home, wallet, args, sign_line)


def _revoke_target(wallet: Any, args: argparse.Namespace) -> str:
    """The key ``revoke`` names: ``--key``, or with ``--current`` alone the home's own."""
    if args.key is not None:
        return str(args.key)
    if args.current:
        return str(wallet.session_address)
    raise InvalidRequest(
        "name the session key to revoke: --key 0xADDRESS (or --current for this home's own key)",
        reason=Reason.INVALID_ARGUMENTS,
    )


def _revoke(home: AgentHome, wallet: Any, args: argparse.Namespace, sign_line: Any) -> int:
    from .chain.session_keys import revoke_session_key

    key = _revoke_target(wallet, args)
    print("confirm the revocation on the device...", file=sys.stderr)
    if not revoke_session_key(home, wallet, key, sign_line, wallet.relayer, current=args.current):
        print(f"session key {key} is revoked already (or was never added)")
    elif key.lower() == wallet.session_address.lower():
        print(f"session key {key} revoked: this home can no longer pay")
    else:
        print(f"session key {key} revoked")
    return 0


def _create(home: AgentHome, args: argparse.Namespace) -> int:
    from eth_utils.address import is_address, to_checksum_address

    from .chain.setup import WalletBounds, connect, create_wallet
    from .cli_policy import store_for
    from .secret_url import check_no_clear_secret

    if args.bundler_url is not None:  # first: refused before anything else is asked or written
        check_no_clear_secret(args.bundler_url, "bundler URL")
    owner = store_for(home, for_enrollment=True).enrollment().eth_address
    rpc_url = home.config.rpc_urls.get(args.network)
    if rpc_url is None:
        raise ConfigError(
            f"no RPC URL for {args.network} in the home's rpc_urls", reason=Reason.CONFIG_INVALID
        )
    for payee in args.payee:
        if not is_address(payee):
            raise InvalidRequest(f"--payee {payee[:60]!r} is not an address", reason=Reason.INVALID_ADDRESS)
    bounds = WalletBounds(
        to_checksum_address(args.token),
        args.max_value,
        args.max_window,
        args.allowance,
        args.period,
        tuple(dict.fromkeys(to_checksum_address(payee) for payee in args.payee)),
    )
    home = create_wallet(
        home,
        connect(rpc_url),
        network=args.network,
        owner=owner,
        bounds=bounds,
        session_seconds=args.session_days * DAY,
        password=home.keystore_password(),
        bundler_url=args.bundler_url,
        relayer_keystore=args.relayer_keystore,
        top_up_to=args.top_up_to,
    )
    signer = home.config.signer
    assert signer.kind == "smart_account"
    print(
        json.dumps(
            {
                "account": signer.account,
                "vault": signer.vault,
                "owner": owner,
                "session_key": signer.setup.session_key,
                "payees": signer.setup.payees or "any (only the policy restricts)",
            },
            indent=2,
        )
    )
    print(
        "next: fund the vault with the token, send the account a little ETH for top-up gas,\n"
        "then approve a policy naming the account: x402-agent policy propose FILE && "
        "x402-agent policy approve"
    )
    return 0


def _owner_actions(home: AgentHome, wallet: Any, args: argparse.Namespace, sign_line: Any) -> int:
    """Withdraw or change bounds: each action is one line the device shows and signs."""
    from .chain.account import ACCOUNT_TAG, VAULT_TAG, run_owner_action

    wallet.ensure_deployed(wallet.relayer)
    actions: list[tuple[str, str, str, list[Any]]] = []  # (target, tag, action, args)
    if args.wallet_command == "withdraw":
        if args.source == "vault":
            actions.append((wallet.vault, VAULT_TAG, "withdraw", [args.to, args.amount]))
        else:
            actions.append((wallet.account, ACCOUNT_TAG, "withdraw", [wallet.token, args.to, args.amount]))
    else:
        bounds = wallet.bounds(fresh=True)
        if args.max_value is not None or args.max_window is not None:
            actions.append(
                (
                    wallet.account,
                    ACCOUNT_TAG,
                    "setPolicy",
                    [
                        bounds.max_value if args.max_value is None else args.max_value,
                        bounds.max_window if args.max_window is None else args.max_window,
                        bounds.payees_restricted,
                    ],
                )
            )
        if args.allowance is not None or args.period is not None:
            vault = wallet.vault_terms()
            actions.append(
                (
                    wallet.vault,
                    VAULT_TAG,
                    "setAllowance",
                    [
                        vault[0] if args.allowance is None else args.allowance,
                        vault[1] if args.period is None else args.period,
                    ],
                )
            )
        if not actions:
            raise ConfigError(
                "name a bound to change (--max-value, --max-window, --allowance, --period)",
                reason=Reason.INVALID_REQUEST,
            )
    for target, tag, action, action_args in actions:
        print(f"confirm {action} on the device...")
        receipt = run_owner_action(wallet.w3, target, action, action_args, sign_line, wallet.relayer, tag=tag)
        print(json.dumps({"action": action, "transaction": receipt["transactionHash"].hex()}))
    return 0
