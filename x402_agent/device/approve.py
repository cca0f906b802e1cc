"""Enroll a device and approve policies on it: the two things only a person with the device
can do. Shared by the CLI and by local-world provisioning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..approval import Enrollment, PolicyApproval, approval_message
from ..policy import Policy
from ..policy_store import PolicyStore
from .hwi import HardwareDevice

# Anchors an approved policy on the smart account: (policy, sign_line) -> transaction or None.
Anchor = Callable[[Policy, Callable[[str], str]], object]
ApprovalMethod = Literal["bitcoin_message", "eip712"]


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
    path = store.enrollment().path

    def sign_line(line: str) -> str:
        return device.sign_message(line, path)

    anchored = None if anchor is None else (lambda approved: anchor(approved, sign_line))
    return sign_and_install(store, policy, "bitcoin_message", sign_line, anchored)


def sign_and_install(
    store: PolicyStore,
    policy: Policy,
    method: ApprovalMethod,
    sign: Callable[[str], str],
    anchor: Callable[[Policy], object] | None,
) -> PolicyApproval:
    """The approval both device paths share: ``sign`` the approval text (with the diff against
    the approved policy), anchor it on chain when asked, only then install it."""
    enrollment = store.enrollment()
    previous = store.approved()
    message = approval_message(policy, previous)
    approval = PolicyApproval(
        method=method,
        policy_version=policy.version,
        policy_digest=policy.digest,
        message=message,
        signature=sign(message),
        fingerprint=enrollment.fingerprint,
        path=enrollment.path,
        previous=previous,
    )
    if anchor is not None:
        store.verify_approved(policy, approval, anchored=False)
        anchor(policy)
    store.install_approved(policy, approval)
    return approval
