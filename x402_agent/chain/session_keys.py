"""The smart account's session keys: create, rotate (one owner action), revoke by address.

A rotation is the single owner action ``rotateSessionKey(new, expiry, old)``: the chain never
holds the new key without the old one revoked. The home records the rotation before the device
is asked (``session.rotation.json``: old and new address, expiry; the new key encrypted in
``session.next.keystore.json``) and keeps paying with the old key until the chain shows the
rotation done; only then does the new keystore replace the old one and the record go. So an
interrupted rotation (screen rejected, device unplugged, relayer without ETH, process killed)
is finished by running ``rotate`` again, with the same new key and expiry, and any signature the
device ever gave for it does the same thing. A revocation names its key by address and refuses
the key the home pays with (or rotates to) unless the caller says that is meant.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from web3 import Web3

from ..errors import ChainError, ConfigError, InvalidRequest, X402AgentError
from ..home import AgentHome, SmartAccountConfig
from ..reasons import Reason
from ..signer import write_keystore
from .account import SignLine, account_contract, run_owner_action
from .wallet import HotWallet

LOG = logging.getLogger(__name__)

SESSION_KEYSTORE = "session.keystore.json"
NEXT_KEYSTORE = "session.next.keystore.json"
ROTATION_FILE = "session.rotation.json"
# User-operation validation packs the expiry as a uint48 (validUntil); the contract refuses more.
MAX_SESSION_EXPIRY = 2**48 - 1


def check_session_expiry(expiry: int) -> int:
    """``expiry`` if the account can hold it; a typed refusal before anything is signed."""
    if not 0 < expiry <= MAX_SESSION_EXPIRY:
        raise InvalidRequest(
            f"a session key's expiry must be a unix time from 1 to 2^48-1, not {expiry}",
            reason=Reason.SESSION_EXPIRY_OUT_OF_RANGE,
            expiry=expiry,
        )
    return expiry


def write_session_key(path: Path, password: str, iterations: int | None) -> LocalAccount:
    """A fresh session key, encrypted at ``path``."""
    key: LocalAccount = Account.from_key(secrets.token_bytes(32))
    write_keystore(path, "0x" + bytes(key.key).hex(), password, iterations=iterations)
    return key


@dataclass(frozen=True)
class PendingRotation:
    """A rotation the home has started and the chain has not shown done yet."""

    old_key: str
    new_key: str
    expiry: int


def _signer(home: AgentHome) -> SmartAccountConfig:
    signer = home.config.signer
    if not isinstance(signer, SmartAccountConfig):
        raise ConfigError(
            "this agent home pays from a plain key, not a smart account", reason=Reason.NOT_A_SMART_ACCOUNT
        )
    return signer


def pending_rotation(home: AgentHome) -> PendingRotation | None:
    """The home's unfinished rotation, if any."""
    path = home.root / ROTATION_FILE
    try:
        record = json.loads(path.read_text())
        return PendingRotation(
            to_checksum_address(record["old_key"]),
            to_checksum_address(record["new_key"]),
            int(record["expiry"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the pending rotation record {ROTATION_FILE} is unreadable",
            reason=Reason.ROTATION_INCONSISTENT,
        ) from exc


def _write_record(home: AgentHome, pending: PendingRotation) -> None:
    scratch = home.root / (ROTATION_FILE + ".tmp")
    scratch.write_text(json.dumps(asdict(pending)) + "\n")
    os.replace(scratch, home.root / ROTATION_FILE)  # a reader never sees half a record


def _keystore_address(path: Path) -> str | None:
    try:
        return to_checksum_address("0x" + json.loads(path.read_text())["address"].removeprefix("0x"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read the keystore {path.name}", reason=Reason.KEYSTORE_UNREADABLE) from exc


def _landed(w3: Web3, account: str, pending: PendingRotation) -> bool:
    """Whether the chain shows this rotation done (the old key revoked, the new one live)."""
    if not w3.eth.get_code(to_checksum_address(account)):
        return False
    expiry = account_contract(w3, account).functions.sessionKeyExpiry
    return int(expiry(pending.old_key).call()) == 0 and int(expiry(pending.new_key).call()) != 0


def settle_pending_rotation(home: AgentHome, w3: Web3) -> PendingRotation | None:
    """Finish locally a rotation the chain shows done (the new keystore becomes the home's);
    return the rotation still pending on chain, or None. Called at every wallet start."""
    pending = pending_rotation(home)
    if pending is None:
        return None
    signer = _signer(home)
    current, upcoming = home.path(signer.keystore), home.root / NEXT_KEYSTORE
    in_use, staged = _keystore_address(current), _keystore_address(upcoming)
    if staged != pending.new_key and not (staged is None and in_use == pending.new_key):
        raise ConfigError(
            "the pending rotation's new key is not in the home",
            reason=Reason.ROTATION_INCONSISTENT,
            new_key=pending.new_key,
        )
    if not _landed(w3, signer.account, pending):
        LOG.warning(
            "session key %s: rotation to %s not seen on chain yet; run `x402-agent wallet "
            "session-key rotate` to finish it",
            pending.old_key,
            pending.new_key,
        )
        return pending
    if staged is not None:
        os.replace(upcoming, current)
    (home.root / ROTATION_FILE).unlink()
    return None


def _run(
    wallet: HotWallet, action: str, args: list[object], sign_line: SignLine, relayer: LocalAccount
) -> None:
    """One owner action signed on the device; a transaction that does not land is typed."""
    try:
        run_owner_action(wallet.w3, wallet.account, action, args, sign_line, relayer)
    except X402AgentError:  # the device said no, or is gone: nothing was signed
        raise
    except Exception as exc:  # web3 raises many kinds for "not sent" and "reverted"
        raise ChainError(
            f"{action} was signed but did not land on chain: {str(exc)[:300]}",
            reason=Reason.OWNER_ACTION_FAILED,
            account=wallet.account,
            relayer=relayer.address,
        ) from exc


def rotate_session_key(
    home: AgentHome,
    wallet: HotWallet,
    sign_line: SignLine,
    relayer: LocalAccount,
    *,
    session_seconds: int,
    password: str,
    kdf_iterations: int | None = None,
) -> PendingRotation:
    """Start a rotation, or finish the pending one (same new key, same expiry): one owner action
    on the device. Returns the rotation, done on chain and in the home."""
    wallet.ensure_deployed(relayer)
    pending = settle_pending_rotation(home, wallet.w3)
    now = int(wallet.w3.eth.get_block("latest")["timestamp"])
    if pending is None:
        expiry = check_session_expiry(now + session_seconds)
        new = write_session_key(home.root / NEXT_KEYSTORE, password, kdf_iterations)
        pending = PendingRotation(wallet.session_address, new.address, expiry)
        _write_record(home, pending)  # from here on, a retry continues this very rotation
    elif pending.expiry <= now:  # started so long ago that its expiry has passed: renew it
        pending = PendingRotation(
            pending.old_key, pending.new_key, check_session_expiry(now + session_seconds)
        )
        _write_record(home, pending)
    _run(wallet, "rotateSessionKey", [pending.new_key, pending.expiry, pending.old_key], sign_line, relayer)
    if settle_pending_rotation(home, wallet.w3) is not None:
        raise ChainError(
            "the rotation's transaction landed but the chain does not show it done",
            reason=Reason.OWNER_ACTION_FAILED,
            account=wallet.account,
        )
    return pending


def check_revocable(home: AgentHome, wallet: HotWallet, key: str, *, current: bool) -> str:
    """``key`` (checksummed) if it may be revoked: the key this home pays with, once a pending
    rotation is done (so the rotation's new key, not its old one), is refused unless ``current``."""
    if not is_address(key):
        raise InvalidRequest(f"not an address: {key[:60]!r}", reason=Reason.INVALID_ADDRESS)
    key = to_checksum_address(key)
    pending = pending_rotation(home)
    if key == (wallet.session_address if pending is None else pending.new_key) and not current:
        raise InvalidRequest(
            f"{key} is the session key this home pays with: revoking it stops its payments",
            reason=Reason.SESSION_KEY_IN_USE,
            key=key,
        )
    return key


def revoke_session_key(
    home: AgentHome,
    wallet: HotWallet,
    key: str,
    sign_line: SignLine,
    relayer: LocalAccount,
    *,
    current: bool = False,
) -> bool:
    """Revoke ``key`` on chain (True), or find it revoked already (False); see ``check_revocable``.
    Finish a pending rotation first: it is what revokes that rotation's old key."""
    key = check_revocable(home, wallet, key, current=current)
    wallet.ensure_deployed(relayer)
    if int(account_contract(wallet.w3, wallet.account).functions.sessionKeyExpiry(key).call()) == 0:
        return False
    _run(wallet, "revokeSessionKey", [key], sign_line, relayer)
    return True


__all__ = [
    "MAX_SESSION_EXPIRY",
    "NEXT_KEYSTORE",
    "ROTATION_FILE",
    "SESSION_KEYSTORE",
    "PendingRotation",
    "check_revocable",
    "check_session_expiry",
    "pending_rotation",
    "revoke_session_key",
    "rotate_session_key",
    "settle_pending_rotation",
    "write_session_key",
]
