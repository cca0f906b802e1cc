"""What happens to a batch-settlement channel after its requests: refund and timed withdrawal.

``refund_flow`` asks the channel's server for the unused deposit back (the SDK's cooperative
refund: a zero-charge voucher at the confirmed total, in a ``refund`` payload); the chain's
transfer to the payer is what counts as refunded. ``watch_flow`` is the watchdog's one round
over a channel: it checks what the server claimed on chain against the vouchers we signed, and
when the server stops answering it starts the contract's withdrawal (``initiateWithdraw``) and,
once the channel's delay has passed on chain, finishes it (``finalizeWithdraw``) from the payer's
own key. Both are generators of the flow's steps, run by the agent's drivers (the same guarded
HTTP and RPC paths as a payment).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .errors import ChainError, ConfigError, SettlementMismatch, UpstreamError
from .flow import HttpAnswer, HttpCall, Payer, Step
from .ledger.channels import ChannelRecord, ChannelState
from .reasons import Reason
from .schemes.batch_settlement import TypedDataSigner, channel_call, sign_voucher
from .settlement import TRANSFER_TOPIC, receipt_logs, topic_address, topics
from .signer import TransactionSender
from .steps import RpcCall

log = logging.getLogger(__name__)

_CONFIG = "(address,address,address,address,address,uint40,bytes32)"
_INITIATE = "0x" + keccak(text=f"initiateWithdraw({_CONFIG},uint128)").hex()[:8]
_FINALIZE = "0x" + keccak(text=f"finalizeWithdraw({_CONFIG})").hex()[:8]
_PENDING = "0x" + keccak(text="pendingWithdrawals(bytes32)").hex()[:8]
_WITHDRAW_GAS = 200_000
_RECEIPT_READS = 20
# A server that has not answered for this long, and does not answer now, is gone.
DEFAULT_SILENCE_SECONDS = 60.0


def _config_words(channel: ChannelRecord) -> str:
    from eth_abi.abi import encode

    c = channel.config
    values = [
        to_checksum_address(c[k])
        for k in ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token")
    ] + [int(c["withdrawDelay"]), bytes.fromhex(str(c["salt"]).removeprefix("0x"))]
    return encode([_CONFIG], [tuple(values)]).hex()


def _rpc(payer: Payer, channel: ChannelRecord) -> str:
    rpc = payer.rpc_urls.get(channel.network)
    if rpc is None:
        raise ConfigError(f"no RPC URL for {channel.network}", reason=Reason.CHAIN_UNAVAILABLE)
    return rpc


def _moved_to_payer(receipt: dict[str, Any], channel: ChannelRecord) -> int:
    """What the transaction moved to the payer in the channel's token."""
    wanted = topic_address(channel.payer)
    return sum(
        int(log.get("data", "0x0"), 16)
        for log in receipt_logs(receipt, channel.asset)
        if topics(log)[:1] == [TRANSFER_TOPIC] and topics(log)[2:3] == [wanted]
    )


def _receipt(rpc: str, tx: str) -> Generator[RpcCall, Any, dict[str, Any]]:
    for _ in range(_RECEIPT_READS):
        receipt = yield RpcCall(rpc, "eth_getTransactionReceipt", (tx,))
        if receipt is not None:
            return dict(receipt)
    raise ChainError(f"transaction {tx} is not mined yet", reason=Reason.CHAIN_UNAVAILABLE, tx=tx)


