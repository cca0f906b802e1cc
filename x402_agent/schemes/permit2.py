"""What ``exact`` and ``upto`` over Permit2 share (x402 on EVM, transfer method ``permit2``).

The payer signs Permit2's PermitWitnessTransferFrom with an x402 proxy as spender and a witness
that binds the payee (and, for upto, the facilitator); the facilitator calls the proxy, which has
Permit2 pull the tokens. The wire format is the SDK's (``x402.mechanisms.evm.types``); this module
only decides the values and checks them.

- The authorization id is the Permit2 nonce (random uint256, stored as 0x + 64 hex digits); the
  chain marks it used in ``Permit2.nonceBitmap(owner, nonce >> 8)``. Past its deadline an unused
  permit can never settle.
- Permit2 can only pull what the payer approved it for: before signing, the token allowance to
  Permit2 is read (unless what this process last read still covers the payment) and, when short,
  raised to a bound (the asset's daily limit; never unlimited) by a transaction of the payer's
  own (a plain key) or refused as ``permit2_allowance_required``.
- Permit2 emits no event naming the nonce, so a settlement transaction is proven by its target
  (the proxy), success, and exactly one Transfer from the payer to the payee.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import weakref
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from x402.mechanisms.evm.constants import PERMIT2_ADDRESS

from ..challenge import Offer
from ..decision import Decision
from ..errors import ChainError, ConfigError, SettlementMismatch
from ..ledger import Ledger, PaymentRecord, PaymentState
from ..policy import AssetRule
from ..reasons import Reason
from ..settlement import TRANSFER_TOPIC, receipt_logs, topic_address, topics
from ..signer import PaymentSigner, Permit2AllowanceKeeper, Permit2Signer, TransactionSender, provides
from ..steps import RpcCall, WalletCall
from .base import Authorized

log = logging.getLogger(__name__)

_NONCE_BITMAP = "0x" + keccak(text="nonceBitmap(address,uint256)")[:4].hex()
_ALLOWANCE = "0x" + keccak(text="allowance(address,address)")[:4].hex()
_APPROVE = "0x" + keccak(text="approve(address,uint256)")[:4].hex()
_APPROVE_GAS = 100_000  # an ERC-20 approve costs ~30-50k gas
# Receipt reads after sending the approval: a local chain mines at once; elsewhere the payment
# is refused as pending (nothing signed) and the next attempt finds the allowance raised.
_RECEIPT_READS = 20
# How far back a restart looks for the transaction that used a permit: a permit lives minutes
# (the policy's authorization window), so its settlement is recent unless the agent was off
# for long; beyond this the row counts its maximum.
_LOOKBACK_BLOCKS = 50_000


def word(value: int | str) -> str:
    """One ABI word, hex without 0x, of an integer or an address."""
    number = int(value, 16) if isinstance(value, str) else value
    return format(number, "064x")


def authorization_id(nonce: int) -> str:
    return "0x" + word(nonce)


@dataclass(frozen=True)
class SignedPermit:
    """The SDK's Permit2 authorization (exact or upto) and the payer's signature of it."""

    authorization: Any  # ExactPermit2Authorization | UptoPermit2Authorization
    signature: str


def signed_permit(authorized: Authorized) -> SignedPermit:
    signed = authorized.signed
    assert isinstance(signed, SignedPermit)
    return signed


def allowance_bound(asset: AssetRule, needed: int) -> int:
    """What Permit2 is approved for when the allowance is short: the asset's daily limit (a
    day's payments at most), else the per-request cap; never less than this payment."""
    return max(asset.daily_max if asset.daily_max is not None else asset.per_request_max, needed)


