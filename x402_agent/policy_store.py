"""The policy in the agent home, as the agent may use it: approved by the enrolled device.

Files in the home:
    device.json            the enrollment (fingerprint, path, public key)
    policy.json            the effective policy
    policy.approval.json   the device's signature over the approved policy
    policy.base.json       when policy.json is a local tightening: the approved policy it tightens
    policy.proposed.json   a validated proposal waiting for `x402-agent policy approve`
    policy.state.json      the highest approved version accepted so far (rollback protection)

``ApprovedPolicy`` is what a running agent reads before every payment: it re-verifies when a
file changes, so a newly approved policy is picked up without restart, and a tampered,
unsigned, rolled-back or foreign one stops all payments with a clear error.

On a smart-account home the enrolled key must also be the account's owner (read on chain, or
committed to by an undeployed account's address): a replaced ``device.json`` whose key signs a
looser policy is refused. The account also anchors the approved policy's digest and version
(``setPolicyAnchor``, signed on the device with the approval): the agent pays only under the
anchored policy, checked at every load and before every payment, so restoring every file of an
older policy (policy, approval, state) is refused. An account not deployed yet, or never
anchored, has only the local state file. A plain-key home has no owner on chain: its enrollment
file is the only record of the device, and its state file the only rollback protection, so
anyone who can rewrite the home's files can replace them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .approval import Enrollment, PolicyApproval, PolicyRejected, verify_approval
from .errors import ConfigError
from .home import AgentHome
from .policy import Policy, load_policy, parse_policy
from .reasons import Reason
from .tightening import loosenings

DEVICE_FILE = "device.json"
POLICY_FILE = "policy.json"
APPROVAL_FILE = "policy.approval.json"
BASE_FILE = "policy.base.json"
PROPOSED_FILE = "policy.proposed.json"
STATE_FILE = "policy.state.json"
M = TypeVar("M", bound=BaseModel)


class AcceptedState(BaseModel):
    version: int
    digest: str


def write_json(path: Path, data: object) -> None:
    """Write atomically (rename), so a reader never sees half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


def policy_json(policy: Policy) -> dict[str, object]:
    return policy.model_dump(mode="json", by_alias=True)


def _read_model(path: Path, model: type[M], what: str) -> M:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise PolicyRejected(
            f"no {what} ({path.name})",
            reason=Reason.POLICY_UNSIGNED if what == "approval" else Reason.DEVICE_NOT_ENROLLED,
        ) from exc
    except (OSError, ValidationError) as exc:
        raise PolicyRejected(f"unreadable {what} ({path.name})", reason=Reason.POLICY_TAMPERED) from exc


@dataclass(frozen=True)
class AccountOwner:
    """A smart account's owner key and how it is known (``owner`` None: it could not be tied
    to any key, e.g. an undeployed account's address matching neither candidate)."""

    account: str
    owner: str | None
    source: str


@dataclass(frozen=True)
class PolicyAnchor:
    """The policy a smart account anchors on chain (``version`` 0: never anchored;
    ``supported`` False: the account's contract predates anchors and never will)."""

    digest: str
    version: int
    supported: bool = True


@dataclass(frozen=True)
class Expectations:
    """What an acceptable policy must name: this paying account and this chain; on a smart-
    account home, ``owner`` gives the account's owner for the enrolled key's address, which
    must be that owner (the enrollment file alone proves nothing to an attacker on the host)."""

    account: str | None
    chain_id: int | None
    owner: Callable[[str], AccountOwner] | None = None
    # A smart account's anchored policy (None from the lookup: the account is not deployed yet).
    anchor: Callable[[], PolicyAnchor | None] | None = None


def expectations(home: AgentHome, account: str | None = None) -> Expectations:
    """An acceptable policy names the paying account and the home's chain, and a smart
    account's policy is approved by the account's owner."""
    owner = anchor = None
    if home.config.signer.kind == "smart_account":
        from .chain.anchor import anchor_lookup  # web3 loads only for smart accounts
        from .chain.ownership import owner_lookup

        owner, anchor = owner_lookup(home), anchor_lookup(home)
    return Expectations(
        account=account or home.payer_address(), chain_id=home.config.chain_id, owner=owner, anchor=anchor
    )


