"""Submit ERC-4337 v0.7 user operations: through a bundler, or ourselves through ``handleOps``.

``BundlerClient`` speaks the bundler JSON-RPC API (ERC-7769). ``submit_user_op`` sends an
operation to the bundler and, only if the bundler cannot be reached (or is not a bundler at
all, or refuses it by a rule of its own, not the EntryPoint's), relays
``EntryPoint.handleOps([op], beneficiary)`` from a funded key instead. A bundler that refuses
the operation as invalid (bad signature, too little gas...) is not bypassed: the EntryPoint
would refuse it too.

Either way the outcome is read from the chain, not taken on the bundler's word: the
``UserOperationEvent`` the EntryPoint emitted for this userOpHash in that transaction.
Failures raise ``ChainError`` with one of these ``reason`` codes:

- ``bundler_unavailable``: no bundler answered and there is no relayer key to fall back on;
- ``relayer_unfunded``: the relayer key cannot pay for ``handleOps``; ``user_op_unsent`` when
  the bundler was unavailable too (nothing was sent either way);
- ``bundler_rejected`` or the member for its ERC-7769 code (``bundler_errors``): the bundler
  refused the operation, said in words (``details`` has its own error). A refusal of the
  bundler's own policy (``BUNDLER_POLICY``: ERC-7562 rules, throttling, stake) is handed to the
  relayer like an unavailable bundler;
- ``user_op_rejected``: the EntryPoint refused it in ``handleOps`` (e.g. ``AA24 signature error``);
  nothing happened on chain;
- ``user_op_failed``: it was included but its call reverted (the account still paid the gas);
- ``user_op_pending``: accepted, but not seen on chain before the timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from eth_abi.abi import decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception
from web3.logs import DISCARD
from web3.types import TxParams, Wei

from ..errors import ChainError
from ..reasons import Reason
from ..secret_url import expand, redact
from .bundler_errors import entry_point_words, explain
from .entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from .userop import PackedUserOperation, pack_account_gas_limits, user_op_hash_v07

_HTTP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.1
_METHOD_NOT_FOUND = -32601
_MESSAGE_CHARS = 500  # of a bundler's error message kept: providers may answer at length
# Refusals of the bundler's own policy (ERC-7562 rules, throttling, stake), not of the
# EntryPoint: the relayer's handleOps may still land the operation.
BUNDLER_POLICY = frozenset(
    {Reason.BUNDLER_RULES_VIOLATED, Reason.BUNDLER_THROTTLED, Reason.BUNDLER_STAKE_TOO_LOW}
)
_RELAYER_TAKES_OVER = BUNDLER_POLICY | {Reason.BUNDLER_UNAVAILABLE}
# EntryPoint v0.7 errors: FailedOp(uint256 opIndex, string reason) and
# FailedOpWithRevert(uint256 opIndex, string reason, bytes inner).
_FAILED_OP = keccak(text="FailedOp(uint256,string)")[:4]
_FAILED_OP_WITH_REVERT = keccak(text="FailedOpWithRevert(uint256,string,bytes)")[:4]
_USER_OP_EVENT_TOPIC = keccak(text="UserOperationEvent(bytes32,address,address,uint256,bool,uint256,uint256)")

Via = Literal["bundler", "handleOps"]


@dataclass(frozen=True)
class GasEstimate:
    """What ``eth_estimateUserOperationGas`` answers (paymaster limits are 0 without a paymaster)."""

    pre_verification_gas: int
    verification_gas_limit: int
    call_gas_limit: int
    paymaster_verification_gas_limit: int = 0
    paymaster_post_op_gas_limit: int = 0

    def apply(self, op: PackedUserOperation) -> PackedUserOperation:
        """``op`` with these gas limits (its signature is then stale: sign after applying)."""
        paymaster_and_data = op.paymasterAndData
        if paymaster_and_data:
            paymaster_and_data = (
                paymaster_and_data[:20]
                + self.paymaster_verification_gas_limit.to_bytes(16, "big")
                + self.paymaster_post_op_gas_limit.to_bytes(16, "big")
                + paymaster_and_data[52:]
            )
        return replace(
            op,
            accountGasLimits=pack_account_gas_limits(self.verification_gas_limit, self.call_gas_limit),
            preVerificationGas=self.pre_verification_gas,
            paymasterAndData=paymaster_and_data,
        )


@dataclass(frozen=True)
class UserOpResult:
    """An included user operation, as the EntryPoint's ``UserOperationEvent`` reports it."""

    user_op_hash: str
    transaction_hash: str
    success: bool
    via: Via
    actual_gas_cost: int  # wei the account (or its paymaster) paid
    gas_used: int  # actualGasUsed


