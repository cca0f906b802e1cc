"""A payment above the policy's approval threshold, confirmed on the enrolled hardware device:
the line its screen shows, and the check of the device's signature over that line.

The confirmation is asked of the device and not of the agent's terminal, because an agent can
write to its own standard input (a pseudo-terminal included) but cannot press the device's
button. The line names the amount, payee, network and host a person checks, a fresh payment
nonce (so that a signature from an earlier confirmation approves nothing else) and the policy
version. Pure: no device, HTTP or chain imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .approval import Enrollment, PolicyRejected, recover_bitcoin_message_key
from .errors import PolicyDenied
from .reasons import Reason

if TYPE_CHECKING:
    from .flow import ApprovalRequest

# A Bitcoin signed message with a one-byte length (approval.bitcoin_message_digest): the line
# stays within it, cutting the URL path, never the amount, payee, network or host.
MAX_MESSAGE_BYTES = 252
_CUT = "..."


def payment_message(request: ApprovalRequest, nonce: str) -> str:
    """E.g. ``x402-agent pay 0.01 USDC to 0xAbC...123 on eip155:84532 for GET
    api.example.com/v2/report, payment 3f9a1c2e0b7d, policy v3``. The query string is left
    out: it may carry credentials, and the line is printed for the person too."""
    parts = urlsplit(request.url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port is not None else "")
    head = (
        f"x402-agent pay {request.price} to {request.pay_to} on {request.network} for {request.method} {host}"
    )
    tail = f", payment {nonce}, policy v{request.policy_version}"
    room = MAX_MESSAGE_BYTES - len(head.encode()) - len(tail.encode())
    if room < 0:
        raise PolicyDenied(
            f"paying {request.price} needs a confirmation on the device, and the "
            f"host {host[:60]!r}... is too long for its screen; nothing was paid",
            reason=Reason.APPROVAL_REQUIRED,
        )
    path = parts.path or "/"
    if len(path.encode()) > room:
        path = path.encode()[: max(room - len(_CUT), 0)].decode(errors="ignore") + _CUT[:room]
    return head + path + tail


def check_payment_signature(message: str, signature: str, enrollment: Enrollment) -> None:
    """Raise PolicyDenied (``approval_unverified``) unless the enrolled device key signed
    exactly ``message``: whatever answered at the device's path (another device, a simulator
    the agent started) cannot approve a payment."""
    try:
        signer = recover_bitcoin_message_key(message, signature)
    except PolicyRejected as exc:
        raise PolicyDenied(
            f"the device's confirmation is not a valid signature ({exc.message}); nothing was paid",
            reason=Reason.APPROVAL_UNVERIFIED,
        ) from exc
    if signer != enrollment.pubkey:
        raise PolicyDenied(
            "the payment was confirmed with another key than the enrolled "
            f"device's ({enrollment.fingerprint} at {enrollment.path}); nothing "
            "was paid",
            reason=Reason.APPROVAL_UNVERIFIED,
        )
