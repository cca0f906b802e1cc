"""``exact`` on EVM over Permit2: the payer permits the x402 exact proxy to move exactly the
price to the payee (the witness binds payee and validAfter). Shared steps: ``permit2``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from x402.mechanisms.evm.constants import X402_EXACT_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.types import (
    ExactPermit2Authorization,
    ExactPermit2Payload,
    ExactPermit2TokenPermissions,
    ExactPermit2Witness,
)
from x402.schemas import SettleResponse

from ..challenge import Offer
from ..errors import SettlementMismatch
from ..ledger import PaymentRecord
from ..reasons import Reason
from .base import Authorized, Settlement, exact_settlement
from .permit2 import Permit2Scheme, signed_permit, transferred


def exact_authorization(
    payer: str, token: str, amount: int, pay_to: str, nonce: int, deadline: int
) -> ExactPermit2Authorization:
    return ExactPermit2Authorization(
        from_address=payer,
        permitted=ExactPermit2TokenPermissions(token=token, amount=str(amount)),
        spender=X402_EXACT_PERMIT2_PROXY_ADDRESS,
        nonce=str(nonce),
        deadline=str(deadline),
        witness=ExactPermit2Witness(to=pay_to, valid_after="0"),
    )


class ExactPermit2(Permit2Scheme):
    scheme = "exact"
    spender = X402_EXACT_PERMIT2_PROXY_ADDRESS

    def _authorization(self, offer: Offer, payer: str, nonce: int, deadline: int) -> Any:
        return exact_authorization(payer, offer.asset, offer.amount, offer.pay_to, nonce, deadline)

    def _restored(self, record: PaymentRecord, requirement: Mapping[str, Any]) -> Any:
        assert record.payer is not None and record.nonce is not None
        return exact_authorization(
            record.payer,
            record.asset,
            record.amount,
            record.pay_to,
            int(record.nonce, 16),
            record.valid_before or 0,
        )

    def _payload_type(self) -> Any:
        return ExactPermit2Payload

    def settlement(self, response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
        return exact_settlement(response, authorized, network)

    def check_receipt(self, receipt: Mapping[str, Any], authorized: Authorized, pay_to: str) -> int:
        moved = transferred(receipt, signed_permit(authorized), pay_to)
        if moved != authorized.maximum:
            raise SettlementMismatch(
                f"the settlement moved {moved}, not the price {authorized.maximum}",
                reason=Reason.SETTLEMENT_NOT_OURS,
                tx=receipt.get("transactionHash"),
            )
        return moved
