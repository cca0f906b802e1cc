"""Owner actions in words: what the owner's device shows, built from the decoded arguments.

This mirrors, byte for byte, what the contracts rebuild before they check an owner signature
(contracts/src/OwnerText.sol and OwnerActionText.sol): a host that swaps an argument changes
the text on the screen, and a signature over a text for other arguments does not verify. Each
action has one describer here (and one branch there); its EIP-712 struct is derived from the
function's ABI (the type named after the function, one field per argument, then the nonce).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ..errors import X402AgentError
from ..reasons import Reason

ACCOUNT_TAG = "x402-account"
VAULT_TAG = "x402-vault"
KIND_OF_TAG = {ACCOUNT_TAG: "account", VAULT_TAG: "vault"}
TYPED_DATA_VERSION = "2"
EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
# A device's SignMessage takes at most 1024 bytes; the contract refuses longer texts.
MAX_MESSAGE_BYTES = 1023
_MAX_SYMBOL_LENGTH = 11
_MAX_DECIMALS = 36
_LAST_DATE = 253402300799  # 9999-12-31 23:59:59 UTC
_PLAIN_SYMBOL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_SYMBOL = keccak(text="symbol()")[:4]
_DECIMALS = keccak(text="decimals()")[:4]
_TOKEN = keccak(text="token()")[:4]
_VAULT = keccak(text="vault()")[:4]


class OwnerActionTooLong(X402AgentError):
    """The action's text is longer than a device signs (e.g. an execute with long calldata)."""

    reason = Reason.OWNER_ACTION_TOO_LONG


class Chain(Protocol):
    """The reads the words need: code at an address, and a call's return data (None when it
    reverts), both at the state the contract will see."""

    def code(self, address: str) -> bytes: ...
    def call(self, address: str, data: bytes) -> bytes | None: ...


@dataclass(frozen=True)
class OwnerAction:
    """One owner action, described: ``words`` is its name and one line per argument."""

    tag: str
    name: str
    words: str
    struct: str  # EIP-712 primary type, e.g. "Withdraw"
    fields: tuple[tuple[str, str], ...]  # (name, type) of each argument, nonce excluded
    values: tuple[Any, ...]

    def message(self, nonce: int, chain_id: int, address: str) -> str:
        """The text signed as a Bitcoin message (``OwnerCalls.ownerMessage``)."""
        where = f"{KIND_OF_TAG[self.tag]} {address.lower()}"
        text = f"{self.tag} {self.words}\nchain {chain_id}\n{where}\nnonce {nonce}"
        size = len(text.encode())
        if size > MAX_MESSAGE_BYTES:
            raise OwnerActionTooLong(
                f"the {self.name} text is {size} bytes, a device signs at most {MAX_MESSAGE_BYTES}",
                action=self.name,
            )
        return text

    def typed_data(self, nonce: int, chain_id: int, address: str) -> dict[str, Any]:
        """The EIP-712 struct of this action (``OwnerCalls.ownerTypedDigest``)."""
        fields = [*self.fields, ("nonce", "uint256")]
        message = dict(zip((name for name, _ in self.fields), self.values, strict=True))
        message["nonce"] = nonce
        return {
            "types": {
                "EIP712Domain": EIP712_DOMAIN,
                self.struct: [{"name": name, "type": kind} for name, kind in fields],
            },
            "primaryType": self.struct,
            "domain": {
                "name": self.tag,
                "version": TYPED_DATA_VERSION,
                "chainId": chain_id,
                "verifyingContract": to_checksum_address(address),
            },
            "message": message,
        }


# ---- words (OwnerText.sol) --------------------------------------------------------------------
def addr(address: str) -> str:
    return "0x" + bytes.fromhex(address.removeprefix("0x")).rjust(20, b"\0").hex()


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def units(value: int, decimals: int) -> str:
    """``value`` in whole units with every decimal written out: 16000000 at 6 -> 16.000000."""
    if decimals == 0:
        return str(value)
    whole, fraction = divmod(value, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}"


def time(t: int) -> str:
    if t > _LAST_DATE:
        return str(t)
    return f"{t} ({datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S} UTC)"


def metadata(chain: Chain, token: str) -> tuple[str, int] | None:
    """(symbol, decimals) when the token names itself plainly (see ``OwnerText.metadata``)."""
    if not chain.code(token):
        return None
    symbol, decimals = chain.call(token, _SYMBOL), chain.call(token, _DECIMALS)
    if symbol is None or decimals is None or len(symbol) != 96 or len(decimals) != 32:
        return None
    offset, length = int.from_bytes(symbol[:32], "big"), int.from_bytes(symbol[32:64], "big")
    places = int.from_bytes(decimals, "big")
    if offset != 32 or not 0 < length <= _MAX_SYMBOL_LENGTH or places > _MAX_DECIMALS:
        return None
    chars = symbol[64 : 64 + length].decode("latin-1")
    return (chars, places) if set(chars) <= _PLAIN_SYMBOL else None


def amount(chain: Chain, token: str, value: int) -> str:
    """16.000000 USDC for a named token, 16000000 units otherwise; address 0 is ETH."""
    if int(token, 16) == 0:
        return f"{units(value, 18)} ETH"
    named = metadata(chain, token)
    return f"{value} units" if named is None else f"{units(value, named[1])} {named[0]}"


