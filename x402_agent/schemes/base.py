"""What a payment scheme module offers the flow.

One module per (scheme, network family, transfer method), as the x402 SDK has one
``SchemeNetworkClient`` per mechanism and httpx one class per auth scheme. The flow drives every
module the same way: check the offer, reserve its maximum, authorize, build the payload, check
what leaves, check the settlement the server reports and the chain shows, and, for a payment in
flight, ask the chain whether it settled or restore it from its ledger row to resend it.

Where a module talks to the chain it is a generator of ``RpcCall`` steps, so both HTTP drivers
(sync and async) run it; it never does I/O itself.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from x402.schemas import SettleResponse

from ..challenge import Offer
from ..decision import Decision
from ..ledger import Ledger, PaymentRecord, PaymentState
from ..policy import AssetRule
from ..settlement import check_settlement
from ..signer import PaymentSigner
from ..steps import RpcCall, WalletCall


@dataclass(frozen=True)
class Authorized:
    """A signed payment, in the terms the flow and the ledger share across schemes."""

    payer: str  # whose funds move
    authorization_id: str  # what the chain marks used when it settles (EIP-3009: the nonce)
    valid_after: int
    valid_before: int  # expiry: past it the authorization can never settle
    maximum: int  # the most it can move, in atomic units
    signed: object  # the scheme's own signed object; only its module reads it


@dataclass(frozen=True)
class Settlement:
    """What the server's settlement header states, checked against what was signed."""

    transaction: str
    amount: int
    raw: dict[str, Any]


def exact_settlement(response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
    """An ``exact`` settlement: it moved exactly what was signed (an amount, if stated, says so)."""
    value = authorized.maximum
    amount_problem = (
        None
        if response.amount in (None, "", str(value))
        else f"amount {response.amount!r} differs from {value}"
    )
    tx = check_settlement(response, authorized.payer, network, amount_problem)
    return Settlement(tx, value, response.model_dump(by_alias=True, exclude_none=True))


class Scheme(Protocol):
    scheme: str  # x402 scheme name ("exact")
    family: str  # network namespace of CAIP-2 ("eip155")
    transfer_method: str  # the credential stored with each row ("eip3009")

    def check_offer(self, offer: Offer, asset: AssetRule) -> Decision | None:
        """None if this module can pay ``offer`` with ``asset``; else why not."""
        ...

    def refusal_for(self, signer: object) -> Decision | None:
        """None if ``signer`` can sign this module's payments, judged from its capabilities
        alone (no I/O); else why not. Asked before anything is reserved, topped up or signed,
        so that an offer this payer cannot pay falls back to the next one."""
        ...

    def maximum(self, offer: Offer) -> int:
        """What to reserve: the most paying ``offer`` can cost."""
        ...

    def authorize(
        self,
        offer: Offer,
        asset: AssetRule,
        signer: PaymentSigner,
        now: int,
        window: int,
        rpc: str | None,
        *,
        ledger: Ledger,
        reservation: PaymentRecord,
    ) -> Generator[RpcCall | WalletCall, Any, Authorized]:
        """Sign ``offer``, valid ``window`` seconds from ``now``; refuse what the signer changed.
        ``rpc`` is the offer's chain (None: not reachable here), for what must be read or done
        on chain before signing (Permit2: the payer's allowance). ``reservation`` is the ledger
        row already counting it; ``ledger`` keeps a scheme's own state (channels)."""
        ...

    def payload(self, authorized: Authorized) -> dict[str, Any]:
        """The scheme's inner payload of the payment header."""
        ...

    def payload_mismatches(self, payload: Mapping[str, Any], offer: Offer) -> list[str]:
        """Fields of a decoded outgoing payload that differ from ``offer``."""
        ...

    def settlement(self, response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
        """The server's settle response checked against ``authorized`` (SettlementMismatch)."""
        ...

    def check_receipt(self, receipt: Mapping[str, Any], authorized: Authorized, pay_to: str) -> int:
        """The amount the transaction receipt shows ``authorized`` moving to ``pay_to``
        (SettlementMismatch if it does not show it)."""
        ...

    def settled_on_chain(self, rpc: str, record: PaymentRecord) -> Generator[RpcCall, Any, int | None]:
        """The amount settled if the chain shows the row's authorization used, else None."""
        ...

    def corrective(
        self, headers: Mapping[str, str], authorized: Authorized, rpc: str | None
    ) -> Generator[RpcCall, Any, PaymentState | None]:
        """The server answered a sent payment with 402. None: nothing to correct. Else that
        answer corrected the scheme's own state (a channel's running total), so that paying
        again can succeed, and it proves what became of this payment: released (not taken,
        never will be) or settled (taken before; its answer was lost)."""
        ...

    def restore(self, record: PaymentRecord, ledger: Ledger | None = None) -> Authorized:
        """The authorization a sent row carries, to resend or check it (with ``ledger``: to
        resend it, so that the scheme's own state follows the answer)."""
        ...
