"""`x402-agent device ...` and `x402-agent policy ...`: enrollment and device-approved policy.

None of these are reachable from the agent-facing tools (MCP, LangChain): only a person at the
CLI, with the device in hand, can change what the agent may spend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .reasons import Reason

if TYPE_CHECKING:  # the parser registers this module's commands: it stays light to import
    from .approval import Enrollment
    from .home import AgentHome
    from .policy import Policy
    from .policy_store import PolicyStore


def register(sub: Any) -> None:
    device = sub.add_parser("device", help="hardware wallet: list, enroll, simulate")
    device_sub = device.add_subparsers(dest="device_command", required=True)
    device_sub.add_parser("list", help="devices HWI can reach (emulators included)")
    enroll = device_sub.add_parser("enroll", help="pin the device key that approves policies")
    enroll.add_argument("--fingerprint")
    enroll.add_argument("--path")
    enroll.add_argument(
        "--device-path",
        help="HWI path of a device the scan misses, e.g. a simulator on its own "
        "port (udp:127.0.0.1:PORT); the home remembers it",
    )
    enroll.add_argument("--device-type", default="trezor")
    simulate = device_sub.add_parser("simulate", help="run the (insecure) device simulator")
    simulate.add_argument(
        "--port",
        type=int,
        help="UDP port, debug link on the next (default 21324, the only one "
        "HWI's scan finds; 0 = a free pair); give the path it prints to "
        "`device enroll --device-path`",
    )
    simulate.add_argument(
        "--confirm",
        choices=("auto", "reject", "ask"),
        default="auto",
        help="approve everything, refuse everything, or ask here each time",
    )

    policy = sub.add_parser("policy", help="the spending policy and its approval")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    propose = policy_sub.add_parser("propose", help="validate FILE and show what changes")
    propose.add_argument("file", type=Path)
    approve = policy_sub.add_parser("approve", help="sign the proposed policy on the device")
    approve.add_argument(
        "--eip712", action="store_true", help="Trezor: sign EIP-712 typed data (fields shown one by one)"
    )
    tighten = policy_sub.add_parser("tighten", help="apply FILE if it only lowers limits")
    tighten.add_argument("file", type=Path)
    policy_sub.add_parser("show", help="the effective policy and its approval")
    verify = policy_sub.add_parser("verify", help="check the approval (exit 1 if invalid)")
    verify.add_argument("file", type=Path, nargs="?", help="a policy file with FILE.approval.json beside it")
    policy_sub.add_parser("schema", help="print the policy JSON schema")


def known_devices(home: AgentHome) -> list[tuple[str, str]]:
    """The device location the home recorded, tried before HWI's scan."""
    device = home.config.device
    return [(device.type, device.path)] if device is not None else []


def store_for(home: AgentHome, *, for_enrollment: bool = False) -> PolicyStore:
    """The home's policy store. Enrolling a device needs no payer yet (a new home gets its
    wallet after the device that owns it): only then is the account not pinned (a smart
    account's owner still is: only it may be enrolled)."""
    from .policy_store import Expectations, PolicyStore, expectations

    if for_enrollment:
        owner = expectations(home).owner if home.config.signer.kind == "smart_account" else None
        return PolicyStore(home.root, Expectations(account=None, chain_id=home.config.chain_id, owner=owner))
    return PolicyStore(home.root, expectations(home))


def run_device(args: argparse.Namespace) -> int:
    from .device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice, list_devices
    from .home import DeviceLocation, open_home, record_device

    if args.device_command == "list":
        try:
            known = known_devices(open_home(args.home))
        except ConfigError:
            known = []  # no home here: the scan alone
        for info in list_devices(known):
            state = f" ERROR {info.error}" if info.error else ""
            print(
                f"{info.device_type:10} {info.fingerprint or '-':9} {info.model or '-':20} {info.path}{state}"
            )
        return 0
    if args.device_command == "simulate":
        from .device.simulator import DEFAULT_PORT, run_simulator

        port = DEFAULT_PORT if args.port is None else args.port
        if args.confirm == "ask":
            # HWI presses "yes" on emulators' debug link by itself: ignore it, ask the person.
            return run_simulator(port=port, confirm="wait", honor_debuglink=False, interactive=True)
        return run_simulator(port=port, confirm=args.confirm)
    from .device.approve import enroll

    home = open_home(args.home)
    if args.device_path:
        home = record_device(home, DeviceLocation(type=args.device_type, path=args.device_path))
    device = HwiDevice.find(args.fingerprint, known_devices(home))
    try:
        print("confirm the address on the device...", file=sys.stderr)
        enrollment = enroll(store_for(home, for_enrollment=True), device, args.path or DEFAULT_APPROVAL_PATH)
    finally:
        device.close()
    print(json.dumps(enrollment.model_dump(), indent=2))
    return 0


