"""``exact`` on EVM with an EIP-3009 TransferWithAuthorization (the x402 default).

The payer signs the token's own authorization for exactly the price; the facilitator submits
it and the token marks its nonce used. So the nonce is the authorization id, the chain's
``authorizationState(payer, nonce)`` tells whether it settled, and past ``validBefore`` an
unused one can never settle.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Mapping
from typing import Any

from eth_utils.crypto import keccak
from x402.schemas import SettleResponse

from ..challenge import Offer
from ..decision import Decision
from ..errors import PaymentMismatch, SettlementMismatch
from ..ledger import Ledger, PaymentRecord, PaymentState
from ..policy import AssetRule
from ..reasons import Reason
from ..settlement import TRANSFER_TOPIC, receipt_logs, topic_address, topics
from ..signer import PaymentSigner, SignedAuthorization, TokenDomain, TransferAuthorization
from ..steps import RpcCall
from .base import Authorized, Settlement, exact_settlement

AUTHORIZATION_USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()
_AUTHORIZATION_STATE_SELECTOR = "0xe94a0102"  # authorizationState(address,bytes32)


def _signed(authorized: Authorized) -> SignedAuthorization:
    signed = authorized.signed
    assert isinstance(signed, SignedAuthorization)
    return signed


def _authorized(signed: SignedAuthorization) -> Authorized:
    auth = signed.authorization
    return Authorized(auth.from_address, auth.nonce, auth.valid_after, auth.valid_before, auth.value, signed)


def token_domain_refusal(offer: Offer, asset: AssetRule) -> Decision | None:
    """The token's EIP-712 domain comes from the policy, never from the server; a server that
    names another domain is describing a different token."""
    name, version = offer.extra.get("name"), offer.extra.get("version")
    if (name is not None and name != asset.eip712_name) or (
        version is not None and version != asset.eip712_version
    ):
        return Decision(
            False,
            Reason.ASSET_DOMAIN_MISMATCH,
            f"server names token {name!r} v{version!r}, policy has "
            f"{asset.eip712_name!r} v{asset.eip712_version!r}",
        )
    return None


class ExactEip3009:
    scheme = "exact"
    family = "eip155"
    transfer_method = "eip3009"

    def check_offer(self, offer: Offer, asset: AssetRule) -> Decision | None:
        return token_domain_refusal(offer, asset)

    def refusal_for(self, signer: object) -> Decision | None:
        # Signing an EIP-3009 authorization is what makes a payer a PaymentSigner: every one can.
        return None

    def maximum(self, offer: Offer) -> int:
        return offer.amount

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
    ) -> Generator[RpcCall, Any, Authorized]:
        assert offer.chain_id is not None
        wanted = TransferAuthorization(
            token=TokenDomain(asset.eip712_name, asset.eip712_version, offer.chain_id, offer.asset),
            from_address=signer.address,
            to=offer.pay_to,
            value=offer.amount,
            # Valid at once, as the SDK's own client signs it: a bound in the past only breaks
            # when the chain's latest block is older than it (an idle chain); validBefore bounds
            # the life.
            valid_after=0,
            valid_before=now + window,
            nonce="0x" + secrets.token_hex(32),
        )
        signed = signer.sign_authorization(wanted)
        if signed.authorization != wanted:
            raise PaymentMismatch(
                "the signer signed something other than the chosen offer",
                reason=Reason.SIGNED_PAYMENT_MISMATCH,
            )
        return _authorized(signed)
        yield  # a generator: signing needs no chain step here

    def payload(self, authorized: Authorized) -> dict[str, Any]:
        signed = _signed(authorized)
        auth = signed.authorization
        return {
            "signature": signed.signature,
            "authorization": {
                "from": auth.from_address,
                "to": auth.to,
                "value": str(auth.value),
                "validAfter": str(auth.valid_after),
                "validBefore": str(auth.valid_before),
                "nonce": auth.nonce,
            },
        }

    def payload_mismatches(self, payload: Mapping[str, Any], offer: Offer) -> list[str]:
        auth = payload.get("authorization", {})
        return [
            name
            for name, got, want in (
                ("to", str(auth.get("to", "")).lower(), offer.pay_to.lower()),
                ("value", auth.get("value"), str(offer.amount)),
            )
            if got != want
        ]

    def settlement(self, response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
        return exact_settlement(response, authorized, network)

    def check_receipt(self, receipt: Mapping[str, Any], authorized: Authorized, pay_to: str) -> int:
        """The receipt must show the token's AuthorizationUsed for our nonce and one Transfer of
        exactly the price to ``pay_to``."""
        auth = _signed(authorized).authorization
        logs = receipt_logs(receipt, auth.token.verifying_contract)
        payer = topic_address(auth.from_address)
        used = [log for log in logs if topics(log) == [AUTHORIZATION_USED_TOPIC, payer, auth.nonce.lower()]]
        transfers = [
            log
            for log in logs
            if topics(log) == [TRANSFER_TOPIC, payer, topic_address(pay_to)]
            and int(log.get("data", "0x0"), 16) == auth.value
        ]
        if len(used) != 1 or len(transfers) != 1:
            raise SettlementMismatch(
                "the settlement transaction does not use our authorization for exactly the price",
                reason=Reason.SETTLEMENT_NOT_OURS,
                tx=receipt.get("transactionHash"),
                authorization_used=len(used),
                matching_transfers=len(transfers),
            )
        return auth.value

    def settled_on_chain(self, rpc: str, record: PaymentRecord) -> Generator[RpcCall, Any, int | None]:
        assert record.payer is not None and record.nonce is not None
        data = (
            _AUTHORIZATION_STATE_SELECTOR
            + record.payer.lower().removeprefix("0x").rjust(64, "0")
            + record.nonce.lower().removeprefix("0x")
        )
        result = yield RpcCall(rpc, "eth_call", ({"to": record.asset, "data": data}, "latest"))
        return record.amount if int(result, 16) != 0 else None

    def corrective(
        self, headers: Mapping[str, str], authorized: Authorized, rpc: str | None
    ) -> Generator[RpcCall, Any, PaymentState | None]:
        return None  # nothing kept between payments to correct
        yield

    def restore(self, record: PaymentRecord, ledger: Ledger | None = None) -> Authorized:
        """What a sent row's columns say was signed (checked against the offer before it was
        sent); the signature itself travels in the recorded header, which is resent as is."""
        assert record.payer is not None and record.nonce is not None
        # The domain's name and version are not needed after signing (the checks of the
        # settlement use the token address, payer, value and nonce); the recorded requirement
        # still names them.
        auth = TransferAuthorization(
            token=TokenDomain("", "", int(record.network.split(":")[1]), record.asset),
            from_address=record.payer,
            to=record.pay_to,
            value=record.amount,
            valid_after=record.valid_after or 0,
            valid_before=record.valid_before or 0,
            nonce=record.nonce,
        )
        return _authorized(SignedAuthorization(auth, ""))
