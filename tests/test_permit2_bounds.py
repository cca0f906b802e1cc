"""A stolen session key signing Permit2 transfers directly is held to the account's bounds
(issue 13 item 5).

Real parts only: the session's anvil with Permit2 (compiled from npm @uniswap/v4-periphery) and
our x402 exact/upto Permit2 proxies at their canonical addresses, the world's USDC and EURC, and a
smart-account home as the devnet provisioning builds it (X402Account and vault made by the
factory, owned by the device simulator through HWI). The thief holds the session key and a funded
key of its own, and calls the proxies, Permit2 and ``refill`` itself: no facilitator is involved.

What the chain enforces (X402Account.isValidSignature's Permit2 path, ``refill``'s approval):
a Permit2 PermitWitnessTransferFrom signed by a live session key is accepted only for an
allowed token, at most ``maxValue``, an x402 proxy as spender, an allowed payee when payees are
restricted and a deadline within ``maxWindow``; Permit2's allowance is set only by ``refill``, to
the vault's per-period allowance. So the thief takes at most the hot balance plus what the vault
still allows this period.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from chain_reads import rpc, token_balance
from eth_abi.abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from test_permit2_world import balance_changes, pay
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint
from x402 import x402Client
from x402.http import decode_payment_response_header
from x402.mechanisms.evm.constants import (
    PERMIT2_ADDRESS,
    X402_EXACT_PERMIT2_PROXY_ABI,
    X402_EXACT_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ABI,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.upto import UptoEvmClientScheme

from x402_agent.chain.account import account_contract, owned_contract, run_owner_action, send_transaction
from x402_agent.chain.session_signer import Permit2Transfer, SessionKeySigner
from x402_agent.chain.wallet import HotWallet, WalletRefused, open_hot_wallet
from x402_agent.device.hwi import DEFAULT_APPROVAL_PATH, HwiDevice
from x402_agent.devnet import WorldInfo
from x402_agent.devnet.permit2 import permit2_artifact
from x402_agent.devnet.provision import provision_smart_account_home
from x402_agent.home import AgentHome
from x402_agent.signer import LocalKeySigner

ERC1271_MAGIC = bytes.fromhex("1626ba7e")
ERC1271_INVALID = bytes.fromhex("ffffffff")
INVALID_CONTRACT_SIGNATURE = keccak(text="InvalidContractSignature()")[:4]
_ERC20_ABI = [
    {
        "type": "function",
        "name": name,
        "stateMutability": "nonpayable",
        "inputs": [{"name": "a", "type": "address"}, {"name": "b", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
    for name in ("transfer", "approve")
] + [
    {
        "type": "function",
        "name": "allowance",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


@dataclass
class Theft:
    """The victim's account and what the thief holds: the session key and a funded key."""

    world: WorldInfo
    w3: Web3
    home: AgentHome
    wallet: HotWallet
    stolen: SessionKeySigner
    thief: LocalAccount

    @property
    def account(self) -> str:
        return self.wallet.account

    def usdc(self, holder: str) -> int:
        return token_balance(self.world.rpc_url, self.world.usdc.address, holder)

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def transfer(self, amount: int, *, upto: bool = False, **over: Any) -> Permit2Transfer:
        """A permit to an x402 proxy paying the thief, within the window unless ``over`` says."""
        fields: dict[str, Any] = {
            "token": Web3.to_checksum_address(self.world.usdc.address),
            "amount": amount,
            "spender": X402_UPTO_PERMIT2_PROXY_ADDRESS if upto else X402_EXACT_PERMIT2_PROXY_ADDRESS,
            "nonce": secrets.randbits(256),
            "deadline": self.now() + 300,
            "to": self.thief.address,
            "valid_after": 0,
            "facilitator": self.thief.address if upto else None,
        }
        return Permit2Transfer(**{**fields, **over})

    def sign(self, transfer: Permit2Transfer) -> bytes:
        return bytes.fromhex(self.stolen.sign_permit2(transfer, self.world.chain_id).removeprefix("0x"))

    def settle_call(self, transfer: Permit2Transfer, signature: bytes, amount: int | None = None) -> str:
        """The proxy's ``settle`` calldata for ``transfer`` (upto: settling ``amount``)."""
        permit = ((transfer.token, transfer.amount), transfer.nonce, transfer.deadline)
        if transfer.facilitator is None:
            proxy = self.w3.eth.contract(
                address=Web3.to_checksum_address(X402_EXACT_PERMIT2_PROXY_ADDRESS),
                abi=X402_EXACT_PERMIT2_PROXY_ABI,
            )
            witness: tuple[Any, ...] = (transfer.to, transfer.valid_after)
            return str(proxy.encode_abi("settle", args=[permit, self.account, witness, signature]))
        proxy = self.w3.eth.contract(
            address=Web3.to_checksum_address(X402_UPTO_PERMIT2_PROXY_ADDRESS), abi=X402_UPTO_PERMIT2_PROXY_ABI
        )
        witness = (transfer.to, transfer.facilitator, transfer.valid_after)
        settled = transfer.amount if amount is None else amount
        return str(proxy.encode_abi("settle", args=[permit, settled, self.account, witness, signature]))

    def settle(self, transfer: Permit2Transfer, amount: int | None = None) -> None:
        """The thief settles a permit the stolen key signed (it must go through)."""
        data = self.settle_call(transfer, self.sign(transfer), amount)
        send_transaction(self.w3, self.thief, {"to": transfer.spender, "data": data})

    def refused(self, to: str, data: str) -> bytes:
        """The chain refuses the thief's call: the error selector of the eth_call, after checking
        that the same call sent as a real transaction reverts and moves nothing."""
        answer = self.w3.provider.make_request(
            RPCEndpoint("eth_call"), [{"from": self.thief.address, "to": to, "data": data}, "latest"]
        )
        error = answer.get("error")
        assert error is not None, f"the call went through: {answer}"
        before = self.usdc(self.account), self.usdc(self.thief.address)
        tx: dict[str, Any] = {
            "chainId": self.w3.eth.chain_id,
            "nonce": self.w3.eth.get_transaction_count(self.thief.address, "pending"),
            "to": to,
            "data": data,
            "gas": 400_000,
            "maxFeePerGas": 2 * self.w3.eth.gas_price + 1,
            "maxPriorityFeePerGas": 1,
        }
        signed = self.thief.sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        )
        assert receipt["status"] == 0
        assert (self.usdc(self.account), self.usdc(self.thief.address)) == before
        return bytes.fromhex(str(error["data"]).removeprefix("0x"))[:4]

    def is_valid(self, digest: bytes, envelope: bytes) -> bytes:
        return bytes(
            account_contract(self.w3, self.account).functions.isValidSignature(digest, envelope).call()
        )

    def owner_action(self, action: str, *args: object) -> None:
        device = HwiDevice.at("trezor", self.world.device_path)
        try:
            run_owner_action(
                self.w3,
                self.account,
                action,
                args,
                lambda line: device.sign_message(line, DEFAULT_APPROVAL_PATH),
                self.world.payer_private_key,
            )
        finally:
            device.close()


