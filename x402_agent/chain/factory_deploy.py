"""`x402-agent wallet deploy-factory`: the account factory on a chain, once, by anyone.

Every piece goes through the deterministic deployment proxy (CREATE2, zero salt), so the factory
lands at the same address on every chain and an account's address means the same there. The
code found at each address is compared with the runtime this project ships (its immutables, which
are addresses we compute, masked first): another contract there is refused before anything is
sent, and so is a chain without the proxy. A second run finds everything and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3

from ..errors import ChainError, FactoryError
from ..reasons import Reason
from .account import artifact, send_transaction
from .entrypoint import (
    CREATE2_DEPLOYER,
    ENTRY_POINT_V07,
    ENTRY_POINT_V07_SALT,
    entry_point_v07_creation_code,
)
from .factory import (
    FACTORY_SALT,
    factory_address,
    factory_init_code,
    implementation_addresses,
    owner_text_address,
    owner_text_init_code,
)

# eth_estimateGas is exact for the creation itself; the margin covers the proxy's own CREATE2 call
# forwarding 63/64 of what is left, which the estimate already includes but a node may round.
_GAS_MARGIN_PERCENT = 20


@dataclass(frozen=True)
class _Expected:
    """A contract the factory needs: where it sits and the runtime the project ships for it."""

    name: str
    address: ChecksumAddress
    artifact: str
    immutables: tuple[str, ...]  # the addresses written into its runtime at construction


def _expected() -> list[_Expected]:
    text = owner_text_address()
    account_impl, vault_impl = implementation_addresses()
    return [
        _Expected("OwnerActionText", text, "OwnerActionText", ()),
        _Expected("X402AccountFactory", factory_address(), "X402AccountFactory", (account_impl, vault_impl)),
        _Expected("X402Account implementation", account_impl, "X402Account", (ENTRY_POINT_V07, text)),
        _Expected("AllowanceVault implementation", vault_impl, "AllowanceVault", (text,)),
    ]


def _matches(code: bytes, expected: _Expected) -> bool:
    """``code`` is the shipped runtime once the immutables (solc writes each as a 32-byte word,
    left as zeros in the artifact) are zeroed; an immutable with another value stays and differs."""
    for value in expected.immutables:
        code = code.replace(bytes(12) + bytes.fromhex(value[2:]), bytes(32))
    return code == bytes.fromhex(artifact(expected.artifact)["deployedBytecode"].removeprefix("0x"))


def _check_no_foreign_code(w3: Web3) -> bool:
    """Raise if a contract other than ours sits at any of the factory's addresses; return True
    when the factory and all it created are there (nothing to do)."""
    complete = True
    for expected in _expected():
        code = bytes(w3.eth.get_code(expected.address))
        if not code:
            complete = False
        elif not _matches(code, expected):
            raise FactoryError(
                f"{expected.address} holds a contract other than the project's {expected.name}: "
                "refusing to use it or deploy over it",
                reason=Reason.FACTORY_BYTECODE_MISMATCH,
                address=expected.address,
                contract=expected.name,
            )
    return complete


def require_factory(w3: Web3) -> ChecksumAddress:
    """The factory's address once it is there with the shipped code; ``FactoryError`` otherwise
    (missing: run deploy-factory; foreign code: refused)."""
    if not _check_no_foreign_code(w3):
        raise FactoryError(
            f"the account factory is not deployed on chain {w3.eth.chain_id} (at {factory_address()}): "
            "run `x402-agent wallet deploy-factory` once for this chain",
            reason=Reason.FACTORY_MISSING,
            address=factory_address(),
        )
    return factory_address()


@dataclass
class FactoryDeployment:
    """What deploy-factory found and did: ``transactions`` is empty when all was there."""

    factory: ChecksumAddress
    owner_action_text: ChecksumAddress
    entry_point: ChecksumAddress
    chain_id: int
    transactions: list[dict[str, object]] = field(default_factory=list)

    @property
    def already_deployed(self) -> bool:
        return not self.transactions

    @property
    def gas_used(self) -> int:
        return sum(int(str(tx["gas_used"])) for tx in self.transactions)


def deploy_factory_once(w3: Web3, funder: LocalAccount) -> FactoryDeployment:
    """Deploy what is missing of EntryPoint v0.7, OwnerActionText and the factory from ``funder``.

    Checks first, sends after: the proxy must exist, no address may hold foreign code, and the
    funder must hold enough ETH for every missing piece at today's fee (else nothing is sent).
    An RPC failure or a reverted deployment midway is ``ChainError``: a second run finishes the
    rest (what landed is found and kept).
    """
    from web3.exceptions import Web3Exception

    try:
        return _deploy_missing(w3, funder)
    except (OSError, Web3Exception, RuntimeError) as exc:  # requests' errors are OSErrors
        # Only our own words (a reverted transaction's hash): an RPC error's text may quote the
        # RPC URL, and a provider's URL may hold its API key.
        words = str(exc)[:200] if type(exc) is RuntimeError else type(exc).__name__
        raise ChainError(
            f"the factory deployment stopped ({words}): run it again to finish (what landed is kept)"
        ) from exc


def _deploy_missing(w3: Web3, funder: LocalAccount) -> FactoryDeployment:
    chain_id = int(w3.eth.chain_id)
    report = FactoryDeployment(factory_address(), owner_text_address(), ENTRY_POINT_V07, chain_id)
    if not w3.eth.get_code(CREATE2_DEPLOYER):
        raise FactoryError(
            f"chain {chain_id} has no deterministic deployment proxy at {CREATE2_DEPLOYER}",
            reason=Reason.CREATE2_DEPLOYER_MISSING,
            address=CREATE2_DEPLOYER,
        )
    if _check_no_foreign_code(w3):
        return report
    needed: list[tuple[str, bytes, int]] = []  # (what, CREATE2 payload, gas limit)
    for what, address, payload in (
        # The factory's constructor takes the canonical EntryPoint: on a chain without one (no
        # bundler serves it), it lands where every bundler expects it.
        ("EntryPoint v0.7", ENTRY_POINT_V07, ENTRY_POINT_V07_SALT + entry_point_v07_creation_code()),
        ("OwnerActionText", owner_text_address(), FACTORY_SALT + owner_text_init_code()),
        ("X402AccountFactory", factory_address(), FACTORY_SALT + factory_init_code()),
    ):
        if not w3.eth.get_code(address):
            estimate = w3.eth.estimate_gas({"from": funder.address, "to": CREATE2_DEPLOYER, "data": payload})
            needed.append((what, payload, estimate * (100 + _GAS_MARGIN_PERCENT) // 100))
    max_fee = 2 * int(w3.eth.gas_price) + 1  # what send_transaction offers per gas
    cost = sum(gas for _, _, gas in needed) * max_fee
    balance = int(w3.eth.get_balance(funder.address))
    if balance < cost:
        raise FactoryError(
            f"{funder.address} holds {balance} wei; deploying {', '.join(w for w, _, _ in needed)} "
            f"may cost up to {cost} wei at the current fee",
            reason=Reason.DEPLOYER_UNFUNDED,
            address=funder.address,
            balance_wei=balance,
            needed_wei=cost,
        )
    for what, payload, gas in needed:
        receipt = send_transaction(w3, funder, {"to": CREATE2_DEPLOYER, "data": payload, "gas": gas})
        report.transactions.append(
            {"deployed": what, "hash": receipt["transactionHash"].to_0x_hex(), "gas_used": receipt["gasUsed"]}
        )
    require_factory(w3)  # every piece there, with our code
    return report


__all__ = ["FactoryDeployment", "deploy_factory_once", "require_factory"]