def _send(payer: Payer, rpc: str, data: str, chain_id: int) -> Generator[RpcCall, Any, dict[str, Any]]:
    """Send a call to the settlement contract from the payer's own key; its receipt."""
    from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

    signer = payer.signer
    if not isinstance(signer, TransactionSender):
        raise ConfigError("this payer cannot send transactions itself", reason=Reason.UNSUPPORTED_SCHEME)
    count = yield RpcCall(rpc, "eth_getTransactionCount", (signer.address, "pending"))
    gas_price = yield RpcCall(rpc, "eth_gasPrice", ())
    raw = signer.sign_transaction(
        {
            "to": BATCH_SETTLEMENT_ADDRESS,
            "data": data,
            "value": 0,
            "gas": _WITHDRAW_GAS,
            "gasPrice": int(gas_price, 16),
            "nonce": int(count, 16),
            "chainId": chain_id,
        }
    )
    tx = yield RpcCall(rpc, "eth_sendRawTransaction", (raw,))
    receipt = yield from _receipt(rpc, tx)
    if receipt.get("status") != "0x1":
        raise ChainError(f"channel transaction {tx} reverted", reason=Reason.CHAIN_UNAVAILABLE, tx=tx)
    return receipt


def over_claim(channel: ChannelRecord, claimed: int) -> SettlementMismatch:
    return SettlementMismatch(
        f"channel {channel.channel_id}: the server claimed {claimed} on chain, above the "
        f"{channel.signed_total} our vouchers allow",
        reason=Reason.CHANNEL_CLAIM_ABOVE_VOUCHERS,
        channel_id=channel.channel_id,
        claimed=str(claimed),
        signed=str(channel.signed_total),
    )


def check_claims(payer: Payer, channel: ChannelRecord) -> Generator[Step, Any, tuple[int, int]]:
    """The chain's (balance, claimed), the claim recorded in the ledger."""
    balance, claimed = yield from channel_call(_rpc(payer, channel), channel.channel_id)
    if claimed != channel.claimed:
        payer.gate.ledger.channels.mark(channel.channel_id, claimed=claimed)
    return balance, claimed


def refund_flow(payer: Payer, channel: ChannelRecord) -> Generator[Step, Any, ChannelRecord]:
    """Ask the channel's server to refund what is left of the deposit; returns the channel as
    the ledger has it afterwards (refunded: what the chain moved back to the payer)."""
    from x402.http import (
        PAYMENT_REQUIRED_HEADER,
        PAYMENT_SIGNATURE_HEADER,
        decode_payment_required_header,
        encode_payment_signature_header,
    )
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, RefundPayload
    from x402.schemas import PaymentPayload, PaymentRequired

    from .settlement import read_settlement_header

    signer = payer.signer
    if not isinstance(signer, TypedDataSigner):
        raise ConfigError("this payer cannot sign channel vouchers", reason=Reason.UNSUPPORTED_SCHEME)
    probe: HttpAnswer = yield HttpCall(httpx.Request("GET", channel.url))
    header = probe.headers.get(PAYMENT_REQUIRED_HEADER)
    required = decode_payment_required_header(header) if probe.status_code == 402 and header else None
    accepted = (
        next(
            (
                a
                for a in required.accepts
                if a.scheme == "batch-settlement"
                and a.pay_to.lower() == channel.pay_to.lower()
                and a.asset.lower() == channel.asset.lower()
            ),
            None,
        )
        if isinstance(required, PaymentRequired)
        else None
    )
    if accepted is None or not isinstance(required, PaymentRequired):
        raise UpstreamError(
            f"{channel.url} no longer offers this channel's batch-settlement",
            reason=Reason.CHANNEL_EXHAUSTED,
            channel_id=channel.channel_id,
        )
    chain_id = int(channel.network.split(":")[1])
    refund = RefundPayload()
    refund.channel_config = ChannelConfig.from_dict(channel.config)
    refund.voucher = sign_voucher(signer, channel.channel_id, channel.charged, chain_id)
    header_value = encode_payment_signature_header(
        PaymentPayload(
            x402_version=2, accepted=accepted, payload=refund.to_dict(), resource=required.resource
        )
    )
    answer: HttpAnswer = yield HttpCall(
        httpx.Request("GET", channel.url, headers={PAYMENT_SIGNATURE_HEADER: header_value}), paid=True
    )
    settled = read_settlement_header(answer.headers, 2)
    if settled is None or not settled.success or not settled.transaction:
        raise UpstreamError(
            f"the server did not refund channel {channel.channel_id} (status {answer.status_code}"
            f"{': ' + str(settled.error_reason) if settled is not None else ''})",
            reason=Reason.CHANNEL_EXHAUSTED,
            channel_id=channel.channel_id,
        )
    rpc = _rpc(payer, channel)
    receipt = yield from _receipt(rpc, settled.transaction)
    refunded = _moved_to_payer(receipt, channel)
    balance, claimed = yield from check_claims(payer, channel)
    state = ChannelState.CLOSED if balance <= claimed else channel.state
    log.info("channel %s refunded %d (tx %s)", channel.channel_id, refunded, settled.transaction)
    return payer.gate.ledger.channels.mark(
        channel.channel_id, refunded=channel.refunded + refunded, claimed=claimed, state=state
    )