@pytest.fixture(scope="module")
def theft(world: WorldInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Theft]:
    home = provision_smart_account_home(world, Path(tmp_path_factory.mktemp("permit2-bounds")))
    wallet = open_hot_wallet(home)
    signer = home.config.signer
    assert signer.kind == "smart_account"
    key = LocalKeySigner.from_keystore(home.path(signer.keystore), home.keystore_password())
    thief: LocalAccount = Account.create()
    rpc(world.rpc_url, "anvil_setBalance", thief.address, hex(10**18))
    w3 = Web3(Web3.HTTPProvider(world.rpc_url))
    try:
        yield Theft(world, w3, home, wallet, SessionKeySigner(wallet.account, key.private_key_bytes()), thief)
    finally:
        wallet.close()


def _usdc_contract(theft: Theft) -> Contract:
    return theft.w3.eth.contract(address=Web3.to_checksum_address(theft.world.usdc.address), abi=_ERC20_ABI)


# ---------------------------------------------------------------- the allowance and the envelope


def test_refill_gives_permit2_a_finite_allowance_of_one_vault_period(theft: Theft) -> None:
    usdc = _usdc_contract(theft)
    allowance, _period = theft.wallet.vault_terms()
    assert theft.wallet.permit2_allowance() == 0  # created, never refilled: nothing approved
    theft.wallet.ensure_permit2_allowance(theft.wallet.bounds().max_value)
    assert theft.wallet.permit2_allowance() == allowance < 2**255
    assert usdc.functions.allowance(theft.account, PERMIT2_ADDRESS).call() == allowance
    theft.wallet.ensure_funds(500_000)  # the agent's usual top-up leaves the approval as it is
    assert theft.wallet.permit2_allowance() == allowance
    # More than one period's allowance in flight: refused before anything is signed.
    with pytest.raises(WalletRefused) as refused:
        theft.wallet.ensure_permit2_allowance(allowance + 1)
    assert refused.value.reason == "onchain_bound"


