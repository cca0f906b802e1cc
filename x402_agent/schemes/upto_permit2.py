"""``upto`` on EVM over Permit2: the payer permits the x402 upto proxy to move at most the
signed maximum to the payee, and only through the facilitator the witness names
(``extra.facilitatorAddress``); the server settles what was used, which may be 0 (then no
transaction: nothing moved, and the permit's nonce stays unused).

The maximum is what is reserved, capped and approved; the settled amount is what the server's
settle response states and the settlement transaction's Transfer shows; the ledger keeps both.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

from eth_utils.address import is_address
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.types import (
    ExactPermit2TokenPermissions,
    UptoPermit2Authorization,
    UptoPermit2Payload,
    UptoPermit2Witness,
)
from x402.schemas import SettleResponse

from ..challenge import Offer
from ..decision import Decision
from ..errors import SettlementMismatch
from ..ledger import PaymentRecord
from ..policy import AssetRule
from ..reasons import Reason
from ..settlement import check_settlement
from ..steps import RpcCall
from .base import Authorized, Settlement
from .permit2 import (
    Permit2Scheme,
    moved_with_nonce,
    nonce_used,
    permit_mismatches,
    signed_permit,
    transferred,
)


def upto_authorization(
    payer: str, token: str, maximum: int, pay_to: str, facilitator: str, nonce: int, deadline: int
) -> UptoPermit2Authorization:
    return UptoPermit2Authorization(
        from_address=payer,
        permitted=ExactPermit2TokenPermissions(token=token, amount=str(maximum)),
        spender=X402_UPTO_PERMIT2_PROXY_ADDRESS,
        nonce=str(nonce),
        deadline=str(deadline),
        witness=UptoPermit2Witness(to=pay_to, facilitator=facilitator, valid_after="0"),
    )


class UptoPermit2(Permit2Scheme):
    scheme = "upto"
    spender = X402_UPTO_PERMIT2_PROXY_ADDRESS

    def check_offer(self, offer: Offer, asset: AssetRule) -> Decision | None:
        facilitator = offer.extra.get("facilitatorAddress")
        if not isinstance(facilitator, str) or not is_address(facilitator):
            return Decision(
                False,
                Reason.UNSUPPORTED_SCHEME,
                f"an upto offer must name its facilitator (extra.facilitatorAddress), got {facilitator!r}",
            )
        return None

    def _authorization(self, offer: Offer, payer: str, nonce: int, deadline: int) -> Any:
        facilitator = str(offer.extra["facilitatorAddress"])
        return upto_authorization(
            payer, offer.asset, offer.amount, offer.pay_to, facilitator, nonce, deadline
        )

    def _restored(self, record: PaymentRecord, requirement: Mapping[str, Any]) -> Any:
        assert record.payer is not None and record.nonce is not None
        facilitator = str((requirement.get("extra") or {}).get("facilitatorAddress", ""))
        return upto_authorization(
            record.payer,
            record.asset,
            record.amount,
            record.pay_to,
            facilitator,
            int(record.nonce, 16),
            record.valid_before or 0,
        )

    def _payload_type(self) -> Any:
        return UptoPermit2Payload

    def payload_mismatches(self, payload: Mapping[str, Any], offer: Offer) -> list[str]:
        mismatched = permit_mismatches(payload, offer, self.spender)
        witness = payload.get("permit2Authorization", {}).get("witness", {})
        if (
            str(witness.get("facilitator", "")).lower()
            != str(offer.extra.get("facilitatorAddress", "")).lower()
        ):
            mismatched.append("witness.facilitator")
        return mismatched

    def settlement(self, response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
        maximum = authorized.maximum
        try:
            # Unstated, the server may have taken all it was allowed: count the maximum.
            amount = maximum if response.amount in (None, "") else int(str(response.amount))
        except ValueError:
            amount = -1
        problem = None if 0 <= amount <= maximum else f"amount {response.amount!r} is not within 0..{maximum}"
        tx = check_settlement(response, authorized.payer, network, problem, moved=amount != 0)
        return Settlement(tx, amount, response.model_dump(by_alias=True, exclude_none=True))

    def check_receipt(self, receipt: Mapping[str, Any], authorized: Authorized, pay_to: str) -> int:
        moved = transferred(receipt, signed_permit(authorized), pay_to)
        if moved > authorized.maximum:
            raise SettlementMismatch(
                f"the settlement moved {moved}, above the signed maximum {authorized.maximum}",
                reason=Reason.SETTLEMENT_NOT_OURS,
                tx=receipt.get("transactionHash"),
            )
        return moved

    def settled_on_chain(self, rpc: str, record: PaymentRecord) -> Generator[RpcCall, Any, int | None]:
        assert record.payer is not None and record.nonce is not None
        nonce = int(record.nonce, 16)
        if not (yield from nonce_used(rpc, record.payer, nonce)):
            return None  # unused (a settlement of 0 leaves it so): released past its deadline
        if record.settled_amount is not None:
            return record.settled_amount
        moved = yield from moved_with_nonce(rpc, record, self.spender, nonce)
        # Not found: count the maximum, never less than what may have moved.
        return record.amount if moved is None else moved