def _server_answers(channel: ChannelRecord) -> Generator[Step, Any, bool]:
    try:
        yield HttpCall(httpx.Request("GET", channel.url))
    except UpstreamError:
        return False
    return True


def watch_flow(
    payer: Payer, channel: ChannelRecord, now: float, silence: float = DEFAULT_SILENCE_SECONDS
) -> Generator[Step, Any, ChannelRecord]:
    """One watchdog round over ``channel``: a silent server's channel, or one whose server
    claimed above our vouchers (then reported: SettlementMismatch), is withdrawn: started now,
    finished once its delay has passed on chain."""
    ledger = payer.gate.ledger
    rpc = _rpc(payer, channel)
    chain_id = int(channel.network.split(":")[1])
    if channel.state in (ChannelState.OPEN, ChannelState.DISPUTED):
        balance, claimed = yield from check_claims(payer, channel)
        over = claimed > channel.signed_total or channel.state is ChannelState.DISPUTED
        if balance <= claimed and not over:
            return ledger.channels.mark(channel.channel_id, state=ChannelState.CLOSED)
        recent = channel.last_answer_at is not None and now - channel.last_answer_at < silence
        if not over and (recent or (yield from _server_answers(channel))):
            return channel
        # The server may still claim its vouchers during the delay; what it does not claim
        # comes back at finalize.
        data = _INITIATE + _config_words(channel) + format(balance - claimed, "064x")
        receipt = yield from _send(payer, rpc, data, chain_id)
        log.warning(
            "channel %s: server silent; withdrawal of %d started (tx %s)",
            channel.channel_id,
            balance - claimed,
            receipt.get("transactionHash"),
        )
        withdrawing = ledger.channels.mark(channel.channel_id, state=ChannelState.WITHDRAWING)
        if over:
            raise over_claim(channel, claimed)
        return withdrawing
    if channel.state is ChannelState.WITHDRAWING:
        result = yield RpcCall(
            rpc,
            "eth_call",
            ({"to": _settlement(), "data": _PENDING + channel.channel_id.removeprefix("0x")}, "latest"),
        )
        raw = bytes.fromhex(str(result).removeprefix("0x"))
        initiated = int.from_bytes(raw[32:64], "big")
        block = yield RpcCall(rpc, "eth_getBlockByNumber", ("latest", False))
        delay = int(channel.config["withdrawDelay"])
        if initiated == 0 or int(block["timestamp"], 16) < initiated + delay:
            return channel
        receipt = yield from _send(payer, rpc, _FINALIZE + _config_words(channel), chain_id)
        withdrawn = _moved_to_payer(receipt, channel)
        _, claimed = yield from check_claims(payer, channel)
        return ledger.channels.mark(
            channel.channel_id,
            withdrawn=channel.withdrawn + withdrawn,
            claimed=claimed,
            state=ChannelState.CLOSED,
        )
    return channel


def _settlement() -> str:
    from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

    return str(BATCH_SETTLEMENT_ADDRESS)