def _quantity(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16)
    raise ValueError(f"not a JSON-RPC quantity: {value!r}")


class BundlerClient:
    """A bundler's JSON-RPC endpoint for one EntryPoint."""

    def __init__(
        self, url: str, entry_point: str = ENTRY_POINT_V07, *, timeout_s: float = _HTTP_TIMEOUT_S
    ) -> None:
        # ``url`` as configured: an API key in it is a ${VARIABLE} placeholder (secret_url),
        # expanded only for the request; errors and status show this form.
        self.url = url
        self.entry_point = to_checksum_address(entry_point)
        self._http = httpx.Client(timeout=timeout_s)
        self._chain_id: int | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BundlerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; ``ChainError`` ``bundler_unavailable`` or ``bundler_rejected``."""
        try:
            reply = self._http.post(
                expand(self.url), json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            )
        except httpx.HTTPError as exc:
            raise ChainError(
                f"bundler at {self.url} unreachable: {redact(repr(exc), self.url)}",
                reason=Reason.BUNDLER_UNAVAILABLE,
                url=self.url,
                method=method,
            ) from exc
        try:
            body = reply.json()
        except ValueError:
            body = None
        # A JSON-RPC answer has a result or an error object; anything else (an HTML page, a
        # web server's {"error": "Not Found"}) means we did not reach a JSON-RPC endpoint.
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not ("result" in body or isinstance(error, dict)):
            raise ChainError(
                f"bundler at {self.url} answered HTTP {reply.status_code} without JSON-RPC",
                reason=Reason.BUNDLER_UNAVAILABLE,
                url=self.url,
                method=method,
                status=reply.status_code,
            )
        if isinstance(error, dict):
            code, message = error.get("code"), redact(str(error.get("message"))[:_MESSAGE_CHARS], self.url)
            # Not a bundler (e.g. a node's URL): as good as no bundler; the op was not taken.
            if code == _METHOD_NOT_FOUND:
                reason, words = Reason.BUNDLER_UNAVAILABLE, "not a bundler (method not found)"
            else:
                reason, words = explain(code, message)
            raise ChainError(
                f"bundler {method}: {words} (the bundler said {code}: {message})",
                reason=reason,
                url=self.url,
                method=method,
                code=code,
                bundler_message=message,
                data=redact(str(error.get("data"))[:_MESSAGE_CHARS], self.url) if error.get("data") else None,
            )
        return body["result"]

    # ---- the API ----

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = _quantity(self.call("eth_chainId", []))
        return self._chain_id

    def supported_entry_points(self) -> list[str]:
        result = self.call("eth_supportedEntryPoints", [])
        return [to_checksum_address(a) for a in result]

    def gas_price(self, speed: str = "standard") -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) the bundler will accept (Pimlico's extension)."""
        prices = self.call("pimlico_getUserOperationGasPrice", [])[speed]
        return _quantity(prices["maxFeePerGas"]), _quantity(prices["maxPriorityFeePerGas"])

    def estimate(self, op: PackedUserOperation) -> GasEstimate:
        """Gas limits for ``op``. Its signature must be one the account can check without
        reverting (a well-formed dummy that recovers to some address), or validation fails."""
        got = self.call("eth_estimateUserOperationGas", [op.to_rpc(), self.entry_point])
        return GasEstimate(
            pre_verification_gas=_quantity(got["preVerificationGas"]),
            verification_gas_limit=_quantity(got["verificationGasLimit"]),
            call_gas_limit=_quantity(got["callGasLimit"]),
            paymaster_verification_gas_limit=_quantity(got.get("paymasterVerificationGasLimit") or 0),
            paymaster_post_op_gas_limit=_quantity(got.get("paymasterPostOpGasLimit") or 0),
        )

    def send(self, op: PackedUserOperation) -> str:
        """``eth_sendUserOperation``; the userOpHash (0x hex)."""
        return str(self.call("eth_sendUserOperation", [op.to_rpc(), self.entry_point]))

    def receipt(self, user_op_hash: str) -> dict[str, Any] | None:
        """``eth_getUserOperationReceipt``: None while the operation is not included."""
        result = self.call("eth_getUserOperationReceipt", [user_op_hash])
        return dict(result) if result else None

    def wait(self, user_op_hash: str, timeout: float) -> dict[str, Any]:
        """Poll the receipt until it exists; ``ChainError`` ``user_op_pending`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.receipt(user_op_hash)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"user operation {user_op_hash} not included after {timeout}s",
                    reason=Reason.USER_OP_PENDING,
                    user_op_hash=user_op_hash,
                )
            time.sleep(_POLL_INTERVAL_S)


# ---- reading the outcome from the chain ----


def _entry_point(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=to_checksum_address(address), abi=entry_point_v07_abi())


def _result_from_receipt(
    w3: Web3, entry_point: str, user_op_hash: str, receipt: Any, via: Via
) -> UserOpResult | None:
    """The ``UserOperationEvent`` for ``user_op_hash`` in this transaction receipt, if any."""
    ep = _entry_point(w3, entry_point)
    wanted = HexBytes(user_op_hash)
    for event in ep.events.UserOperationEvent().process_receipt(receipt, errors=DISCARD):
        if HexBytes(event["args"]["userOpHash"]) == wanted:
            return UserOpResult(
                user_op_hash=user_op_hash,
                transaction_hash=HexBytes(receipt["transactionHash"]).to_0x_hex(),
                success=bool(event["args"]["success"]),
                via=via,
                actual_gas_cost=int(event["args"]["actualGasCost"]),
                gas_used=int(event["args"]["actualGasUsed"]),
            )
    return None


def _revert_reason(w3: Web3, entry_point: str, user_op_hash: str, receipt: Any) -> str | None:
    ep = _entry_point(w3, entry_point)
    for event in ep.events.UserOperationRevertReason().process_receipt(receipt, errors=DISCARD):
        if HexBytes(event["args"]["userOpHash"]) == HexBytes(user_op_hash):
            return HexBytes(event["args"]["revertReason"]).to_0x_hex()
    return None


def find_user_op(
    w3: Web3, entry_point: str, user_op_hash: str, from_block: int, via: Via
) -> UserOpResult | None:
    """Look the operation up on chain by its ``UserOperationEvent`` (userOpHash is indexed)."""
    logs = w3.eth.get_logs(
        {
            "address": to_checksum_address(entry_point),
            "fromBlock": from_block,
            "toBlock": "latest",
            "topics": [HexBytes(_USER_OP_EVENT_TOPIC), HexBytes(user_op_hash)],
        }
    )
    for log in logs:
        receipt = w3.eth.get_transaction_receipt(log["transactionHash"])
        found = _result_from_receipt(w3, entry_point, user_op_hash, receipt, via)
        if found is not None:
            return found
    return None


def decode_entry_point_error(data: str | bytes | None) -> str | None:
    """``FailedOp``'s reason (``AA24 signature error``...) from revert data, else None."""
    raw = HexBytes(data) if data else b""
    try:
        if raw[:4] == _FAILED_OP:
            return str(decode(["uint256", "string"], raw[4:])[1])
        if raw[:4] == _FAILED_OP_WITH_REVERT:
            _, reason, inner = decode(["uint256", "string", "bytes"], raw[4:])
            return f"{reason} (inner revert 0x{bytes(inner).hex()})"
    except Exception:  # malformed revert data: report it raw
        return None
    return None


