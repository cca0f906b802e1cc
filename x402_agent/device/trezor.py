"""Trezor's own path (trezorlib): EIP-712 typed-data approval of a policy.

The device shows the typed data field by field (the approval line, the version, the digest)
instead of one signed-message string. The signature is verified like any approval
(``approval.verify_approval``, method ``eip712``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..approval import PolicyApproval, eip712_policy_typed_data
from ..policy import Policy
from ..policy_store import PolicyStore
from ..reasons import Reason
from .approve import sign_and_install
from .hwi import DeviceError
from .signers import TypedSigner


def sign_typed_data(typed_data: dict[str, Any], path: str, transport: str | None = None) -> str:
    """Sign EIP-712 typed data on a Trezor (``transport`` e.g. ``udp:127.0.0.1:21324``; None
    finds the device). Returns the 65-byte signature as 0x-hex."""
    from trezorlib import ethereum, tools
    from trezorlib.client import get_default_client, get_default_session
    from trezorlib.exceptions import Cancelled, TrezorException

    try:
        client = get_default_client("x402-agent", transport)
        session = get_default_session(client)
        # trezorlib 0.20's session decorator erases the parameter types for mypy.
        sign: Any = ethereum.sign_typed_data
        signed = sign(session, tools.parse_path(path), typed_data, metamask_v4_compat=True)
    except Cancelled as exc:
        raise DeviceError("signing: rejected on the device", reason=Reason.DEVICE_REJECTED) from exc
    except (TrezorException, OSError) as exc:
        raise DeviceError(
            f"signing: {type(exc).__name__}: {str(exc)[:200]}", reason=Reason.DEVICE_UNAVAILABLE
        ) from exc
    return "0x" + bytes(signed.signature).hex()


def owner_signer(path: str, transport: str | None = None) -> TypedSigner:
    """Signs owner actions on a Trezor as EIP-712 typed data: each argument of the action is a
    field the device shows (``chain.account.run_owner_action`` takes it as its signer)."""
    return TypedSigner(lambda typed_data: sign_typed_data(typed_data, path, transport))


def approve_typed(
    store: PolicyStore,
    policy: Policy,
    transport: str | None = None,
    anchor: Callable[[Policy], object] | None = None,
) -> PolicyApproval:
    """As ``approve.approve``, the text signed as EIP-712 typed data; ``anchor`` anchors the
    policy on a smart account (its own device signature) before anything is installed."""
    path = store.enrollment().path

    def sign(message: str) -> str:
        return sign_typed_data(eip712_policy_typed_data(policy, message), path, transport)

    return sign_and_install(store, policy, "eip712", sign, anchor)