def test_envelope_digest_is_what_permit2_builds_and_malformed_envelopes_answer_invalid(theft: Theft) -> None:
    transfer = theft.transfer(1_000)
    digest = transfer.digest(theft.world.chain_id)
    envelope = theft.sign(transfer)
    assert len(envelope) == 321
    assert theft.is_valid(digest, envelope) == ERC1271_MAGIC
    # Each of these answers "invalid" (never a revert: Permit2 and facilitators call it).
    dirty_address = envelope[:12] + b"\x01" + envelope[13:]  # nonzero bits above a token address
    malformed = [
        b"",
        envelope[:-1],
        envelope + b"\x00",
        dirty_address,
        secrets.token_bytes(321),
        envelope[:256] + b"\x00" * 65,
        envelope[:-1] + b"\x05",  # v neither 27 nor 28
    ]
    for bad in malformed:
        assert theft.is_valid(digest, bad) == ERC1271_INVALID, bad.hex()
    assert theft.is_valid(keccak(b"another digest"), envelope) == ERC1271_INVALID
    # The digest is under Permit2's own domain (the settling tests show Permit2 rebuilds it).
    permit2 = theft.w3.eth.contract(
        address=Web3.to_checksum_address(PERMIT2_ADDRESS), abi=permit2_artifact("Permit2")["abi"]
    )
    assert permit2.functions.DOMAIN_SEPARATOR().call() == _domain(theft)


def _domain(theft: Theft) -> bytes:
    typehash = keccak(text="EIP712Domain(string name,uint256 chainId,address verifyingContract)")
    return keccak(
        encode(
            ["bytes32", "bytes32", "uint256", "address"],
            [typehash, keccak(text="Permit2"), theft.world.chain_id, PERMIT2_ADDRESS],
        )
    )


def test_a_permit_for_one_account_is_not_valid_for_another_with_the_same_key(theft: Theft) -> None:
    """Permit2's digest does not name the owner: the session signature binds the account."""
    transfer = theft.transfer(1_000)
    digest = transfer.digest(theft.world.chain_id)
    other = SessionKeySigner(Account.create().address, b"\x11" * 32)
    forged = bytes.fromhex(other.sign_permit2(transfer, theft.world.chain_id).removeprefix("0x"))
    ours = theft.sign(transfer)
    # Same permit fields, a signature bound to another account: refused here.
    assert forged[:256] == ours[:256] and forged[256:] != ours[256:]
    assert theft.is_valid(digest, forged) == ERC1271_INVALID


# ---------------------------------------------------------------- within bounds: settles