def _summary(policy: Policy) -> list[str]:
    """Every field the device shows for this policy (its approval text without head and digest)."""
    from .approval_text import approval_text

    return approval_text(policy).splitlines()[1:-1]


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def diff_lines(old: Policy | None, new: Policy) -> list[str]:
    """A readable diff of the canonical documents, one changed field per line."""
    from .policy_store import policy_json

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            items: dict[str, Any] = {}
            for key, sub in value.items():
                items.update(flat(sub, f"{prefix}.{key}" if prefix else str(key)))
            return items
        if isinstance(value, list):
            items = {}
            for index, sub in enumerate(value):
                items.update(flat(sub, f"{prefix}[{index}]"))
            return items
        return {prefix: value}

    before = flat(policy_json(old)) if old else {}
    after = flat(policy_json(new))
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, "<absent>") != after.get(key, "<absent>"):
            lines.append(f"  {key}: {before.get(key, '<absent>')} -> {after.get(key, '<absent>')}")
    return lines


def run_policy(args: argparse.Namespace) -> int:
    if args.policy_command == "schema":
        from .policy import json_schema

        print(json.dumps(json_schema(), indent=2, sort_keys=True))
        return 0
    from .approval import PolicyApproval, approval_message
    from .home import open_home

    home = open_home(args.home)
    store = store_for(home)
    if args.policy_command == "propose":
        try:
            current: Policy | None = store.load()
        except Exception:
            current = None
        proposed = store.propose(args.file.read_text(), str(args.file))
        print(f"proposed policy v{proposed.version} ({proposed.digest})")
        print("\n".join(diff_lines(current, proposed)) or "  (no change)")
        print(
            f"the device will show:\n{_indented(approval_message(proposed, store.approved()))}\n"
            "approve it with: x402-agent policy approve"
        )
        return 0
    if args.policy_command == "approve":
        return _approve(home, store, typed=args.eip712)
    if args.policy_command == "tighten":
        from .policy import parse_policy

        store.install_tightening(parse_policy(args.file.read_text(), str(args.file)))
        print("tightened; no device needed")
        return 0
    if args.policy_command == "verify" and args.file is not None:
        from .policy import load_policy

        policy = load_policy(args.file)
        approval = PolicyApproval.model_validate_json(
            args.file.with_name(args.file.name + ".approval.json").read_bytes()
        )
        store.verify_approved(policy, approval)
        print(f"ok: policy v{policy.version} approved by device {approval.fingerprint}")
        return 0
    if args.policy_command == "verify":
        policy = store.load()
        print(f"ok: policy v{policy.version} {policy.digest}")
        return 0
    return _show(store)


def _owner_lines(store: PolicyStore, enrollment: Enrollment) -> list[str]:
    """The enrolled key next to the account's owner, a mismatch flagged; on a plain-key home,
    that nothing on chain backs the enrollment."""
    enrolled = enrollment.eth_address
    owner = store.account_owner(enrollment)
    if owner is None:
        return [
            f"  enrolled key   {enrolled}",
            "  account owner  none on chain (plain-key home): only the home's device file "
            "records the device, so whoever can rewrite the home's files can replace it "
            "(weaker than a smart account, whose owner the chain records)",
        ]
    flag = "" if owner.owner == enrolled.lower() else "   MISMATCH: not the enrolled key"
    return [
        f"  enrolled key   {enrolled}",
        f"  account owner  {owner.owner or 'unknown'} ({owner.source}){flag}",
    ]


_PLAIN_ANCHOR = (
    "  chain anchor   none (plain-key home): only the home's state file guards against an older "
    "policy coming back, and whoever can rewrite the home's files can restore it (weaker than a "
    "smart account, which anchors the approved policy on chain)"
)


