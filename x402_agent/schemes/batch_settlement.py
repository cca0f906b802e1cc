"""``batch-settlement`` on EVM: a channel deposit once, then a voucher per request.

The payer deposits into the x402 batch-settlement contract through its ERC-3009 deposit
collector (a ReceiveWithAuthorization to the collector; the channel id is bound into the
nonce), then signs, per request, a voucher for the channel's running total: the total the
server confirmed so far plus this request's price. The server claims vouchers later, in
batches; what it has not claimed comes back by a refund, or by a withdrawal after the
channel's delay when the server is gone (``x402_agent.channel_ops``).

What counts against the policy is each request's price (one ledger row per request, reserved
before its voucher is signed, as for any payment); the deposit is bounded by the asset's
``max_channel_deposit`` and tracked in the ledger's channel table with the highest total ever
signed, which never exceeds it. The wire format is the SDK's (its payload dataclasses and
EIP-712 types); the signing is ours, through the payer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from eth_utils.address import is_address, to_checksum_address
from x402.schemas import SettleResponse

from ..challenge import Offer
from ..decision import Decision
from ..errors import PolicyDenied, SettlementMismatch
from ..ledger import Ledger, PaymentRecord, PaymentState
from ..policy import AssetRule
from ..reasons import Reason
from ..settlement import TRANSFER_TOPIC, check_settlement, receipt_logs, topic_address, topics
from ..signer import PaymentSigner, provides
from ..steps import RpcCall
from .base import Authorized, Settlement
from .exact_eip3009 import token_domain_refusal

if TYPE_CHECKING:
    from ..ledger.channels import ChannelTable

_CHANNELS_SELECTOR = "0x7a7ebd7b"  # channels(bytes32) -> (uint128 balance, uint128 totalClaimed)
_ZERO_SALT = "0x" + "00" * 32  # the SDK client's default: one channel per payer, payee, token
_NO_CHANNELS = (
    "this payer cannot sign channel vouchers: the smart-account wallet cannot open payment "
    "channels; a plain-key home can"
)


@runtime_checkable
class TypedDataSigner(Protocol):
    """A payer that signs any EIP-712 message (a plain key): vouchers and the deposit's
    ReceiveWithAuthorization are not token transfers the other signer paths know."""

    def sign_typed_data(self, typed_data: dict[str, Any]) -> str: ...


@dataclass(frozen=True)
class ChannelPayment:
    """What one request signed: its voucher, and the deposit when it opened the channel."""

    channel_id: str
    chain_id: int
    total: int  # the voucher's running total (maxClaimableAmount)
    price: int
    deposit: int
    payload: dict[str, Any]  # the SDK's DepositPayload / VoucherPayload, as a dict
    channels: ChannelTable | None  # where the server's confirmation is recorded (None: restored)


def _channel(authorized: Authorized) -> ChannelPayment:
    signed = authorized.signed
    assert isinstance(signed, ChannelPayment)
    return signed


def channel_config(offer: Offer, payer: str) -> Any:
    """The SDK's ChannelConfig for paying ``offer`` from ``payer`` (the payer authorizes its
    own vouchers)."""
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

    return ChannelConfig(
        payer=to_checksum_address(payer),
        payer_authorizer=to_checksum_address(payer),
        receiver=to_checksum_address(offer.pay_to),
        receiver_authorizer=to_checksum_address(str(offer.extra["receiverAuthorizer"])),
        token=to_checksum_address(offer.asset),
        withdraw_delay=int(offer.extra["withdrawDelay"]),
        salt=_ZERO_SALT,
    )


def authorization_id(channel_id: str, total: int, record_id: str) -> str:
    """The ledger's authorization id of one request's voucher (unique per request)."""
    return f"{channel_id.lower()}:{total}:{record_id}"


def parse_authorization_id(value: str) -> tuple[str, int]:
    channel_id, total, _ = value.split(":")
    return channel_id, int(total)


def channel_call(rpc: str, channel_id: str) -> Generator[RpcCall, Any, tuple[int, int]]:
    """The chain's (balance, totalClaimed) of a channel."""
    from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

    data = _CHANNELS_SELECTOR + channel_id.lower().removeprefix("0x")
    result = yield RpcCall(rpc, "eth_call", ({"to": BATCH_SETTLEMENT_ADDRESS, "data": data}, "latest"))
    raw = bytes.fromhex(str(result).removeprefix("0x"))
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")