def test_well_formed_permits_within_bounds_settle_through_both_proxies(theft: Theft) -> None:
    cap = theft.wallet.bounds().max_value
    before = theft.usdc(theft.account), theft.usdc(theft.thief.address)
    theft.settle(theft.transfer(cap))  # exact, at the cap
    theft.settle(theft.transfer(cap, upto=True), amount=cap // 4)  # upto: settles a quarter
    moved = cap + cap // 4
    assert (theft.usdc(theft.account), theft.usdc(theft.thief.address)) == (
        before[0] - moved,
        before[1] + moved,
    )


class _SessionKeyTypedSigner:
    """The SDK client's signer for the account: its Permit2 typed data signed by the session key
    into the account's envelope (glue between the real SDK client and our signer, not a fake)."""

    def __init__(self, signer: SessionKeySigner) -> None:
        self._signer = signer

    @property
    def address(self) -> str:
        return self._signer.address

    def sign_typed_data(self, domain: Any, types: Any, primary_type: str, message: dict[str, Any]) -> bytes:
        assert primary_type == "PermitWitnessTransferFrom"
        chain_id = int(domain["chainId"] if isinstance(domain, dict) else domain.chain_id)
        witness = message["witness"]
        transfer = Permit2Transfer(
            token=Web3.to_checksum_address(message["permitted"]["token"]),
            amount=int(message["permitted"]["amount"]),
            spender=Web3.to_checksum_address(message["spender"]),
            nonce=int(message["nonce"]),
            deadline=int(message["deadline"]),
            to=Web3.to_checksum_address(witness["to"]),
            valid_after=int(witness["validAfter"]),
            facilitator=witness.get("facilitator"),
        )
        return bytes.fromhex(self._signer.sign_permit2(transfer, chain_id).removeprefix("0x"))


def test_the_sdks_server_and_facilitator_settle_the_accounts_permit2_payments(theft: Theft) -> None:
    """The official SDK's client, server and facilitator: exact over Permit2 and upto below its
    maximum, paid from the account with the session key's envelope (strict ERC-1271)."""
    world = theft.world
    adapter = _SessionKeyTypedSigner(theft.stolen)
    client = x402Client()
    client.register(world.network, ExactEvmScheme(signer=adapter))
    client.register(world.network, UptoEvmClientScheme(adapter))
    client.set_spend_controls({"allowed_assets": [{"network": world.network, "asset": world.usdc.address}]})
    for path, query, price in (("/v2/permit2", "", 1_000), ("/v2/metered", "?used=2345", 2_345)):
        route = world.route("GET", path)
        with balance_changes(world, theft.account, route.pay_to or "") as moved:
            response = pay(client, route.url + query)
        assert response.status_code == 200, response.headers
        settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
        assert settled.success and settled.payer == theft.account
        assert moved == {theft.account: -price, route.pay_to: price}


# ---------------------------------------------------------------- outside bounds: refused on chain


def test_over_cap_is_refused_by_the_chain(theft: Theft) -> None:
    cap = theft.wallet.bounds().max_value
    for upto in (False, True):
        transfer = theft.transfer(cap + 1, upto=upto)
        # upto: even settling only the cap is refused, the permit itself is over it.
        data = theft.settle_call(transfer, theft.sign(transfer), cap if upto else None)
        assert theft.refused(transfer.spender, data) == INVALID_CONTRACT_SIGNATURE


def test_deadline_beyond_the_window_is_refused_by_the_chain(theft: Theft) -> None:
    window = theft.wallet.bounds().max_window
    transfer = theft.transfer(1_000, deadline=theft.now() + window + 120)
    data = theft.settle_call(transfer, theft.sign(transfer))
    assert theft.refused(transfer.spender, data) == INVALID_CONTRACT_SIGNATURE
    # A window starting later (validAfter) is measured from its start.
    later = theft.now() + 60
    transfer = theft.transfer(1_000, valid_after=later, deadline=later + window + 120)
    assert theft.is_valid(transfer.digest(theft.world.chain_id), theft.sign(transfer)) == ERC1271_INVALID


def test_wrong_token_is_refused_by_the_chain_though_held_and_approved(theft: Theft) -> None:
    """EURC on the main chain: the account holds it and the owner approved Permit2 for it (the
    device signs that execute), so only the account's token bound stands in the way."""
    world = theft.world
    eurc = Web3.to_checksum_address(world.eurc.address)
    send_transaction(
        theft.w3,
        world.payer_private_key,
        {"to": eurc, "data": _usdc_contract(theft).encode_abi("transfer", args=[theft.account, 1_000_000])},
    )
    approve = bytes.fromhex(_usdc_contract(theft).encode_abi("approve", args=[PERMIT2_ADDRESS, 10**6])[2:])
    theft.owner_action("execute", eurc, 0, approve)
    transfer = theft.transfer(1_000, token=eurc)
    data = theft.settle_call(transfer, theft.sign(transfer))
    assert theft.refused(transfer.spender, data) == INVALID_CONTRACT_SIGNATURE
    assert token_balance(world.rpc_url, eurc, theft.account) == 1_000_000


def test_wrong_spender_is_refused_by_the_chain(theft: Theft) -> None:
    """The thief calls Permit2 itself as spender: signed for itself (not an x402 proxy), or
    replaying a permit signed for the proxy (the digest then names another spender)."""
    permit2 = theft.w3.eth.contract(
        address=Web3.to_checksum_address(PERMIT2_ADDRESS), abi=permit2_artifact("Permit2")["abi"]
    )
    type_string = (
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)"
    )
    witness_typehash = keccak(text="Witness(address to,uint256 validAfter)")
    for transfer in (theft.transfer(1_000, spender=theft.thief.address), theft.transfer(1_000)):
        witness = keccak(
            encode(["bytes32", "address", "uint256"], [witness_typehash, transfer.to, transfer.valid_after])
        )
        data = permit2.encode_abi(
            "permitWitnessTransferFrom",
            args=[
                ((transfer.token, transfer.amount), transfer.nonce, transfer.deadline),
                (theft.thief.address, transfer.amount),
                theft.account,
                witness,
                type_string,
                theft.sign(transfer),
            ],
        )
        assert theft.refused(PERMIT2_ADDRESS, data) == INVALID_CONTRACT_SIGNATURE
    # Nor can it grant itself a Permit2 allowance by signature (AllowanceTransfer's permit): no
    # envelope rebuilds that digest, whatever it carries.
    transfer = theft.transfer(1_000, spender=theft.thief.address)
    details = (transfer.token, 10**6, theft.now() + 300, 0)
    grant = permit2.encode_abi(
        "permit(address,((address,uint160,uint48,uint48),address,uint256),bytes)",
        args=[theft.account, (details, theft.thief.address, transfer.deadline), theft.sign(transfer)],
    )
    assert theft.refused(PERMIT2_ADDRESS, grant) == INVALID_CONTRACT_SIGNATURE


