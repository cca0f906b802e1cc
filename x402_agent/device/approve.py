"""Enroll a device and approve policies on it: the two things only a person with the device
can do. Shared by the CLI and by local-world provisioning."""

from __future__ import annotations

from ..approval import Enrollment, PolicyApproval, approval_message
from ..policy import Policy
from ..policy_store import PolicyStore
from .hwi import HardwareDevice


def enroll(store: PolicyStore, device: HardwareDevice, path: str) -> Enrollment:
    enrollment = device.enroll(path)
    store.check_owner(enrollment)  # a smart account's home enrolls only its owner
    store.enroll(enrollment)
    return enrollment


def approve(store: PolicyStore, device: HardwareDevice, policy: Policy) -> PolicyApproval:
    """Have the device sign the policy's approval line, verify it, install the policy."""
    enrollment = store.enrollment()
    message = approval_message(policy)
    signature = device.sign_message(message, enrollment.path)
    approval = PolicyApproval(
        method="bitcoin_message",
        policy_version=policy.version,
        policy_digest=policy.digest,
        message=message,
        signature=signature,
        fingerprint=enrollment.fingerprint,
        path=enrollment.path,
    )
    store.install_approved(policy, approval)
    return approval