class PolicyStore:
    def __init__(self, root: Path, expect: Expectations) -> None:
        self.root = root
        self.expect = expect

    def path(self, name: str) -> Path:
        return self.root / name

    # ---- enrollment ------------------------------------------------------------------------
    def enrollment(self) -> Enrollment:
        return _read_model(self.path(DEVICE_FILE), Enrollment, "enrolled device")

    def enroll(self, enrollment: Enrollment) -> None:
        write_json(self.path(DEVICE_FILE), enrollment.model_dump())

    # ---- checks ----------------------------------------------------------------------------
    def check_names(self, policy: Policy) -> None:
        if self.expect.account and (policy.account or "").lower() != self.expect.account.lower():
            raise PolicyRejected(
                f"the policy governs account {policy.account}, not this agent's {self.expect.account}",
                reason=Reason.POLICY_WRONG_ACCOUNT,
            )
        if self.expect.chain_id and policy.chain_id != self.expect.chain_id:
            raise PolicyRejected(
                f"the policy is for chain {policy.chain_id}, not {self.expect.chain_id}",
                reason=Reason.POLICY_WRONG_ACCOUNT,
            )

    def accepted(self) -> AcceptedState | None:
        try:
            return AcceptedState.model_validate_json(self.path(STATE_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise PolicyRejected("unreadable policy state", reason=Reason.POLICY_TAMPERED) from exc

    def check_not_rolled_back(self, approved: Policy) -> None:
        state = self.accepted()
        if state is None:
            return
        if approved.version < state.version or (
            approved.version == state.version and approved.digest != state.digest
        ):
            what = "is older than" if approved.version < state.version else "differs from"
            raise PolicyRejected(
                f"policy v{approved.version} {what} the accepted v{state.version}",
                reason=Reason.POLICY_ROLLED_BACK,
            )

    def account_owner(self, enrollment: Enrollment) -> AccountOwner | None:
        """The smart account's owner (None on a plain-key home: nothing on chain to compare)."""
        return self.expect.owner(enrollment.eth_address) if self.expect.owner else None

    def check_owner(self, enrollment: Enrollment) -> None:
        owner = self.account_owner(enrollment)
        if owner is None or owner.owner == enrollment.eth_address.lower():
            return
        raise PolicyRejected(
            f"the enrolled device key {enrollment.eth_address} is not the owner of account "
            f"{owner.account} ({owner.owner or 'unknown'}, {owner.source}): the enrollment file "
            "was replaced or names another device",
            reason=Reason.ENROLLMENT_NOT_OWNER,
            enrolled=enrollment.eth_address,
            owner=owner.owner,
            account=owner.account,
        )

    def anchor(self) -> PolicyAnchor | None:
        """The smart account's anchored policy; None on a plain-key home or before deployment."""
        return self.expect.anchor() if self.expect.anchor else None

    def check_anchor(self, approved: Policy) -> None:
        """The approved policy must be the one the account anchors (a never-anchored account,
        version 0, leaves only the local checks: the files of a home made before anchors)."""
        anchor = self.anchor()
        if anchor is None or anchor.version == 0:
            return
        if (anchor.version, anchor.digest) == (approved.version, approved.digest):
            return
        newer = anchor.version > approved.version
        raise PolicyRejected(
            f"the account anchors policy v{anchor.version} ({anchor.digest}) on chain: the home's "
            f"v{approved.version} ({approved.digest}) "
            + ("is older (restored files?)" if newer else "is not the anchored policy"),
            reason=Reason.POLICY_SUPERSEDED_ON_CHAIN if newer else Reason.POLICY_NOT_ANCHORED,
            anchored_version=anchor.version,
            anchored_digest=anchor.digest,
            local_version=approved.version,
        )

    def verify_approved(self, policy: Policy, approval: PolicyApproval, *, anchored: bool = True) -> None:
        """Signed by the enrolled owner for this account and chain, not rolled back; with
        ``anchored`` also the policy the account anchors on chain."""
        enrollment = self.enrollment()
        verify_approval(policy, approval, enrollment)
        self.check_owner(enrollment)
        self.check_names(policy)
        if anchored:
            self.check_anchor(policy)
        self.check_not_rolled_back(policy)

    # ---- the effective policy ----------------------------------------------------------------
    def load(self) -> Policy:
        """The effective policy, fully verified; raises PolicyRejected or ConfigError."""
        return self.load_verified()[0]

    def approved(self) -> Policy | None:
        """The approved policy in force (what a new approval's text is compared with), None
        when there is none that verifies."""
        try:
            return self.load_verified()[1]
        except (PolicyRejected, ConfigError):
            return None

    def load_verified(self) -> tuple[Policy, Policy]:
        """(effective policy, the approved policy it is or tightens), both verified."""
        policy = load_policy(self.path(POLICY_FILE))
        approval = _read_model(self.path(APPROVAL_FILE), PolicyApproval, "approval")
        if approval.policy_digest == policy.digest:
            approved = policy
        else:
            # Not the approved document itself: only acceptable as a tightening of it.
            try:
                approved = load_policy(self.path(BASE_FILE))
            except ConfigError as exc:
                raise PolicyRejected(
                    "policy.json is not the approved policy", reason=Reason.POLICY_TAMPERED
                ) from exc
            looser = loosenings(policy, approved)
            if looser:
                raise PolicyRejected(
                    "policy.json loosens the approved policy: " + "; ".join(looser[:5]),
                    reason=Reason.POLICY_TAMPERED,
                )
        self.verify_approved(approved, approval)
        self.check_names(policy)
        self._remember(approved)
        return policy, approved

    def _remember(self, approved: Policy) -> None:
        state = self.accepted()
        if state is None or approved.version > state.version:
            write_json(
                self.path(STATE_FILE),
                AcceptedState(version=approved.version, digest=approved.digest).model_dump(),
            )

    def install_approved(self, policy: Policy, approval: PolicyApproval) -> None:
        self.verify_approved(policy, approval)
        write_json(self.path(APPROVAL_FILE), approval.model_dump(by_alias=True))
        write_json(self.path(POLICY_FILE), policy_json(policy))
        self.path(BASE_FILE).unlink(missing_ok=True)
        self.path(PROPOSED_FILE).unlink(missing_ok=True)
        self._remember(policy)

    def install_tightening(self, policy: Policy) -> None:
        current = self.load()
        approval = _read_model(self.path(APPROVAL_FILE), PolicyApproval, "approval")
        base = current if approval.policy_digest == current.digest else load_policy(self.path(BASE_FILE))
        looser = loosenings(policy, current)
        if looser:
            raise PolicyRejected(
                "not a tightening; approve it on the device instead: " + "; ".join(looser),
                reason=Reason.POLICY_NEEDS_DEVICE,
                loosenings=looser,
            )
        self.check_names(policy)
        if base is current:
            write_json(self.path(BASE_FILE), policy_json(base))
        write_json(self.path(POLICY_FILE), policy_json(policy))

    # ---- proposals -------------------------------------------------------------------------
    def propose(self, raw: str, source: str) -> Policy:
        policy = parse_policy(raw, source)
        self.check_names(policy)
        state = self.accepted()
        if state is not None and policy.version <= state.version:
            raise PolicyRejected(
                f"a new policy needs a version above v{state.version}", reason=Reason.POLICY_ROLLED_BACK
            )
        write_json(self.path(PROPOSED_FILE), policy_json(policy))
        return policy

    def proposed(self) -> Policy:
        path = self.path(PROPOSED_FILE)
        if not path.exists():
            raise ConfigError(
                "nothing proposed: run `x402-agent policy propose FILE` first", reason=Reason.NO_PROPOSAL
            )
        return load_policy(path)


class ApprovedPolicy:
    """The effective policy for a running agent, re-verified whenever a policy file changes."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._policy: Policy | None = None
        self._approved: Policy | None = None
        # Checked several times per payment: plain strings and os.stat, no Path arithmetic.
        self._files = tuple(
            str(store.path(name)) for name in (POLICY_FILE, APPROVAL_FILE, BASE_FILE, DEVICE_FILE)
        )

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._files:
            try:
                stat = os.stat(path)
                # ctime too: a swapped file with its old size and mtime put back (os.utime)
                # still changes ctime, which no unprivileged process can set.
                stamps.append((stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size))
            except FileNotFoundError:
                stamps.append((0, 0, -1))
        return tuple(stamps)

    def __call__(self) -> Policy:
        stamp = self._files_stamp()
        if self._policy is None or stamp != self._stamp:
            self._policy = None  # a failed re-verification must not leave the old one usable
            (self._policy, self._approved), self._stamp = self.store.load_verified(), stamp
        return self._policy

    def confirm(self, policy: Policy) -> None:
        """Before each payment: the approved policy is still the one the smart account anchors
        (one chain read; nothing on a plain-key home). The account's owner may have anchored a
        newer policy from another machine since the files were last read."""
        if self.store.expect.anchor is None:
            return
        if self._approved is None or policy is not self._policy:
            self()
        assert self._approved is not None
        self.store.check_anchor(self._approved)
