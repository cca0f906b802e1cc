"""Enroll a device and approve policies on it: the two things only a person with the device
can do. Shared by the CLI and by local-world provisioning."""

from __future__ import annotations

from collections.abc import Callable

from ..approval import Enrollment, PolicyApproval, approval_message
from ..policy import Policy
from ..policy_store import PolicyStore
from .hwi import HardwareDevice

# Anchors an approved policy on the smart account: (policy, sign_line) -> transaction or None.
Anchor = Callable[[Policy, Callable[[str], str]], object]


def enroll(store: PolicyStore, device: HardwareDevice, path: str) -> Enrollment:
    enrollment = device.enroll(path)
    store.check_owner(enrollment)  # a smart account's home enrolls only its owner
    store.enroll(enrollment)
    return enrollment


def approve(
    store: PolicyStore, device: HardwareDevice, policy: Policy, anchor: Anchor | None = None
) -> PolicyApproval:
    """Have the device sign the policy's approval text (its diff against the approved policy
    shown), verify it; with ``anchor`` (a smart-account home) have the device also sign the
    owner action that anchors the policy on the account, relayed before anything is installed,
    so a rejected second screen or a failed relay leaves the home as it was. Then install."""
    enrollment = store.enrollment()
    previous = store.approved()
    message = approval_message(policy, previous)
    signature = device.sign_message(message, enrollment.path)
    approval = PolicyApproval(
        method="bitcoin_message",
        policy_version=policy.version,
        policy_digest=policy.digest,
        message=message,
        signature=signature,
        fingerprint=enrollment.fingerprint,
        path=enrollment.path,
        previous=previous,
    )
    if anchor is not None:
        store.verify_approved(policy, approval, anchored=False)
        anchor(policy, lambda line: device.sign_message(line, enrollment.path))
    store.install_approved(policy, approval)
    return approval