def sign_voucher(signer: TypedDataSigner, channel_id: str, total: int, chain_id: int) -> Any:
    from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
    from x402.mechanisms.evm.batch_settlement.types import VoucherFields
    from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

    typed = {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, **VOUCHER_TYPES},
        "primaryType": "Voucher",
        "domain": get_batch_settlement_eip712_domain(chain_id),
        "message": {"channelId": channel_id, "maxClaimableAmount": total},
    }
    return VoucherFields(channel_id, str(total), signer.sign_typed_data(typed))


_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _deposit(
    signer: TypedDataSigner, offer: Offer, asset: AssetRule, channel_id: str, amount: int, valid_before: int
) -> Any:
    """The deposit's ReceiveWithAuthorization to the collector (its nonce binds the channel)."""
    from x402.mechanisms.evm.batch_settlement.constants import (
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        RECEIVE_AUTHORIZATION_TYPES,
    )
    from x402.mechanisms.evm.batch_settlement.encoding import build_erc3009_deposit_nonce
    from x402.mechanisms.evm.batch_settlement.types import (
        DepositAuthorization,
        DepositFields,
        Erc3009Authorization,
    )

    assert offer.chain_id is not None
    salt = "0x" + secrets.token_hex(32)
    typed = {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, **RECEIVE_AUTHORIZATION_TYPES},
        "primaryType": "ReceiveWithAuthorization",
        # The token's domain from the policy, never the server's (check_offer compares them).
        "domain": {
            "name": asset.eip712_name,
            "version": asset.eip712_version,
            "chainId": offer.chain_id,
            "verifyingContract": to_checksum_address(offer.asset),
        },
        "message": {
            "from": to_checksum_address(signer_address(signer)),
            "to": ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            "value": amount,
            "validAfter": 0,
            "validBefore": valid_before,
            "nonce": build_erc3009_deposit_nonce(channel_id, salt),
        },
    }
    signature = signer.sign_typed_data(typed)
    return DepositFields(
        amount=str(amount),
        authorization=DepositAuthorization(
            erc3009_authorization=Erc3009Authorization("0", str(valid_before), salt, signature)
        ),
    )


