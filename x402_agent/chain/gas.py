"""Gas for session-key user operations: the account's caps, its EntryPoint deposit, the ETH
allowance that refills the deposit, and the gas fields our own top-ups choose within the caps.

X402Account pays a session key's operations from its EntryPoint deposit alone (never from its
ETH during validation), refuses any with a paymaster or a gas field above its caps, and only
``refill``'s execution tops the deposit up from the account's ETH, at most ``allowance`` wei per
period. Whoever submits an operation is paid its gas, and the beneficiary is an argument of
``handleOps`` the account never sees; so what a stolen session key can burn is bounded by money,
not by who collects it: ``deposit + (allowance - spent this period) + allowance * ceil(t / period)``
over the t seconds until the key is revoked (``GasBudget.stolen_key_bound``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception

from ..errors import ChainError
from ..reasons import Reason
from .account import account_contract, max_transaction_cost, send_transaction
from .bundler import GasEstimate, require_relayer_funds
from .entrypoint import ENTRY_POINT_V07, entry_point_v07_abi

# What our refills need (alto's estimates on anvil): validation 564k with the account's
# deployment, 40k without; the call (vault pull, deposit top-up) up to 134k, and ~300k when it
# also creates the vault (the deploying operation: ERC-7562 keeps that out of initCode). With
# margin, under the default caps; a smaller prefund keeps a deployed account's deposit going longer.
_VERIFICATION_GAS_DEPLOYING = 800_000
_VERIFICATION_GAS = 150_000
_CALL_GAS_DEPLOYING = 400_000
_CALL_GAS = 200_000
_PRE_VERIFICATION_GAS = 60_000
_PRIORITY_FEE = 10**9
_ESTIMATE_MARGIN_PERCENT = 25


@dataclass(frozen=True)
class GasCaps:
    """``X402Account.gasCaps``: the largest gas fields a session key's operation may carry."""

    verification_gas_limit: int
    call_gas_limit: int
    pre_verification_gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


# X402Account's creation defaults (its DEFAULT_* constants): the caps and ETH allowance of an
# account not deployed yet. tests/test_userop_bounds.py checks them against a fresh account.
DEFAULT_GAS_CAPS = GasCaps(1_000_000, 500_000, 500_000, 100 * 10**9, 10 * 10**9)
DEFAULT_GAS_ALLOWANCE = 10**16  # 0.01 ETH
DEFAULT_GAS_PERIOD = 86_400
# ``gasBudget.periodStart`` after the deploying operation paid its prefund, before any top-up.
_FIRST_PERIOD = (1 << 64) - 1


@dataclass(frozen=True)
class GasFields:
    """The gas fields of one of our refill operations."""

    verification_gas_limit: int
    call_gas_limit: int
    pre_verification_gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    @property
    def max_cost(self) -> int:
        """The EntryPoint's required prefund (no paymaster): what the deposit must hold."""
        gas = self.verification_gas_limit + self.call_gas_limit + self.pre_verification_gas
        return gas * self.max_fee_per_gas


@dataclass(frozen=True)
class GasBudget:
    """The account's EntryPoint deposit and the ETH allowance that refills it (wei, seconds)."""

    deposit: int
    allowance: int  # per period; also the level refill tops the deposit up to
    period: int
    left: int  # what refill may still move into the deposit this period

    @property
    def stolen_key_bound(self) -> str:
        """The most a stolen session key can burn until it is revoked, t seconds from now."""
        return (
            f"{self.deposit + self.left} wei now (deposit {self.deposit} + {self.left} left this "
            f"period) + {self.allowance} wei per {self.period} s period after"
        )


def deposit_of(w3: Web3, account: str) -> int:
    """The account's EntryPoint v0.7 deposit (wei)."""
    entry_point = w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
    return int(entry_point.functions.balanceOf(account).call())


def read_caps(w3: Web3, account: str, deployed: bool) -> GasCaps:
    if not deployed:
        return DEFAULT_GAS_CAPS
    return GasCaps(*(int(v) for v in account_contract(w3, account).functions.gasCaps().call()))


def read_budget(w3: Web3, account: str, deployed: bool) -> GasBudget:
    """The deposit and allowance, with what is left this period as of the latest block."""
    deposit = deposit_of(w3, account)
    if not deployed:
        return GasBudget(deposit, DEFAULT_GAS_ALLOWANCE, DEFAULT_GAS_PERIOD, DEFAULT_GAS_ALLOWANCE)
    allowance, period, start, spent = (
        int(v) for v in account_contract(w3, account).functions.gasBudget().call()
    )
    now = int(w3.eth.get_block("latest")["timestamp"])
    if period and start != _FIRST_PERIOD and now >= start + period:
        spent = 0  # refill starts a new period
    left = max(allowance - spent, 0) if period else 0
    return GasBudget(deposit, allowance, period, left)


