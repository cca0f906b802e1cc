"""The policy a smart account anchors on chain: read it, and set it with a device-signed owner action.

``policy approve`` on a smart-account home has the device sign two things: the policy's approval
text and the owner action ``setPolicyAnchor(digest, version)``; the relayer sends the action. The
agent then pays only under the anchored policy (``PolicyStore.check_anchor``), so files restored
on the host cannot bring back an older policy: the contract only lets the version rise.

The check before each payment costs one raw ``eth_call`` (no code check first: an account with
no code answers with no bytes, "not deployed, nothing anchored yet"). It is not cached: a cache
keyed by the block number would cost an ``eth_blockNumber`` read per payment anyway, no cheaper
than the call itself; through web3's contract machinery the same read costs ~4 ms of CPU, raw
about 1 ms (measured on anvil, loopback).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.types import RPCEndpoint

from ..errors import ChainError, ConfigError
from ..home import AgentHome, SmartAccountConfig
from ..policy import Policy
from ..policy_store import PolicyAnchor
from ..reasons import Reason
from .account import SignLine, run_owner_action
from .factory import create_account
from .ownership import smart_account_rpc

if TYPE_CHECKING:
    from .wallet import HotWallet

_POLICY_ANCHOR = keccak(b"policyAnchor()")[:4]


def _unreadable(account: str) -> ChainError:
    return ChainError(
        "cannot read the smart account's policy anchor", reason=Reason.CHAIN_UNAVAILABLE, account=account
    )


def _call(account: str) -> list[object]:
    return [{"to": to_checksum_address(account), "data": "0x" + _POLICY_ANCHOR.hex()}, "latest"]


def read_anchor(w3: Web3, account: str) -> PolicyAnchor | None:
    """The account's anchored policy; None when the account has no code yet."""
    try:
        answer = w3.provider.make_request(RPCEndpoint("eth_call"), _call(account))
    except (OSError, ValueError) as exc:
        raise _unreadable(account) from exc
    return _from_answer(answer, account)


def _from_answer(answer: Mapping[str, Any], account: str) -> PolicyAnchor | None:
    """The anchor in a JSON-RPC answer. A revert means a contract without ``policyAnchor()``:
    an account made before anchors (its code cannot change), which keeps the local check."""
    error = answer.get("error")
    if isinstance(error, Mapping) and "revert" in str(error.get("message", "")).lower():
        return PolicyAnchor("", 0, supported=False)
    try:
        raw = bytes.fromhex(str(answer["result"]).removeprefix("0x"))
    except (KeyError, ValueError) as exc:
        raise _unreadable(account) from exc
    if not raw:
        return None
    if len(raw) != 64:
        raise ChainError(
            "the smart account does not answer policyAnchor()",
            reason=Reason.CHAIN_UNAVAILABLE,
            account=account,
        )
    return PolicyAnchor("sha256:" + raw[:32].hex(), int.from_bytes(raw[32:], "big"))


class AnchorReader:
    """Reads one account's anchor over one kept-alive connection (closed with the reader)."""

    def __init__(self, rpc_url: str, account: str) -> None:
        self._url, self._account = rpc_url, to_checksum_address(account)
        self._http = httpx.Client(timeout=10.0)
        weakref.finalize(self, self._http.close)
        self._body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": _call(self._account),
        }

    def __call__(self) -> PolicyAnchor | None:
        try:
            answer = self._http.post(self._url, json=self._body).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _unreadable(self._account) from exc
        if not isinstance(answer, Mapping):
            raise _unreadable(self._account)
        return _from_answer(answer, self._account)


def anchor_lookup(home: AgentHome) -> AnchorReader | None:
    """For a smart-account home, a reader of its account's anchor; None for a plain-key home,
    which has no account to anchor a policy on."""
    found = smart_account_rpc(home)
    return None if found is None else AnchorReader(found[1], found[0].account)


def anchor_policy(wallet: HotWallet, policy: Policy, sign_line: SignLine) -> str | None:
    """Anchor ``policy`` on the wallet's account (deploying it if needed): the owner action is
    signed by ``sign_line`` (the device shows it) and relayed. The transaction hash; None when
    the account anchors this exact policy already (a retry after the files failed to install)."""
    if wallet.relayer is None:
        raise ConfigError(
            "anchoring the policy needs a relayer key with ETH (wallet.relayer_keystore)",
            reason=Reason.RELAYER_MISSING,
        )
    # An owner action needs the contract: a counterfactual account is deployed first (the
    # factory call anyone may make, paid by the relayer).
    create_account(wallet.w3, wallet.config, wallet.relayer)
    current = read_anchor(wallet.w3, wallet.account)
    if current is not None and (current.digest, current.version) == (policy.digest, policy.version):
        return None
    if current is not None and not current.supported:
        raise ConfigError(
            f"the account {wallet.account} was made before policy anchors: it cannot anchor a "
            "policy (approving keeps only the local check)",
            reason=Reason.POLICY_NOT_ANCHORED,
        )
    digest = bytes.fromhex(policy.digest.removeprefix("sha256:"))
    receipt = run_owner_action(
        wallet.w3, wallet.account, "setPolicyAnchor", [digest, policy.version], sign_line, wallet.relayer
    )
    return "0x" + bytes(receipt["transactionHash"]).hex()


def home_anchor(home: AgentHome) -> Callable[[Policy, SignLine], str | None] | None:
    """What ``device.approve.approve`` calls to anchor a policy on a smart-account home's
    account (the home's wallet and relayer); None on a plain-key home, on a home without a
    relayer key (no way to send the owner action) and on an account made before anchors: those
    keep the local check."""
    if not isinstance(home.config.signer, SmartAccountConfig):
        return None
    from .wallet import open_hot_wallet

    wallet = open_hot_wallet(home)
    if wallet.relayer is None:
        return None
    current = read_anchor(wallet.w3, wallet.account)
    return None if current is not None and not current.supported else partial(anchor_policy, wallet)


__all__ = ["AnchorReader", "anchor_lookup", "anchor_policy", "home_anchor", "read_anchor"]
