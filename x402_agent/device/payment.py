"""The CLI's approver: a payment above the policy's approval threshold is confirmed on the
enrolled hardware device, never by text on the agent's standard input.

The device shows the payment line (``payment_approval.payment_message``: amount, payee,
network, host, a fresh nonce, the policy version) and signs it when the person confirms; the
signature is checked against the enrolled key before the flow reserves or signs anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import PolicyDenied
from ..payment_approval import check_payment_signature, payment_message
from ..policy_store import PolicyStore
from ..reasons import Reason
from .hwi import DEFAULT_TIMEOUT_SECONDS, DeviceError, HwiDevice, Known

if TYPE_CHECKING:
    from ..flow import ApprovalRequest


class DeviceApprover:
    """Answers the flow's ApprovalCall: True when the enrolled device signed the payment line,
    False when the person rejected it on the device; raises PolicyDenied
    (``approval_required``) when no device can be asked or nobody answers in time."""

    def __init__(
        self,
        store: PolicyStore,
        known: Sequence[Known] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        show: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.known = tuple(known)
        self.timeout = timeout
        self.show = show  # tells the person what to look for on the device

    def __call__(self, request: ApprovalRequest) -> bool:
        enrollment = self.store.enrollment()
        message = payment_message(request, secrets.token_hex(6))
        try:
            device = HwiDevice.find(enrollment.fingerprint, self.known)
        except DeviceError as exc:
            raise self._unanswered(request, exc) from exc
        device.timeout = self.timeout
        try:
            if self.show is not None:
                self.show(message)
            signature = device.sign_message(message, enrollment.path)
        except DeviceError as exc:
            if exc.reason == Reason.DEVICE_REJECTED:
                return False
            raise self._unanswered(request, exc) from exc
        finally:
            device.close()
        check_payment_signature(message, signature, enrollment)
        return True

    @staticmethod
    def _unanswered(request: ApprovalRequest, exc: DeviceError) -> PolicyDenied:
        return PolicyDenied(
            f"paying {request.price} needs a confirmation on the enrolled "
            f"hardware device, which did not give one: {exc.message}; nothing "
            "was paid",
            reason=Reason.APPROVAL_REQUIRED,
            device=str(exc.reason),
        )