class _Headroom:
    """What a payer's Permit2 allowance still covers, as its signer last read it minus what it
    has signed since: the chain is read again only when a payment would not fit, so paying does
    not wait on an allowance read each time. Only payments lower an allowance (a permit pulls at
    most what it names; upto permits often less), so the estimate errs high only when another
    process pays from the same allowance or the owner lowers it; a permit then beyond the true
    allowance is refused by the facilitator, nothing moves, and the estimate runs out (each
    attempt spends from it) and is read again. Kept per signer object: it ends with the agent."""

    def __init__(self) -> None:
        self._left: weakref.WeakKeyDictionary[object, dict[tuple[str, str], int]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # flows run in several worker threads

    def spend(self, signer: object, key: tuple[str, str], amount: int) -> bool:
        with self._lock:
            known = self._left.setdefault(signer, {})
            left = known.get(key, 0)
            if left < amount:
                known.pop(key, None)
                return False
            known[key] = left - amount
            return True

    def known(self, signer: object, key: tuple[str, str], left: int) -> None:
        with self._lock:
            self._left.setdefault(signer, {})[key] = left


_HEADROOM = _Headroom()


def ensure_allowance(
    rpc: str | None, signer: PaymentSigner, token: str, needed: int, bound: int, chain_id: int
) -> Generator[RpcCall | WalletCall, Any, None]:
    """Make the payer's token allowance to Permit2 at least ``needed``, approving ``bound``."""
    if provides(signer, Permit2AllowanceKeeper):
        # A smart account approves Permit2 only in its own refill, for its own bound.
        yield WalletCall("permit2 allowance", partial(signer.ensure_permit2_allowance, needed))
        return
    if rpc is None:
        return  # no chain access here: the facilitator says whether it is enough
    owner = signer.address
    if _HEADROOM.spend(signer, (rpc, token), needed):
        return
    allowance = yield from _allowance(rpc, token, owner)
    if allowance >= needed:
        _HEADROOM.known(signer, (rpc, token), allowance - needed)
        return
    if not isinstance(signer, TransactionSender):
        raise ConfigError(
            f"{owner} has approved Permit2 for {allowance} of {token}, this payment needs {needed}",
            reason=Reason.PERMIT2_ALLOWANCE_REQUIRED,
            allowance=str(allowance),
            needed=str(needed),
        )
    count = yield RpcCall(rpc, "eth_getTransactionCount", (owner, "pending"))
    gas_price = yield RpcCall(rpc, "eth_gasPrice", ())
    raw = signer.sign_transaction(
        {
            "to": to_checksum_address(token),
            "data": _APPROVE + word(PERMIT2_ADDRESS) + word(bound),
            "value": 0,
            "gas": _APPROVE_GAS,
            "gasPrice": int(gas_price, 16),
            "nonce": int(count, 16),
            "chainId": chain_id,
        }
    )
    try:
        tx = yield RpcCall(rpc, "eth_sendRawTransaction", (raw,))
    except ChainError as refused:
        # Another process of this payer may have sent the same approval with the same nonce:
        # the very same transaction (same fields, deterministic signature), maybe not mined yet.
        same = "0x" + keccak(bytes.fromhex(raw.removeprefix("0x"))).hex()
        for _ in range(_RECEIPT_READS):
            if (yield RpcCall(rpc, "eth_getTransactionReceipt", (same,))) is not None:
                break
        if (yield from _allowance(rpc, token, owner)) >= needed:
            return
        # Else the chain refused it (no ETH for gas, most often): say what is missing.
        raise ConfigError(
            f"{owner} could not approve Permit2 for {bound} of {token}: the transaction was refused "
            f"({refused.details.get('rpc_error', refused.message)})",
            reason=Reason.PERMIT2_ALLOWANCE_REQUIRED,
            allowance=str(allowance),
            needed=str(needed),
        ) from refused
    for _ in range(_RECEIPT_READS):
        receipt = yield RpcCall(rpc, "eth_getTransactionReceipt", (tx,))
        if receipt is not None:
            break
    else:
        raise ChainError(
            f"the Permit2 approval {tx} is not mined yet", reason=Reason.PERMIT2_APPROVAL_PENDING, tx=tx
        )
    if receipt.get("status") != "0x1":
        raise ChainError(
            f"the Permit2 approval {tx} reverted", reason=Reason.PERMIT2_ALLOWANCE_REQUIRED, tx=tx
        )
    _HEADROOM.known(signer, (rpc, token), bound - needed)
    # What was approved, for the user's record: a bounded amount, from the payer's own key.
    log.warning("approved Permit2 to pull up to %d of token %s from %s (tx %s)", bound, token, owner, tx)


def _allowance(rpc: str, token: str, owner: str) -> Generator[RpcCall, Any, int]:
    data = _ALLOWANCE + word(owner) + word(PERMIT2_ADDRESS)
    result = yield RpcCall(rpc, "eth_call", ({"to": token, "data": data}, "latest"))
    return int(result, 16)


def nonce_used(rpc: str, owner: str, nonce: int) -> Generator[RpcCall, Any, bool]:
    """Whether Permit2 has marked ``owner``'s unordered ``nonce`` used."""
    data = _NONCE_BITMAP + word(owner) + word(nonce >> 8)
    result = yield RpcCall(rpc, "eth_call", ({"to": PERMIT2_ADDRESS, "data": data}, "latest"))
    return (int(result, 16) >> (nonce & 0xFF)) & 1 == 1


def moved_with_nonce(
    rpc: str, record: PaymentRecord, spender: str, nonce: int
) -> Generator[RpcCall, Any, int | None]:
    """What the transaction that used ``nonce`` moved to the row's payee, when the chain shows
    it among the recent Transfers from the payer: a call to ``spender`` whose calldata carries
    the nonce (Permit2 logs no nonce; a random 256-bit one appears in no other call). None when
    it is not found."""
    assert record.payer is not None
    latest = yield RpcCall(rpc, "eth_blockNumber", ())
    query = {
        "address": record.asset,
        "fromBlock": hex(max(0, int(latest, 16) - _LOOKBACK_BLOCKS)),
        "toBlock": "latest",
        "topics": [TRANSFER_TOPIC, topic_address(record.payer), topic_address(record.pay_to)],
    }
    logs = yield RpcCall(rpc, "eth_getLogs", (query,))
    for log in reversed(logs or []):
        tx = yield RpcCall(rpc, "eth_getTransactionByHash", (log["transactionHash"],))
        if (
            tx is not None
            and str(tx.get("to") or "").lower() == spender.lower()
            and word(nonce) in str(tx.get("input", "")).lower()
        ):
            return int(log.get("data", "0x0"), 16)
    return None


def new_nonce() -> int:
    """A random uint256 (Permit2's unordered nonces: any unused value)."""
    return secrets.randbits(256)


_NO_PERMIT2 = "this payer cannot sign Permit2 payments"


def require_permit2_signer(signer: PaymentSigner) -> Permit2Signer:
    if not provides(signer, Permit2Signer):
        raise ConfigError(f"{signer.address}: {_NO_PERMIT2}", reason=Reason.PERMIT2_UNSUPPORTED_SIGNER)
    return signer


def transferred(receipt: Mapping[str, Any], permit: SignedPermit, pay_to: str) -> int:
    """The amount the settlement transaction moved from the payer to ``pay_to``: it must call
    the permit's spender (the x402 proxy), succeed, and hold exactly one such Transfer."""
    auth = permit.authorization
    logs = receipt_logs(receipt, auth.permitted.token)
    moves = [
        int(log.get("data", "0x0"), 16)
        for log in logs
        if topics(log) == [TRANSFER_TOPIC, topic_address(auth.from_address), topic_address(pay_to)]
    ]
    target = str(receipt.get("to") or "").lower()
    if target != auth.spender.lower() or len(moves) != 1:
        raise SettlementMismatch(
            "the settlement transaction is not one Permit2 transfer of ours through the x402 proxy",
            reason=Reason.SETTLEMENT_NOT_OURS,
            tx=receipt.get("transactionHash"),
            called=target,
            matching_transfers=len(moves),
        )
    return moves[0]


def permit_mismatches(sent: Mapping[str, Any], offer: Offer, spender: str) -> list[str]:
    """Fields of a decoded outgoing ``permit2Authorization`` that differ from ``offer``."""
    auth = sent.get("permit2Authorization", {})
    permitted = auth.get("permitted", {})
    witness = auth.get("witness", {})
    return [
        name
        for name, got, want in (
            ("spender", str(auth.get("spender", "")).lower(), spender.lower()),
            ("witness.to", str(witness.get("to", "")).lower(), offer.pay_to.lower()),
            ("permitted.token", str(permitted.get("token", "")).lower(), offer.asset.lower()),
            ("permitted.amount", permitted.get("amount"), str(offer.amount)),
        )
        if got != want
    ]


class Permit2Scheme:
    """The steps both Permit2 schemes take; each names its spender, witness and amount rule."""

    family = "eip155"
    transfer_method = "permit2"
    spender: str

    def _authorization(self, offer: Offer, payer: str, nonce: int, deadline: int) -> Any:
        raise NotImplementedError

    def _restored(self, record: PaymentRecord, requirement: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _payload_type(self) -> Any:
        raise NotImplementedError

    def check_offer(self, offer: Offer, asset: AssetRule) -> Decision | None:
        # Permit2's EIP-712 domain is its own (name, chain, address), not the token's: the
        # policy's token domain fields play no part.
        return None

    def refusal_for(self, signer: object) -> Decision | None:
        if provides(signer, Permit2Signer):
            return None
        return Decision(False, Reason.PERMIT2_UNSUPPORTED_SIGNER, _NO_PERMIT2)

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
    ) -> Generator[RpcCall | WalletCall, Any, Authorized]:
        assert offer.chain_id is not None
        permit_signer = require_permit2_signer(signer)
        yield from ensure_allowance(
            rpc, signer, offer.asset, offer.amount, allowance_bound(asset, offer.amount), offer.chain_id
        )
        nonce, deadline = new_nonce(), now + window
        authorization = self._authorization(offer, signer.address, nonce, deadline)
        signature = permit_signer.sign_permit2(authorization, offer.chain_id)
        # Valid at once, as the SDK's client signs it (validAfter 0); the deadline bounds its life.
        return Authorized(
            signer.address,
            authorization_id(nonce),
            0,
            deadline,
            offer.amount,
            SignedPermit(authorization, signature),
        )

    def payload(self, authorized: Authorized) -> dict[str, Any]:
        permit = signed_permit(authorized)
        result: dict[str, Any] = self._payload_type()(
            permit2_authorization=permit.authorization, signature=permit.signature
        ).to_dict()
        return result

    def payload_mismatches(self, payload: Mapping[str, Any], offer: Offer) -> list[str]:
        return permit_mismatches(payload, offer, self.spender)

    def settled_on_chain(self, rpc: str, record: PaymentRecord) -> Generator[RpcCall, Any, int | None]:
        """exact: a used nonce moved exactly the signed price (upto overrides)."""
        assert record.payer is not None and record.nonce is not None
        used = yield from nonce_used(rpc, record.payer, int(record.nonce, 16))
        return record.amount if used else None

    def corrective(
        self, headers: Mapping[str, str], authorized: Authorized, rpc: str | None
    ) -> Generator[RpcCall, Any, PaymentState | None]:
        return None  # nothing kept between payments to correct
        yield

    def restore(self, record: PaymentRecord, ledger: Ledger | None = None) -> Authorized:
        """What a sent row says was signed (the signature travels in its recorded header)."""
        assert record.payer is not None and record.nonce is not None
        requirement = json.loads(record.requirement_json)
        authorization = self._restored(record, requirement)
        return Authorized(
            record.payer,
            record.nonce,
            record.valid_after or 0,
            record.valid_before or 0,
            record.amount,
            SignedPermit(authorization, ""),
        )