# ---- submission ----


def require_relayer_funds(w3: Web3, relayer: LocalAccount, needed: int, purpose: str, **details: Any) -> None:
    """``relayer_unfunded`` unless the relayer holds ``needed`` wei (its transaction's gas limit
    times its maximum fee): nodes refuse such a transaction in words of their own."""
    held = int(w3.eth.get_balance(relayer.address))
    if held < needed:
        raise ChainError(
            f"the relayer {relayer.address} holds {held} wei; {purpose} needs up to {needed}",
            reason=Reason.RELAYER_UNFUNDED,
            relayer=relayer.address,
            balance=held,
            needed=needed,
            **details,
        )


def _relay_handle_ops(
    w3: Web3,
    op: PackedUserOperation,
    entry_point: str,
    user_op_hash: str,
    relayer: LocalAccount,
    deadline: float,
) -> UserOpResult:
    """Simulate, then send ``handleOps([op], relayer)`` from the relayer key."""
    ep = _entry_point(w3, entry_point)
    call = ep.functions.handleOps([op.as_tuple()], relayer.address)
    try:
        gas = call.estimate_gas({"from": relayer.address})
    except (ContractLogicError, ContractCustomError) as exc:
        reason = decode_entry_point_error(exc.data if isinstance(exc.data, str | bytes) else None)
        words = entry_point_words(reason)
        said = f"{words} ({reason})" if words else reason or str(exc)
        raise ChainError(
            f"EntryPoint refused the user operation: {said}",
            reason=Reason.USER_OP_REJECTED,
            user_op_hash=user_op_hash,
            entry_point_error=reason or str(exc),
        ) from exc
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    if op.max_fee_per_gas < base_fee:
        raise ChainError(
            f"maxFeePerGas {op.max_fee_per_gas} is below the base fee {base_fee}",
            reason=Reason.USER_OP_REJECTED,
            user_op_hash=user_op_hash,
        )
    gas_limit = gas + gas // 5
    require_relayer_funds(w3, relayer, gas_limit * op.max_fee_per_gas, "handleOps", user_op_hash=user_op_hash)
    # The EntryPoint refunds the beneficiary at the op's own gas price: relay at that price.
    params: TxParams = {
        "chainId": w3.eth.chain_id,
        "from": relayer.address,
        "nonce": w3.eth.get_transaction_count(relayer.address, "pending"),
        "gas": gas_limit,
        "maxFeePerGas": Wei(op.max_fee_per_gas),
        "maxPriorityFeePerGas": Wei(min(op.max_priority_fee_per_gas, op.max_fee_per_gas)),
    }
    tx = call.build_transaction(params)
    tx_hash = w3.eth.send_raw_transaction(relayer.sign_transaction(tx).raw_transaction)  # type: ignore[arg-type]
    try:
        receipt = w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=max(1.0, deadline - time.monotonic()), poll_latency=_POLL_INTERVAL_S
        )
    except TimeExhausted as exc:
        raise ChainError(
            f"handleOps transaction {tx_hash.to_0x_hex()} not mined in time",
            reason=Reason.USER_OP_PENDING,
            user_op_hash=user_op_hash,
            transaction_hash=tx_hash.to_0x_hex(),
        ) from exc
    found = _result_from_receipt(w3, entry_point, user_op_hash, receipt, "handleOps")
    if receipt["status"] != 1 or found is None:
        raise ChainError(
            f"handleOps transaction {tx_hash.to_0x_hex()} did not run the user operation",
            reason=Reason.USER_OP_REJECTED,
            user_op_hash=user_op_hash,
            transaction_hash=tx_hash.to_0x_hex(),
        )
    return found


