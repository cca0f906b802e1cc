"""How an owner action reaches the device: signer types shared by the chain and device layers
(this module imports nothing, so the device layer does not load web3 to name them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Signs a text as a Bitcoin message on the device (HWI): returns the base64 signature.
SignLine = Callable[[str], str]


@dataclass(frozen=True)
class TypedSigner:
    """Signs EIP-712 typed data on the device (trezorlib): ``sign(typed_data)`` returns the
    65-byte signature as 0x-hex."""

    sign: Callable[[dict[str, Any]], str]


OwnerSigner = SignLine | TypedSigner