def signer_address(signer: object) -> str:
    address = getattr(signer, "address", None)
    assert isinstance(address, str)
    return address


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _our_voucher(vouchers: object, paid: ChannelPayment, payer: str, stated: int) -> bool:
    """The server holds a voucher we signed for at least ``stated`` (so it may claim that)."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
    from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

    if not isinstance(vouchers, dict):
        return False
    signed, signature = _int(vouchers.get("signedMaxClaimable")), vouchers.get("signature")
    if signed is None or signed < stated or not isinstance(signature, str):
        return False
    message = encode_typed_data(
        get_batch_settlement_eip712_domain(paid.chain_id),
        VOUCHER_TYPES,
        {"channelId": paid.channel_id, "maxClaimableAmount": signed},
    )
    try:
        recovered = Account.recover_message(message, signature=bytes.fromhex(signature.removeprefix("0x")))
    except ValueError:
        return False
    return str(recovered).lower() == payer.lower()


def _deposit_never_lands(ledger: Any, payment_id: str | None) -> bool:
    """Whether the deposit a channel was opened with can never land: its request's row was
    released (nothing signed ever left a reserved row; a sent one is released only once
    expired unused). In flight otherwise: no second deposit is signed meanwhile."""
    from ..errors import PaymentInFlight

    row = ledger.get(payment_id) if payment_id else None
    if row is None or row.state is PaymentState.RELEASED:
        return True
    if row.state is PaymentState.SETTLED:
        return False  # landed: the chain's balance will show it
    raise PaymentInFlight(
        "this channel's deposit is in flight; it is resolved from the chain at its expiry",
        payment_id=row.id,
        expires_at=row.valid_before,
    )


class BatchSettlement:
    scheme = "batch-settlement"
    family = "eip155"
    transfer_method = "eip3009"

    def check_offer(self, offer: Offer, asset: AssetRule) -> Decision | None:
        extra = offer.extra
        authorizer, delay = extra.get("receiverAuthorizer"), extra.get("withdrawDelay")
        if not isinstance(authorizer, str) or not is_address(authorizer) or int(authorizer, 16) == 0:
            return Decision(
                False, Reason.UNSUPPORTED_SCHEME, "a batch-settlement offer must name its receiverAuthorizer"
            )
        if not isinstance(delay, int) or isinstance(delay, bool) or not 900 <= delay <= 2_592_000:
            return Decision(False, Reason.UNSUPPORTED_SCHEME, f"withdrawDelay {delay!r} is out of range")
        domain = token_domain_refusal(offer, asset)
        if domain is not None:
            return domain
        deposit = asset.max_channel_deposit or 0
        minimum = _int(extra.get("minDeposit")) or offer.amount
        if deposit < max(minimum, offer.amount):
            return Decision(
                False,
                Reason.CHANNEL_DEPOSIT_NOT_ALLOWED,
                f"the channel needs a deposit of at least {max(minimum, offer.amount)}; the policy "
                f"allows {deposit} (max_channel_deposit)",
            )
        return None

    def refusal_for(self, signer: object) -> Decision | None:
        # Vouchers and the deposit are EIP-712 messages of the batch-settlement contract: only a
        # payer that signs any typed data (a plain key) can; the smart account signs token
        # transfers only, and its on-chain bounds know nothing of channels.
        if provides(signer, TypedDataSigner):
            return None
        return Decision(False, Reason.UNSUPPORTED_SCHEME, _NO_CHANNELS)

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
        ledger: Any,
        reservation: PaymentRecord,
    ) -> Generator[RpcCall, Any, Authorized]:
        from x402.mechanisms.evm.batch_settlement.types import DepositPayload, VoucherPayload
        from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

        from ..ledger.channels import ChannelRecord, ChannelState

        # Selection refuses such a payer first (refusal_for); this stays as defence in depth.
        if not isinstance(signer, TypedDataSigner):
            raise PolicyDenied(_NO_CHANNELS, reason=Reason.UNSUPPORTED_SCHEME)
        assert offer.chain_id is not None
        config = channel_config(offer, signer.address)
        channel_id = compute_channel_id(config, offer.network).lower()
        channels: ChannelTable = ledger.channels
        known = channels.get(channel_id)
        reopen = False
        if known is not None and known.state is ChannelState.OPENING and rpc is not None:
            # An earlier process signed a deposit and died before the server confirmed it.
            balance, _ = yield from channel_call(rpc, channel_id)
            # What the channel holds once its last deposit landed (earlier ones may have been
            # refunded or withdrawn down to what was claimed).
            if balance >= known.deposit - known.refunded - known.withdrawn:
                channels.mark(channel_id, state=ChannelState.OPEN)
            else:
                reopen = _deposit_never_lands(ledger, known.deposit_payment)
        template = ChannelRecord(
            channel_id=channel_id,
            network=offer.network,
            asset=offer.asset,
            payer=signer.address,
            pay_to=offer.pay_to,
            url=reservation.url,
            config_json=json.dumps(config.to_dict(), sort_keys=True),
            deposit_payment=reservation.id,
        )
        # Recorded before signing: a crash after this never lets a later voucher exceed it.
        step = channels.next_voucher(template, offer.amount, asset.max_channel_deposit or 0, reopen=reopen)
        voucher = sign_voucher(signer, channel_id, step.total, offer.chain_id)
        payload: dict[str, Any]
        if step.deposit:
            deposit_payload = DepositPayload()
            deposit_payload.channel_config = config
            deposit_payload.voucher = voucher
            deposit_payload.deposit = _deposit(signer, offer, asset, channel_id, step.deposit, now + window)
            payload = deposit_payload.to_dict()
        else:
            voucher_payload = VoucherPayload()
            voucher_payload.channel_config = config
            voucher_payload.voucher = voucher
            payload = voucher_payload.to_dict()
        return Authorized(
            signer.address,
            authorization_id(channel_id, step.total, reservation.id),
            0,
            now + window,
            offer.amount,
            ChannelPayment(
                channel_id, offer.chain_id, step.total, offer.amount, step.deposit, payload, channels
            ),
        )

    def payload(self, authorized: Authorized) -> dict[str, Any]:
        return _channel(authorized).payload

    def payload_mismatches(self, payload: Mapping[str, Any], offer: Offer) -> list[str]:
        config = payload.get("channelConfig", {})
        return [
            name
            for name, got, want in (
                ("channelConfig.receiver", str(config.get("receiver", "")).lower(), offer.pay_to.lower()),
                ("channelConfig.token", str(config.get("token", "")).lower(), offer.asset.lower()),
                (
                    "channelConfig.receiverAuthorizer",
                    str(config.get("receiverAuthorizer", "")).lower(),
                    str(offer.extra.get("receiverAuthorizer", "")).lower(),
                ),
            )
            if got != want
        ]

    def settlement(self, response: SettleResponse, authorized: Authorized, network: str) -> Settlement:
        """The server's answer must confirm this voucher: what it charged for the request at
        most its price, and its running total at most our voucher's (a claim above what we
        signed is refused and reported). A deposit names its transaction; a voucher none."""
        paid = _channel(authorized)
        extra = response.extra or {}
        state = extra.get("channelState")
        charged = _int(extra.get("chargedAmount"))
        cumulative = _int(state.get("chargedCumulativeAmount")) if isinstance(state, dict) else None
        if cumulative is not None and cumulative > paid.total:
            if paid.channels is not None:
                from ..ledger.channels import ChannelState

                paid.channels.mark(paid.channel_id, state=ChannelState.DISPUTED)
            raise SettlementMismatch(
                f"the server's channel total {cumulative} is above our voucher's {paid.total}",
                reason=Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS,
                channel_id=paid.channel_id,
                claimed=str(cumulative),
                signed=str(paid.total),
            )
        problem = (
            None if charged is not None and charged <= paid.price else f"charged {charged!r} > {paid.price}"
        )
        tx = check_settlement(response, authorized.payer, network, problem, moved=bool(paid.deposit))
        if paid.channels is not None:
            # The server's total after this request: what it charged on top of the previous.
            total = cumulative if cumulative is not None else paid.total - paid.price + (charged or 0)
            record = paid.channels.confirm(paid.channel_id, total, tx or None)
            tx = tx or record.deposit_tx or ""
        assert charged is not None
        # A voucher moves nothing now: the deposit's transaction is the chain's proof that the
        # funds behind it are in the channel; the server claims them later.
        return Settlement(tx, charged, response.model_dump(by_alias=True, exclude_none=True))

    def check_receipt(self, receipt: Mapping[str, Any], authorized: Authorized, pay_to: str) -> int:
        """The deposit transaction backing this request must have moved the payer's tokens."""
        paid = _channel(authorized)
        token = str(paid.payload["channelConfig"]["token"])
        payer = topic_address(authorized.payer)
        moved = [
            log
            for log in receipt_logs(receipt, token)
            if topics(log)[:2] == [TRANSFER_TOPIC, payer] and int(log.get("data", "0x0"), 16) > 0
        ]
        if not moved:
            raise SettlementMismatch(
                "the channel's deposit transaction does not move the payer's tokens",
                reason=Reason.SETTLEMENT_NOT_OURS,
                tx=receipt.get("transactionHash"),
            )
        return authorized.maximum

    def settled_on_chain(self, rpc: str, record: PaymentRecord) -> Generator[RpcCall, Any, int | None]:
        """Settled once the chain shows the server claimed at least this voucher's total."""
        assert record.nonce is not None
        channel_id, total = parse_authorization_id(record.nonce)
        _, claimed = yield from channel_call(rpc, channel_id)
        return record.amount if claimed >= total else None

    def corrective(
        self, headers: Mapping[str, str], authorized: Authorized, rpc: str | None
    ) -> Generator[RpcCall, Any, PaymentState | None]:
        """The SDK server's corrective 402 states its running total for the channel (and the
        last voucher it holds). Followed when lower than ours, or proven: on chain (claimed at
        least that much) or by a voucher of ours for at least it, within what we signed. A
        total above every voucher we signed is refused and reported, and the channel disputed.
        This request's voucher was taken if the server's total covers it and no other row of
        ours accounts for its total (at most one voucher per total can be accepted); else it
        was refused."""
        from x402.http import PAYMENT_REQUIRED_HEADER, decode_payment_required_header
        from x402.mechanisms.evm.batch_settlement.errors import (
            ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
            ERR_CUMULATIVE_AMOUNT_MISMATCH,
        )
        from x402.schemas import PaymentRequired

        from ..ledger.channels import ChannelState

        paid = _channel(authorized)
        header = headers.get(PAYMENT_REQUIRED_HEADER) or headers.get(PAYMENT_REQUIRED_HEADER.lower())
        if paid.channels is None or not header:
            return None
        try:
            required = decode_payment_required_header(header)
        except ValueError:
            return None
        if not isinstance(required, PaymentRequired) or required.error not in (
            ERR_CUMULATIVE_AMOUNT_MISMATCH,
            ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
        ):
            return None
        extra = next((a.extra or {} for a in required.accepts if a.scheme == self.scheme), {})
        state, vouchers = extra.get("channelState"), extra.get("voucherState")
        stated = _int(state.get("chargedCumulativeAmount")) if isinstance(state, dict) else None
        channel = paid.channels.get(paid.channel_id)
        if stated is None or channel is None:
            return None
        if stated > channel.signed_total:
            paid.channels.mark(paid.channel_id, state=ChannelState.DISPUTED)
            raise SettlementMismatch(
                f"the server states a channel total of {stated}, above every voucher we signed "
                f"({channel.signed_total})",
                reason=Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS,
                channel_id=paid.channel_id,
                claimed=str(stated),
                signed=str(channel.signed_total),
            )
        proven = stated <= channel.charged or _our_voucher(vouchers, paid, authorized.payer, stated)
        if not proven and rpc is not None:
            _, claimed = yield from channel_call(rpc, paid.channel_id)
            proven = claimed >= stated
        if not proven:
            return None
        paid.channels.resync(paid.channel_id, stated)
        others = paid.channels.voucher_totals(paid.channel_id, exclude=authorized.authorization_id)
        taken = paid.total <= stated and paid.total not in others
        return PaymentState.SETTLED if taken else PaymentState.RELEASED

    def restore(self, record: PaymentRecord, ledger: Ledger | None = None) -> Authorized:
        """What a sent row carries (the payload is in its recorded header, resent as is)."""
        from x402.http import decode_payment_signature_header

        assert record.payer is not None and record.nonce is not None and record.payment_header
        channel_id, total = parse_authorization_id(record.nonce)
        payload = dict(decode_payment_signature_header(record.payment_header).payload)
        deposit = int((payload.get("deposit") or {}).get("amount", 0))
        return Authorized(
            record.payer,
            record.nonce,
            record.valid_after or 0,
            record.valid_before or 0,
            record.amount,
            ChannelPayment(
                channel_id,
                int(record.network.split(":")[1]),
                total,
                record.amount,
                deposit,
                payload,
                None if ledger is None else ledger.channels,
            ),
        )