def test_wrong_payee_is_refused_by_the_chain_on_a_payee_restricted_account(theft: Theft) -> None:
    bounds = theft.wallet.bounds(fresh=True)
    payee = Account.create().address
    theft.owner_action("setPayee", payee, True)
    theft.owner_action("setPolicy", bounds.max_value, bounds.max_window, True)
    try:
        for upto in (False, True):
            transfer = theft.transfer(1_000, upto=upto)  # paying the thief, not on the list
            data = theft.settle_call(transfer, theft.sign(transfer))
            assert theft.refused(transfer.spender, data) == INVALID_CONTRACT_SIGNATURE
        # The listed payee is paid (the restriction is what refused the thief).
        before = theft.usdc(payee)
        theft.settle(theft.transfer(1_000, to=payee))
        assert theft.usdc(payee) == before + 1_000
    finally:
        theft.owner_action("setPolicy", bounds.max_value, bounds.max_window, False)


# ---------------------------------------------------------------- total loss


def test_total_loss_over_many_attempts_is_within_hot_balance_plus_period_allowance(theft: Theft) -> None:
    """The thief pays itself the cap again and again, refilling from the vault (anyone may call
    refill) whenever the balance or Permit2's allowance runs short, until nothing moves."""
    w3, account = theft.w3, theft.account
    vault = owned_contract(w3, theft.wallet.vault, "x402-vault").functions
    cap = theft.wallet.bounds().max_value
    hot, available = theft.usdc(account), int(vault.available().call())
    bound = hot + available
    thief_before = theft.usdc(theft.thief.address)
    refill = account_contract(w3, account)
    attempts = refused = 0
    while attempts < 200:
        attempts += 1
        balance, allowance = theft.usdc(account), theft.wallet.permit2_allowance()
        left = int(vault.available().call())
        pull = min(left, 5 * cap) if balance < cap else 0
        if pull or allowance < min(balance, cap):  # pull, or just renew Permit2's allowance
            send_transaction(
                w3, theft.thief, {"to": account, "data": refill.encode_abi("refill", args=[pull])}
            )
            continue
        if balance > 0:
            theft.settle(theft.transfer(min(balance, cap)))
            continue
        # Nothing left to pull or to move: every further try fails.
        transfer = theft.transfer(cap)
        assert theft.refused(transfer.spender, theft.settle_call(transfer, theft.sign(transfer)))
        over = refill.encode_abi("refill", args=[1])
        assert theft.refused(account, over)
        refused += 2
        break
    stolen = theft.usdc(theft.thief.address) - thief_before
    print(f"\nhot {hot} + vault left {available} = bound {bound}; stolen {stolen} in {attempts} steps")
    assert stolen == bound  # everything reachable, and not a unit more
    assert theft.usdc(account) == 0 and refused == 2
    allowance_per_period, _ = theft.wallet.vault_terms()
    assert stolen <= hot + allowance_per_period