def _anchor_lines(store: PolicyStore, approved: Policy | None) -> list[str]:
    """The policy the smart account anchors on chain and whether the home's matches it."""
    if store.expect.anchor is None:
        return [_PLAIN_ANCHOR]
    anchor = store.anchor()
    if anchor is None:
        return ["  chain anchor   none yet (the account is not deployed): `policy approve` anchors it"]
    if not anchor.supported:
        return [
            "  chain anchor   none: the account's contract predates policy anchors; only the "
            "home's state file guards against rollback (weaker)"
        ]
    if anchor.version == 0:
        return [
            "  chain anchor   never set on this account: `policy approve` anchors the policy (it needs "
            "a relayer key); until then only the home's state file guards against rollback"
        ]
    matches = approved is not None and (anchor.version, anchor.digest) == (approved.version, approved.digest)
    flag = "matches the home's policy" if matches else "MISMATCH: not the home's policy"
    return [f"  chain anchor   v{anchor.version} {anchor.digest} ({flag})"]


def _show(store: PolicyStore) -> int:
    from .approval import PolicyApproval, PolicyRejected

    enrollment = store.enrollment()
    owner = _owner_lines(store, enrollment)
    try:
        policy, approved = store.load_verified()
    except PolicyRejected as exc:
        if exc.reason == Reason.ENROLLMENT_NOT_OWNER:
            print("\n".join(owner))  # the refusal itself follows on stderr
        elif exc.reason in (Reason.POLICY_SUPERSEDED_ON_CHAIN, Reason.POLICY_NOT_ANCHORED):
            print("\n".join(_anchor_lines(store, None)))  # what the chain holds; why, on stderr
        raise
    print(f"policy v{policy.version} {policy.digest}")
    for line in _summary(policy):
        print(f"  {line}")
    print(f"approved by device {enrollment.fingerprint} ({enrollment.device_type}) at {enrollment.path}")
    approval = PolicyApproval.model_validate_json(store.path("policy.approval.json").read_bytes())
    if approval.legacy:
        print("  approved on the old one-line screen (lists not shown): approve it again to see every field")
    print("\n".join(owner))
    print("\n".join(_anchor_lines(store, approved)))
    return 0


def _approve(home: AgentHome, store: PolicyStore, typed: bool) -> int:
    from .approval import approval_message
    from .device.approve import Anchor, approve
    from .device.hwi import HwiDevice

    proposed = store.proposed()
    enrollment = store.enrollment()
    device = HwiDevice.find(enrollment.fingerprint, known_devices(home))
    anchor: Anchor | None = None
    anchored: list[object] = []
    smart = home.config.signer.kind == "smart_account"
    on_chain = None
    if smart:
        from .chain.anchor import home_anchor

        on_chain = home_anchor(home)
    if on_chain is not None:

        def anchor(policy: Policy, sign_line: Callable[[str], str]) -> object:
            print(f"confirm on the device: anchor policy v{policy.version} on the account", file=sys.stderr)
            anchored.append(on_chain(policy, sign_line))
            return anchored[-1]

    began = time.perf_counter()
    text = approval_message(proposed, store.approved())
    print(f"confirm on the device:\n{_indented(text)}", file=sys.stderr)
    try:
        if typed:
            from .device.trezor import approve_typed

            path = device.info.path
            device.close()  # trezorlib opens its own connection to the same device
            bound = anchor
            approve_typed(
                store,
                proposed,
                path,
                None if bound is None else lambda policy: bound(policy, _hwi_signer(home, enrollment)),
            )
        else:
            approve(store, device, proposed, anchor)
    finally:
        device.close()
    print(
        f"policy v{proposed.version} approved on the device in "
        f"{time.perf_counter() - began:.2f}s and installed"
    )
    if smart and anchor is None:
        print(
            "not anchored on chain: the home has no relayer key (wallet.relayer_keystore) to send "
            "the owner action, or the account predates policy anchors; only the home's state "
            "file guards against an older policy coming back (weaker)"
        )
    elif anchor is None:
        print(
            "no chain anchor (plain-key home): only the home's state file guards against an older "
            "policy coming back; a smart-account home anchors it on chain"
        )
    else:
        print(
            f"anchored on chain: v{proposed.version} {proposed.digest} "
            f"(transaction {anchored[-1] or 'none: already anchored'})"
        )
    return 0


def _hwi_signer(home: AgentHome, enrollment: Enrollment) -> Callable[[str], str]:
    """Signs one owner-action line with the enrolled device through HWI (after trezorlib let go)."""
    from .device.hwi import HwiDevice

    def sign(line: str) -> str:
        device = HwiDevice.find(enrollment.fingerprint, known_devices(home))
        try:
            return device.sign_message(line, enrollment.path)
        finally:
            device.close()

    return sign