def _vault_token(chain: Chain, vault: str) -> str | None:
    if not chain.code(vault):
        return None
    ret = chain.call(vault, _TOKEN)
    if ret is None or len(ret) != 32 or int.from_bytes(ret, "big") >> 160:
        return None
    token = "0x" + ret[12:].hex()
    return None if int(token, 16) == 0 else token


# ---- one describer per owner action (OwnerActionText.sol) ---------------------------------------
Describer = Callable[[Chain, str, Sequence[Any]], str]


def _set_policy(chain: Chain, target: str, v: Sequence[Any]) -> str:
    cap = f"{v[0]} units of each allowed token"
    vault = chain.call(target, _VAULT)
    token = _vault_token(chain, "0x" + vault[12:].hex()) if vault is not None and len(vault) == 32 else None
    if token is not None:
        cap += f" ({amount(chain, token, v[0])})"
    return f"set bounds\nmax per payment {cap}\nwindow {v[1]} s\npayees restricted {yes_no(v[2])}"


def _set_token(chain: Chain, target: str, v: Sequence[Any]) -> str:
    named = metadata(chain, v[0])
    symbol = f"{named[0]} " if named is not None else ""
    return f"set token\ntoken {symbol}{addr(v[0])}\nallowed {yes_no(v[1])}"


def _execute(chain: Chain, target: str, v: Sequence[Any]) -> str:
    return f"execute call\ntarget {addr(v[0])}\nvalue {units(v[1], 18)} ETH\ndata 0x{bytes(v[2]).hex()}"


def _set_gas_caps(chain: Chain, target: str, v: Sequence[Any]) -> str:
    return (
        f"set gas caps\nverification gas limit {v[0]}\ncall gas limit {v[1]}\npre-verification gas {v[2]}"
        f"\nmax fee per gas {v[3]} wei\nmax priority fee per gas {v[4]} wei"
    )


def _vault_token_of(chain: Chain, vault: str) -> str:
    ret = chain.call(vault, _TOKEN)
    return "0x" + (ret or bytes(32))[12:32].hex()


DESCRIBERS: dict[str, dict[str, Describer]] = {
    ACCOUNT_TAG: {
        "setPolicy": _set_policy,
        "setToken": _set_token,
        "setPayee": lambda c, t, v: f"set payee\npayee {addr(v[0])}\nallowed {yes_no(v[1])}",
        "setSessionKey": lambda c, t, v: f"set session key\nkey {addr(v[0])}\nexpires {time(v[1])}",
        "revokeSessionKey": lambda c, t, v: f"revoke session key\nkey {addr(v[0])}",
        "rotateSessionKey": lambda c, t, v: (
            f"rotate session key\nnew key {addr(v[0])}\nexpires {time(v[1])}\nrevokes key {addr(v[2])}"
        ),
        "setPolicyAnchor": lambda c, t, v: f"anchor policy\nversion {v[1]}\ndigest 0x{bytes(v[0]).hex()}",
        "setVault": lambda c, t, v: f"set vault\nvault {addr(v[0])}",
        "withdraw": lambda c, t, v: (
            f"withdraw\namount {amount(c, v[0], v[2])}\ntoken {addr(v[0])}\nto {addr(v[1])}"
        ),
        "execute": _execute,
        "setGasCaps": _set_gas_caps,
        "setGasAllowance": lambda c, t, v: (
            f"set gas allowance\nallowance {units(v[0], 18)} ETH per period\nperiod {v[1]} s"
        ),
    },
    VAULT_TAG: {
        "setAllowance": lambda c, t, v: (
            f"set allowance\nallowance {amount(c, _vault_token_of(c, t), v[0])} per period\nperiod {v[1]} s"
        ),
        "withdraw": lambda c, t, v: (
            f"withdraw\namount {amount(c, _vault_token_of(c, t), v[1])}\nto {addr(v[0])}"
        ),
    },
}


def _typed_value(kind: str, value: Any) -> Any:
    """As typed-data JSON carries it (trezorlib reads bytes and addresses as hex strings)."""
    if kind == "address":
        return to_checksum_address(value)
    if kind.startswith("bytes"):
        return "0x" + bytes(value).hex()
    return value


def describe(
    chain: Chain, tag: str, target: str, name: str, inputs: Sequence[dict[str, Any]], values: Sequence[Any]
) -> OwnerAction:
    """The owner action ``name(values)`` of the ``tag`` contract at ``target``; ``inputs`` are
    the function's ABI inputs (they name the EIP-712 fields)."""
    describer = DESCRIBERS[tag].get(name)
    if describer is None:
        raise ValueError(f"{name!r} is not an owner action of a {tag} contract")
    fields = tuple((str(i["name"]).rstrip("_"), str(i["type"])) for i in inputs)
    typed_values = tuple(_typed_value(kind, v) for (_, kind), v in zip(fields, values, strict=True))
    return OwnerAction(
        tag=tag,
        name=name,
        words=describer(chain, target, values),
        struct=name[0].upper() + name[1:],
        fields=fields,
        values=typed_values,
    )


__all__ = [
    "ACCOUNT_TAG",
    "DESCRIBERS",
    "EIP712_DOMAIN",
    "MAX_MESSAGE_BYTES",
    "VAULT_TAG",
    "Chain",
    "OwnerAction",
    "OwnerActionTooLong",
    "amount",
    "describe",
    "metadata",
    "time",
    "units",
]
