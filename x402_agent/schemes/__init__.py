"""The scheme registry: which module pays an offer, and which one resolves a ledger row.

Modules are keyed by (x402 scheme, network family, transfer method). The transfer method of an
offer is its ``extra.assetTransferMethod``, defaulting to the scheme's default (the x402 spec:
EIP-3009 for ``exact`` on EVM); a row stores its method as its ``credential``.
"""

from __future__ import annotations

from ..challenge import Offer
from ..decision import Decision
from ..ledger import PaymentRecord
from ..reasons import Reason
from .base import Authorized, Scheme, Settlement
from .batch_settlement import BatchSettlement
from .exact_eip3009 import ExactEip3009
from .exact_permit2 import ExactPermit2
from .upto_permit2 import UptoPermit2

_MODULES: dict[tuple[str, str, str], Scheme] = {
    (module.scheme, module.family, module.transfer_method): module
    for module in (ExactEip3009(), ExactPermit2(), UptoPermit2(), BatchSettlement())
}
# The transfer method an offer means when it names none, per scheme (upto exists only over
# Permit2).
_DEFAULT_METHOD = {"exact": "eip3009", "upto": "permit2", "batch-settlement": "eip3009"}
# (scheme, transfer method) pairs some module pays, on some network family.
_KNOWN = {(scheme, method) for scheme, _, method in _MODULES}


def transfer_method(offer: Offer) -> object:
    """As the server wrote it (anything, in a hostile offer); the scheme's default if absent."""
    return offer.extra.get("assetTransferMethod", _DEFAULT_METHOD.get(offer.scheme))


def _family(offer: Offer) -> str | None:
    """The offer's network family; None for a network we cannot name (an unknown v1 name)."""
    if offer.chain_id is not None:
        return "eip155"
    namespace, colon, _ = offer.network.partition(":")
    # An EVM network whose chain id we cannot read is not one we can pay on.
    return namespace if colon and namespace != "eip155" else None


def resolve(offer: Offer) -> Scheme | Decision:
    """The module that pays ``offer``, or why none does."""
    method = transfer_method(offer)
    if not isinstance(method, str) or (offer.scheme, method) not in _KNOWN:
        return Decision(
            False, Reason.UNSUPPORTED_SCHEME, f"scheme {offer.scheme!r}/{method!r} is not supported"
        )
    module = _MODULES.get((offer.scheme, _family(offer) or "", method))
    if module is None:
        return Decision(False, Reason.UNKNOWN_NETWORK, f"network {offer.network!r} is not supported")
    return module


def for_record(record: PaymentRecord) -> Scheme:
    """The module that made a ledger row (rows are written only for networks it names)."""
    return _MODULES[(record.scheme, record.network.partition(":")[0], record.credential)]


__all__ = ["Authorized", "Scheme", "Settlement", "for_record", "resolve", "transfer_method"]
