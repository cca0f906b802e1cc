"""The hot wallet as the payment flow sees it: a smart account, its vault and a session key.

Before a payment is reserved the wallet checks the account's on-chain bounds (token, per-payment
cap, window, payee list, session-key expiry), so a payment the chain would refuse is never
signed and never counted. After the reservation it makes sure the hot balance covers every
payment in flight, refilling from the vault (a user operation signed by the session key, sent
through the bundler or, failing that, straight to ``EntryPoint.handleOps``) within the period's
allowance. The account may not exist yet: its address commits to its configuration, so until it
is deployed the bounds are the configuration's and signatures carry ERC-6492 deployment data.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3

from ..errors import ChainError, ConfigError, PolicyDenied
from ..home import AccountSetup, AgentHome, SmartAccountConfig
from ..reasons import Reason
from ..signer import LocalKeySigner, SignedAuthorization, TransferAuthorization
from .account import account_contract, owned_contract
from .bundler import BUNDLER_POLICY, BundlerClient, UserOpResult, submit_user_op
from .entrypoint import ENTRY_POINT_V07, entry_point_v07_abi
from .factory import (
    AccountConfig,
    create_account,
    create_account_calldata,
    create_sender_calldata,
    erc6492_wrap,
    factory_address,
)
from .gas import (
    DEFAULT_GAS_ALLOWANCE,
    GasFields,
    choose_fields,
    deposit_of,
    fund_deposit,
    read_budget,
    read_caps,
    within_caps,
)
from .session_signer import SessionKeySigner
from .userop import PackedUserOperation, pack_account_gas_limits, pack_gas_fees, user_op_hash_v07


class WalletRefused(PolicyDenied):
    """The smart account's on-chain bounds or funds would refuse this payment; nothing was signed."""

    reason = Reason.ONCHAIN_BOUND


@dataclass(frozen=True)
class Bounds:
    """What the account enforces for one session key and one token (read on chain)."""

    deployed: bool
    max_value: int
    max_window: int
    payees_restricted: bool
    token_allowed: bool
    session_expiry: int  # 0: unknown to the account (revoked or never added)


@dataclass(frozen=True)
class Funds:
    hot_balance: int  # in the account
    vault_balance: int
    vault_available: int  # what the account may still pull this period