def choose_fields(
    caps: GasCaps, base_fee: int, *, deploying: bool = False, priority_fee: int = _PRIORITY_FEE
) -> GasFields:
    """Gas fields for a refill within ``caps`` (``deploying``: the operation deploys the account;
    ``priority_fee``: the chain's ``eth_maxPriorityFeePerGas``); ``gas_fee_above_cap`` if the
    network's base fee leaves no room under the fee cap."""
    priority = min(priority_fee, caps.max_priority_fee_per_gas)
    max_fee = min(2 * base_fee + priority, caps.max_fee_per_gas)
    if max_fee <= base_fee and base_fee > 0:
        raise ChainError(
            f"the base fee {base_fee} leaves no room under the account's fee cap {caps.max_fee_per_gas}",
            reason=Reason.GAS_FEE_ABOVE_CAP,
            base_fee=base_fee,
            max_fee_cap=caps.max_fee_per_gas,
        )
    return GasFields(
        min(_VERIFICATION_GAS_DEPLOYING if deploying else _VERIFICATION_GAS, caps.verification_gas_limit),
        min(_CALL_GAS_DEPLOYING if deploying else _CALL_GAS, caps.call_gas_limit),
        min(_PRE_VERIFICATION_GAS, caps.pre_verification_gas),
        max_fee,
        min(priority, max_fee),
    )


def within_caps(estimate: GasEstimate, caps: GasCaps, fields: GasFields) -> GasFields:
    """``fields`` with the bundler's gas limits, each with a margin the cap may trim; a limit
    the bundler estimates above its cap is ``gas_estimate_above_cap`` (nothing is signed)."""
    limits = {
        "verification_gas_limit": estimate.verification_gas_limit,
        "call_gas_limit": estimate.call_gas_limit,
        "pre_verification_gas": estimate.pre_verification_gas,
    }
    over = {
        name: (value, getattr(caps, name)) for name, value in limits.items() if value > getattr(caps, name)
    }
    if over:
        shown = ", ".join(f"{name} {value} > cap {cap}" for name, (value, cap) in over.items())
        raise ChainError(
            f"the bundler estimates the top-up above the account's gas caps: {shown}",
            reason=Reason.GAS_ESTIMATE_ABOVE_CAP,
            **{name: {"estimate": value, "cap": cap} for name, (value, cap) in over.items()},
        )
    # Bundlers estimate validation with a dummy signature, which X402Account refuses early: the
    # session key's real path reads its expiry and the caps too (a few cold storage reads).
    margin = 100 + _ESTIMATE_MARGIN_PERCENT
    return replace(
        fields,
        verification_gas_limit=min(
            estimate.verification_gas_limit * margin // 100, caps.verification_gas_limit
        ),
        call_gas_limit=min(estimate.call_gas_limit * margin // 100, caps.call_gas_limit),
        pre_verification_gas=estimate.pre_verification_gas,  # the bundler's own price of the op
    )


def fund_deposit(w3: Web3, account: str, need: int, relayer: LocalAccount | None) -> None:
    """Make a deployed account's deposit cover ``need`` before a session-key operation: the
    relayer asks the account to move its own ETH in (``refill(0)``, within the account's ETH
    allowance; the relayer pays only that transaction's gas)."""
    deposit = deposit_of(w3, account)
    if deposit >= need:
        return
    details: dict[str, object] = {}
    if relayer is not None:
        purpose = "moving the account's ETH into its gas deposit"
        require_relayer_funds(w3, relayer, max_transaction_cost(w3), purpose, account=account)
        try:
            call = account_contract(w3, account).encode_abi("refill", args=[0])
            send_transaction(w3, relayer, {"to": account, "data": call})
        except (Web3Exception, ValueError, RuntimeError) as exc:
            # Another agent of this account may have sent the same transaction at the same
            # moment (same relayer nonce): the deposit says whether the operation is covered.
            details["relayer_error"] = str(exc)
        deposit = deposit_of(w3, account)
        if deposit >= need:
            return
    raise ChainError(
        f"the account's EntryPoint deposit ({deposit} wei) cannot pay a top-up operation ({need} wei)",
        reason=Reason.GAS_DEPOSIT_LOW,
        account=account,
        deposit=deposit,
        needed=need,
        relayer=relayer is not None,
        **details,
    )


__all__ = [
    "DEFAULT_GAS_ALLOWANCE",
    "DEFAULT_GAS_CAPS",
    "DEFAULT_GAS_PERIOD",
    "GasBudget",
    "GasCaps",
    "GasFields",
    "choose_fields",
    "deposit_of",
    "fund_deposit",
    "read_budget",
    "read_caps",
    "within_caps",
]
