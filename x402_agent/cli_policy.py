"""`x402-agent device ...` and `x402-agent policy ...`: enrollment and device-approved policy.

None of these are reachable from the agent-facing tools (MCP, LangChain): only a person at the
CLI, with the device in hand, can change what the agent may spend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    from .approval import approval_message

    return approval_message(policy).split(": ", 1)[1].rsplit(", sha256:", 1)[0].split("; ")


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
            f"the device will show:\n  {approval_message(proposed)}\n"
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


def _show(store: PolicyStore) -> int:
    from .approval import PolicyRejected

    enrollment = store.enrollment()
    owner = _owner_lines(store, enrollment)
    try:
        policy = store.load()
    except PolicyRejected as exc:
        if exc.reason == Reason.ENROLLMENT_NOT_OWNER:
            print("\n".join(owner))  # the refusal itself follows on stderr
        raise
    print(f"policy v{policy.version} {policy.digest}")
    for line in _summary(policy):
        print(f"  {line}")
    print(f"approved by device {enrollment.fingerprint} ({enrollment.device_type}) at {enrollment.path}")
    print("\n".join(owner))
    return 0


def _approve(home: AgentHome, store: PolicyStore, typed: bool) -> int:
    from .approval import approval_message
    from .device.approve import approve
    from .device.hwi import HwiDevice

    proposed = store.proposed()
    device = HwiDevice.find(store.enrollment().fingerprint, known_devices(home))
    began = time.perf_counter()
    print(f"confirm on the device:\n  {approval_message(proposed)}", file=sys.stderr)
    try:
        if typed:
            from .device.trezor import approve_typed

            path = device.info.path
            device.close()  # trezorlib opens its own connection to the same device
            approve_typed(store, proposed, path)
        else:
            approve(store, device, proposed)
    finally:
        device.close()
    print(
        f"policy v{proposed.version} approved on the device in "
        f"{time.perf_counter() - began:.2f}s and installed"
    )
    return 0