class HotWallet:
    """A session key's view of its smart account; also its ``PaymentSigner``."""

    def __init__(
        self,
        w3: Web3,
        config: AccountConfig,
        account: str,
        vault: str,
        session_key: bytes,
        *,
        bundler: BundlerClient | None = None,
        relayer: LocalAccount | None = None,
        top_up_to: int = 0,
        clock: Callable[[], float] = time.time,
        bounds_ttl: float = 30.0,
    ) -> None:
        self.w3 = w3
        self.config = config
        self.account = to_checksum_address(account)
        self.vault = to_checksum_address(vault)
        self.token = to_checksum_address(config.token)
        self._session = SessionKeySigner(self.account, session_key)
        self._bundler = bundler
        self.relayer = relayer
        self.top_up_to = top_up_to
        self._clock = clock
        self._bounds_ttl = bounds_ttl
        self._bounds: tuple[float, Bounds] | None = None
        self._funding = threading.Lock()
        # A user-operation nonce key of its own (EntryPoint v0.7 keeps one sequence per 192-bit
        # key), so agents sharing this account do not race for one sequence when topping up.
        self._nonce_key = secrets.randbits(192)
        self._rpc_url = str(getattr(w3.provider, "endpoint_uri", ""))
        self._rpc = httpx.Client(timeout=10.0)
        self.top_ups: list[UserOpResult] = []

    # ---- PaymentSigner ----

    @property
    def address(self) -> str:
        return self.account

    @property
    def session_address(self) -> str:
        return self._session.session_address

    def sign_authorization(self, authorization: TransferAuthorization) -> SignedAuthorization:
        signed = self._session.sign_authorization(authorization)
        if self.bounds().deployed:
            return signed
        # Not deployed yet: ERC-6492 lets the facilitator deploy the account before settling.
        envelope = bytes.fromhex(signed.signature.removeprefix("0x"))
        wrapped = erc6492_wrap(factory_address(), create_account_calldata(self.w3, self.config), envelope)
        return dataclasses.replace(signed, signature="0x" + wrapped.hex())

    # ---- on-chain reads ----

    def is_deployed(self) -> bool:
        return bool(self.w3.eth.get_code(self.account))

    def ensure_deployed(self, relayer: LocalAccount) -> None:
        """Owner actions need the contracts: deploy a counterfactual account (and vault) first."""
        if not self.is_deployed():
            create_account(self.w3, self.config, relayer)

    def bounds(self, *, fresh: bool = False) -> Bounds:
        now = time.monotonic()
        if not fresh and self._bounds is not None and now - self._bounds[0] < self._bounds_ttl:
            return self._bounds[1]
        try:
            bounds = self._read_bounds()
        except (OSError, ValueError) as exc:
            raise ChainError(
                "cannot read the smart account's bounds",
                reason=Reason.CHAIN_UNAVAILABLE,
                account=self.account,
            ) from exc
        if bounds.deployed:  # a counterfactual account's bounds cannot change until it exists
            self._bounds = (now, bounds)
        return bounds

    def _read_bounds(self) -> Bounds:
        if not self.is_deployed():
            session_ok = self.config.session_key.lower() == self.session_address.lower()
            return Bounds(
                False,
                self.config.max_value,
                self.config.max_window,
                bool(self.config.payees),
                True,
                self.config.session_expiry if session_ok else 0,
            )
        acct = account_contract(self.w3, self.account).functions
        return Bounds(
            True,
            int(acct.maxValue().call()),
            int(acct.maxWindow().call()),
            bool(acct.payeesRestricted().call()),
            bool(acct.tokenAllowed(self.token).call()),
            int(acct.sessionKeyExpiry(self.session_address).call()),
        )

    def hot_balance(self) -> int:
        """What the account holds (read before every payment)."""
        return self._token_balance(self.account)

    def _token_balance(self, holder: str) -> int:
        """``balanceOf(holder)`` as one raw ``eth_call``: web3's contract machinery costs
        milliseconds more than the call itself, and this is on the payment path."""
        return self._token_read("0x70a08231" + holder[2:].lower().rjust(64, "0"))

    def permit2_allowance(self) -> int:
        """What Permit2 may still move of the account's token (``allowance(account, Permit2)``)."""
        from x402.mechanisms.evm.constants import PERMIT2_ADDRESS

        words = "".join(a[2:].lower().rjust(64, "0") for a in (self.account, PERMIT2_ADDRESS))
        return self._token_read("0xdd62ed3e" + words)

    def _token_read(self, data: str) -> int:
        answer = self._rpc.post(
            self._rpc_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_call",
                "params": [{"to": self.token, "data": data}, "latest"],
            },
        ).json()
        if "result" not in answer:
            raise ChainError(
                "cannot read a token balance", reason=Reason.CHAIN_UNAVAILABLE, account=self.account
            )
        return int(answer["result"], 16)

    def funds(self, hot_balance: int | None = None) -> Funds:
        """The hot balance (``hot_balance`` when the caller just read it), the vault's balance and
        what the account may still pull from it this period."""
        hot = self.hot_balance() if hot_balance is None else hot_balance
        vault_balance = self._token_balance(self.vault)
        if self.w3.eth.get_code(self.vault):
            available = int(owned_contract(self.w3, self.vault, "x402-vault").functions.available().call())
        else:
            available = self.config.allowance  # a fresh vault starts a full period
        return Funds(hot, vault_balance, min(available, vault_balance))

    def vault_terms(self) -> tuple[int, int]:
        """(allowance, period) of the vault, read on chain."""
        vault = owned_contract(self.w3, self.vault, "x402-vault").functions
        return int(vault.allowance().call()), int(vault.period().call())

    # ---- the payment flow's hooks ----

    def check_payment(self, asset: str, pay_to: str, amount: int, window: int) -> None:
        """Refuse, before anything is reserved or signed, what the account would refuse."""
        bounds = self.bounds()
        details = {"account": self.account, "amount": amount}
        if to_checksum_address(asset) != self.token or not bounds.token_allowed:
            raise WalletRefused(
                "the smart account does not pay with this token",
                reason=Reason.ONCHAIN_TOKEN,
                asset=asset,
                **details,
            )
        if amount > bounds.max_value:
            raise WalletRefused(
                f"the smart account caps one payment at {bounds.max_value} atomic units",
                reason=Reason.ONCHAIN_CAP,
                onchain_max=bounds.max_value,
                **details,
            )
        if window > bounds.max_window:
            raise WalletRefused(
                "the payment's validity window is longer than the account allows",
                reason=Reason.ONCHAIN_WINDOW,
                onchain_max_window=bounds.max_window,
                **details,
            )
        if bounds.session_expiry <= self._clock() + window:
            raise WalletRefused(
                "this session key is revoked or expires before the payment would",
                reason=Reason.SESSION_KEY_EXPIRED,
                **details,
            )
        if bounds.payees_restricted and not self._pays(pay_to, bounds.deployed):
            raise WalletRefused(
                "the smart account does not pay this payee",
                reason=Reason.ONCHAIN_PAYEE,
                pay_to=pay_to,
                **details,
            )

    def _pays(self, payee: str, deployed: bool) -> bool:
        """Whether a payee-restricted account pays ``payee`` (the creation list until deployed)."""
        if not deployed:
            return to_checksum_address(payee) in {to_checksum_address(p) for p in self.config.payees}
        return bool(account_contract(self.w3, self.account).functions.payeeAllowed(payee).call())

    def ensure_funds(self, needed: int) -> None:
        """Make the hot balance cover ``needed`` (every payment in flight), refilling from the
        vault up to ``top_up_to`` within the period's allowance; refuse if it cannot."""
        with self._funding:
            hot = self.hot_balance()
            if hot >= needed:  # the common case: one RPC call
                return
            funds = self.funds(hot)
            shortfall = needed - funds.hot_balance
            if funds.vault_available < shortfall:
                raise WalletRefused(
                    "the hot balance and what the vault still allows this period do not cover this payment",
                    reason=Reason.HOT_WALLET_EXHAUSTED,
                    account=self.account,
                    hot_balance=funds.hot_balance,
                    vault_available=funds.vault_available,
                    needed=needed,
                )
            amount = min(funds.vault_available, max(shortfall, self.top_up_to - funds.hot_balance))
            try:
                self.top_up(amount)
            except ChainError:
                # Another agent of this account may have taken the allowance at the same moment:
                # the payment is covered only if the balance says so.
                if self.hot_balance() < needed:
                    raise

    def ensure_permit2_allowance(self, needed: int) -> None:
        """Make Permit2's allowance cover ``needed`` (every Permit2 payment in flight).

        The account approves Permit2 only inside ``refill``, for the vault's per-period allowance
        (what a stolen session key could pull anyway); so a short allowance is answered by a
        refill of nothing, which also deploys a counterfactual account (Permit2 has no ERC-6492
        path). Refuses when even a fresh approval would not cover ``needed``.
        """
        with self._funding:
            if self.is_deployed() and self.permit2_allowance() >= needed:
                return
            self.top_up(0)
            allowance = self.permit2_allowance()
        if allowance < needed:
            raise WalletRefused(
                "Permit2's allowance from the smart account (one period of the vault) does not cover "
                "the Permit2 payments in flight",
                reason=Reason.ONCHAIN_BOUND,
                account=self.account,
                permit2_allowance=allowance,
                needed=needed,
            )

    def sign_permit2(self, authorization: Any, chain_id: int) -> str:
        """The x402 ``signature`` for a Permit2 payment (see ``SessionKeySigner.sign_permit2``);
        call ``ensure_permit2_allowance`` first: it deploys the account when needed."""
        if not self.bounds().deployed:
            raise WalletRefused(
                "Permit2 payments need the smart account deployed (there is no ERC-6492 path)",
                reason=Reason.ONCHAIN_BOUND,
                account=self.account,
            )
        return self._session.sign_permit2(authorization, chain_id)

    # ---- top-up through a user operation signed by the session key ----

    def gas_fields(self) -> GasFields:
        """Gas fields for a refill operation, within the account's caps at today's base fee and
        the chain's suggested priority fee (``eth_maxPriorityFeePerGas``)."""
        base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        deployed = self.is_deployed()
        return choose_fields(
            read_caps(self.w3, self.account, deployed),
            base_fee,
            deploying=not deployed,
            priority_fee=int(self.w3.eth.max_priority_fee),
        )

    def refill_operation(
        self, amount: int, gas: GasFields | None = None, *, dummy_signature: bool = False
    ) -> PackedUserOperation:
        """The session key's signed ``refill(amount)``; ``dummy_signature``: signed by a throwaway
        key instead, for the bundler's estimate (an op nobody can submit as a real top-up)."""
        gas = gas or self.gas_fields()
        entry_point = self.w3.eth.contract(address=ENTRY_POINT_V07, abi=entry_point_v07_abi())
        deployed = self.is_deployed()
        init_code = (
            b""
            if deployed
            else (bytes.fromhex(factory_address()[2:]) + create_sender_calldata(self.w3, self.config))
        )
        call = account_contract(self.w3, self.account).encode_abi("refill", args=[amount])
        op = PackedUserOperation(
            sender=self.account,
            nonce=int(entry_point.functions.getNonce(self.account, self._nonce_key).call()),
            initCode=init_code,
            callData=bytes.fromhex(call[2:]),
            accountGasLimits=pack_account_gas_limits(gas.verification_gas_limit, gas.call_gas_limit),
            preVerificationGas=gas.pre_verification_gas,
            gasFees=pack_gas_fees(gas.max_priority_fee_per_gas, gas.max_fee_per_gas),
            paymasterAndData=b"",
            signature=b"",
        )
        digest = user_op_hash_v07(op, ENTRY_POINT_V07, self.w3.eth.chain_id)
        signer = SessionKeySigner(self.account, secrets.token_bytes(32)) if dummy_signature else self._session
        return dataclasses.replace(op, signature=signer.sign_user_op_hash(digest))

    def top_up(self, amount: int) -> UserOpResult:
        """Pull ``amount`` from the vault into the hot account (deploying it first if needed)."""
        funded = self._fund_gas(self.gas_fields())
        gas, bundler_failed = self._estimated(amount, funded)
        if gas.max_cost > funded.max_cost:  # the bundler wants more than our own fields
            self._fund_gas(gas)
        result = submit_user_op(
            self.w3,
            self.refill_operation(amount, gas),
            bundler=None if bundler_failed else self._bundler,  # not waited on twice
            relayer_key=self.relayer,
            bundler_failed=bundler_failed,
        )
        self._bounds = None
        self.top_ups.append(result)
        return result

    def _estimated(self, amount: int, fields: GasFields) -> tuple[GasFields, ChainError | None]:
        """``fields`` with the bundler's gas limits (``eth_estimateUserOperationGas``) within the
        account's caps. Without a bundler, our own fields stay; with one that does not answer or
        refuses by a rule of its own, they stay too and its error comes back (the relayer's
        ``handleOps``, estimated by the node, sends the operation), unless there is no relayer."""
        if self._bundler is None:
            return fields, None
        try:
            estimate = self._bundler.estimate(self.refill_operation(amount, fields, dummy_signature=True))
        except ChainError as exc:
            passed = exc.reason == Reason.BUNDLER_UNAVAILABLE or exc.reason in BUNDLER_POLICY
            if not passed or self.relayer is None:
                raise
            return fields, exc
        return within_caps(estimate, read_caps(self.w3, self.account, self.is_deployed()), fields), None

    def _fund_gas(self, gas: GasFields) -> GasFields:
        """The account pays a session key's operations from its EntryPoint deposit alone: make
        the deposit cover this one first. Each refill tops the deposit up again in its execution;
        the relayer asks the account to move its ETH in only when that did not keep up. The
        operation that deploys the account pays its own prefund from the account's ETH (at most
        one period's ETH allowance: the account allows that once)."""
        if self.is_deployed():
            fund_deposit(self.w3, self.account, gas.max_cost, self.relayer)
            return gas
        missing = gas.max_cost - deposit_of(self.w3, self.account)
        if missing > min(int(self.w3.eth.get_balance(self.account)), DEFAULT_GAS_ALLOWANCE):
            raise ChainError(
                f"the undeployed account cannot prefund its first operation ({missing} wei)",
                reason=Reason.GAS_DEPOSIT_LOW,
                account=self.account,
                needed=missing,
            )
        return gas

    def close(self) -> None:
        self._rpc.close()
        if self._bundler is not None:
            self._bundler.close()

    def status(self) -> dict[str, Any]:
        bounds, funds = self.bounds(fresh=True), self.funds()
        return {
            "account": self.account,
            "vault": self.vault,
            "token": self.token,
            "session_key": self.session_address,
            "bundler": self._bundler.url if self._bundler else None,  # placeholders unexpanded
            **dataclasses.asdict(bounds),
            **dataclasses.asdict(funds),
            **self._gas_status(bounds.deployed),
        }

    def _gas_status(self, deployed: bool) -> dict[str, Any]:
        """The gas deposit, its ETH allowance and what a stolen session key could burn."""
        budget = read_budget(self.w3, self.account, deployed)
        return {
            "gas_deposit": budget.deposit,
            "gas_allowance": budget.allowance,
            "gas_period": budget.period,
            "gas_allowance_left": budget.left,
            "gas_caps": dataclasses.asdict(read_caps(self.w3, self.account, deployed)),
            "stolen_key_bound": budget.stolen_key_bound,
        }