def test_sign_permit2_takes_the_sdks_authorizations(theft: Theft) -> None:
    """``sign_permit2`` takes the SDK's authorization objects as H6's schemes hand them over."""
    from x402.mechanisms.evm.types import (
        ExactPermit2Authorization,
        ExactPermit2TokenPermissions,
        ExactPermit2Witness,
        UptoPermit2Authorization,
        UptoPermit2Witness,
    )

    plain = theft.transfer(1_000)
    permitted = ExactPermit2TokenPermissions(token=plain.token, amount=str(plain.amount))
    exact = ExactPermit2Authorization(
        from_address=theft.account,
        permitted=permitted,
        spender=plain.spender,
        nonce=str(plain.nonce),
        deadline=str(plain.deadline),
        witness=ExactPermit2Witness(to=plain.to, valid_after="0"),
    )
    assert theft.stolen.sign_permit2(exact, theft.world.chain_id) == "0x" + theft.sign(plain).hex()
    upto_plain = replace(plain, spender=X402_UPTO_PERMIT2_PROXY_ADDRESS, facilitator=theft.thief.address)
    upto = UptoPermit2Authorization(
        from_address=theft.account,
        permitted=permitted,
        spender=X402_UPTO_PERMIT2_PROXY_ADDRESS,
        nonce=str(plain.nonce),
        deadline=str(plain.deadline),
        witness=UptoPermit2Witness(to=plain.to, facilitator=theft.thief.address, valid_after="0"),
    )
    assert theft.stolen.sign_permit2(upto, theft.world.chain_id) == "0x" + theft.sign(upto_plain).hex()
    with pytest.raises(ValueError):
        SessionKeySigner(Account.create().address, b"\x22" * 32).sign_permit2(exact, theft.world.chain_id)


def test_refill_without_a_vault_still_runs_and_approves_nothing(theft: Theft) -> None:
    """An owner may detach the vault: refill then only tops up the gas deposit."""
    vault, zero = theft.wallet.vault, "0x" + "00" * 20
    allowance = theft.wallet.permit2_allowance()
    theft.owner_action("setVault", zero)
    try:
        data = account_contract(theft.w3, theft.account).encode_abi("refill", args=[0])
        send_transaction(theft.w3, theft.thief, {"to": theft.account, "data": data})
        assert theft.wallet.permit2_allowance() == allowance
    finally:
        theft.owner_action("setVault", vault)


def test_a_counterfactual_account_is_deployed_and_approved_before_its_first_permit2_payment(
    world: WorldInfo, tmp_path: Path
) -> None:
    """Permit2 has no ERC-6492 path: signing waits for the account, which the allowance's
    refill deploys (the session key's user operation, as for a first top-up)."""
    home = provision_smart_account_home(world, tmp_path / "counterfactual", deploy=False)
    wallet = open_hot_wallet(home)
    try:
        assert not wallet.is_deployed()
        transfer = Permit2Transfer(
            Web3.to_checksum_address(world.usdc.address),
            1_000,
            X402_EXACT_PERMIT2_PROXY_ADDRESS,
            secrets.randbits(256),
            int(wallet.w3.eth.get_block("latest")["timestamp"]) + 300,
            Account.create().address,
            0,
        )
        with pytest.raises(WalletRefused):
            wallet.sign_permit2(transfer, world.chain_id)
        wallet.ensure_permit2_allowance(1_000)
        assert wallet.is_deployed() and wallet.permit2_allowance() == wallet.vault_terms()[0]
        envelope = bytes.fromhex(wallet.sign_permit2(transfer, world.chain_id).removeprefix("0x"))
        answer = account_contract(wallet.w3, wallet.account).functions.isValidSignature(
            transfer.digest(world.chain_id), envelope
        )
        assert bytes(answer.call()) == ERC1271_MAGIC
    finally:
        wallet.close()