def _via_bundler(
    w3: Web3,
    op: PackedUserOperation,
    bundler: BundlerClient,
    user_op_hash: str,
    from_block: int,
    timeout: float,
) -> UserOpResult:
    if bundler.chain_id() != w3.eth.chain_id:
        raise ChainError(
            f"bundler serves chain {bundler.chain_id()}, not {w3.eth.chain_id}",
            reason=Reason.BUNDLER_UNAVAILABLE,
            url=bundler.url,
        )
    sent_hash = bundler.send(op)
    if HexBytes(sent_hash) != HexBytes(user_op_hash):
        raise ChainError(
            f"bundler returned userOpHash {sent_hash}, expected {user_op_hash}",
            reason=Reason.BUNDLER_REJECTED,
            url=bundler.url,
            user_op_hash=user_op_hash,
        )
    try:
        receipt = bundler.wait(user_op_hash, timeout)
        tx_hash = receipt["receipt"]["transactionHash"]
    except ChainError as exc:
        if exc.reason != "bundler_unavailable":
            raise
        # Accepted, then the bundler went away: it may still have landed the operation.
        found = find_user_op(w3, bundler.entry_point, user_op_hash, from_block, "bundler")
        if found is None:
            raise ChainError(
                f"bundler took user operation {user_op_hash} and then went away",
                reason=Reason.USER_OP_PENDING,
                user_op_hash=user_op_hash,
            ) from exc
        return found
    # Trust the chain, not the bundler's receipt.
    found = _result_from_receipt(
        w3, bundler.entry_point, user_op_hash, w3.eth.get_transaction_receipt(tx_hash), "bundler"
    )
    if found is None:
        raise ChainError(
            f"bundler's transaction {tx_hash} has no event for {user_op_hash}",
            reason=Reason.BUNDLER_REJECTED,
            user_op_hash=user_op_hash,
            transaction_hash=tx_hash,
        )
    return found