def account_config(setup: AccountSetup) -> AccountConfig:
    return AccountConfig(
        setup.owner,
        setup.session_key,
        setup.session_expiry,
        setup.token,
        setup.max_value,
        setup.max_window,
        setup.allowance,
        setup.period,
        bytes.fromhex(setup.salt.removeprefix("0x")),
        tuple(setup.payees),
    )


def open_hot_wallet(home: AgentHome) -> HotWallet:
    """The home's smart account with its session key decrypted (the password never leaves)."""
    from eth_account import Account

    signer = home.config.signer
    if not isinstance(signer, SmartAccountConfig):
        raise ConfigError(
            "this agent home pays from a plain key, not a smart account", reason=Reason.NOT_A_SMART_ACCOUNT
        )
    rpc_url = home.config.rpc_urls.get(signer.network)
    if rpc_url is None:
        raise ConfigError(
            f"no RPC URL for {signer.network} in the home's rpc_urls", reason=Reason.CONFIG_INVALID
        )
    from .session_keys import settle_pending_rotation  # it builds on this module

    w3 = Web3(Web3.HTTPProvider(rpc_url))
    settle_pending_rotation(home, w3)  # a rotation the chain shows done: pay with the new key
    password = home.keystore_password()
    session = LocalKeySigner.from_keystore(home.path(signer.keystore), password)
    relayer = None
    if signer.relayer_keystore is not None:
        relayer = Account.from_key(
            LocalKeySigner.from_keystore(home.path(signer.relayer_keystore), password).private_key_bytes()
        )
    bundler = BundlerClient(signer.bundler_url, ENTRY_POINT_V07) if signer.bundler_url else None
    return HotWallet(
        w3,
        account_config(signer.setup),
        signer.account,
        signer.vault,
        session.private_key_bytes(),
        bundler=bundler,
        relayer=relayer,
        top_up_to=signer.top_up_to,
    )