def submit_user_op(
    w3: Web3,
    op: PackedUserOperation,
    *,
    bundler: BundlerClient | None,
    relayer_key: LocalAccount | str | bytes | None,
    timeout: float = 60.0,
    entry_point: str | None = None,
    check: bool = True,
    bundler_failed: ChainError | None = None,
) -> UserOpResult:
    """Get a signed v0.7 user operation included; see the module doc for the error reasons.

    With ``check`` (the default) an operation whose call reverted raises ``user_op_failed``;
    without it the result says ``success=False``. A failing chain RPC raises ``ChainError``
    with the default reason ``chain_unavailable``. ``bundler_failed``: the bundler already
    failed to answer (or refused by its own policy) for this operation, so the caller passes
    no bundler and the relayer's failure is reported together with it.
    """
    if bundler is None and relayer_key is None:
        raise ValueError("need a bundler, a relayer key, or both")
    entry = to_checksum_address(entry_point or (bundler.entry_point if bundler else ENTRY_POINT_V07))
    if bundler is not None and bundler.entry_point != entry:
        raise ValueError(f"the bundler client is for EntryPoint {bundler.entry_point}, not {entry}")
    relayer: LocalAccount | None = (
        None
        if relayer_key is None
        else relayer_key
        if isinstance(relayer_key, LocalAccount)
        else Account.from_key(relayer_key)
    )
    try:
        result = _submit(w3, op, entry, bundler, relayer, timeout, bundler_failed)
        if check and not result.success:
            receipt = w3.eth.get_transaction_receipt(result.transaction_hash)  # type: ignore[arg-type]
            raise ChainError(
                f"user operation {result.user_op_hash} reverted in its call (gas was paid)",
                reason=Reason.USER_OP_FAILED,
                user_op_hash=result.user_op_hash,
                transaction_hash=result.transaction_hash,
                via=result.via,
                actual_gas_cost=result.actual_gas_cost,
                revert_reason=_revert_reason(w3, entry, result.user_op_hash, receipt),
            )
    except (Web3Exception, OSError) as exc:  # the node (requests' errors are OSErrors)
        raise ChainError(f"chain RPC failed: {exc!r}") from exc
    return result


def _submit(
    w3: Web3,
    op: PackedUserOperation,
    entry: str,
    bundler: BundlerClient | None,
    relayer: LocalAccount | None,
    timeout: float,
    bundler_error: ChainError | None,
) -> UserOpResult:
    deadline = time.monotonic() + timeout
    user_op_hash = "0x" + user_op_hash_v07(op, entry, w3.eth.chain_id).hex()
    from_block = w3.eth.block_number
    if bundler is not None:
        try:
            return _via_bundler(w3, op, bundler, user_op_hash, from_block, timeout)
        except ChainError as exc:
            if exc.reason not in _RELAYER_TAKES_OVER or relayer is None:
                raise
            bundler_error = exc
    assert relayer is not None
    try:
        return _relay_handle_ops(w3, op, entry, user_op_hash, relayer, deadline)
    except ChainError as exc:
        if bundler_error is None:
            raise
        # The bundler may have taken the op although its answer never reached us.
        found = find_user_op(w3, entry, user_op_hash, from_block, "bundler")
        if found is not None:
            return found
        if exc.reason == Reason.RELAYER_UNFUNDED:  # neither path could send it: nothing happened
            raise ChainError(
                f"no bundler took the user operation ({bundler_error.message}) and the relayer "
                f"could not send it ({exc.message})",
                reason=Reason.USER_OP_UNSENT,
                user_op_hash=user_op_hash,
                bundler_error=bundler_error.message,
                relayer_error=exc.message,
            ) from exc
        exc.details["bundler_error"] = bundler_error.message
        raise


__all__ = [
    "BUNDLER_POLICY",
    "BundlerClient",
    "GasEstimate",
    "UserOpResult",
    "decode_entry_point_error",
    "find_user_op",
    "require_relayer_funds",
    "submit_user_op",
]
