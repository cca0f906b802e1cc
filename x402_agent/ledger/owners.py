"""Who owns the payments in flight, without clocks.

Each ledger opener (one agent process) is an owner: a random id and a liveness lock it holds for
its whole life, which the operating system (SQLite: an exclusive ``flock`` on a file next to the
database) or the database server (PostgreSQL: a session advisory lock) releases when the process
dies, however it dies. A row in flight names its owner. Another opener takes a row over only when
its owner's lock is free (the owner is gone) or it names no owner (written by a release that did
not record owners); a live owner's rows are left to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

_SUFFIX = ".lock"
_PENDING = ".tmp"


def new_owner_id() -> str:
    """64 random bits in hex: unique among a ledger's openers, and a PostgreSQL lock key."""
    return secrets.token_hex(8)


def advisory_key(owner: str) -> int:
    """The owner's PostgreSQL advisory lock key (a signed 64-bit integer)."""
    return int.from_bytes(bytes.fromhex(owner), "big", signed=True)


class OwnerFiles:
    """SQLite owners: ``<database>.owners/<owner>.lock``, exclusively locked while it lives."""

    def __init__(self, database: Path) -> None:
        self.directory = database.with_name(database.name + ".owners")
        self._held: dict[str, int] = {}

    def hold(self, owner: str) -> None:
        """Take ``owner``'s lock until ``release`` or the process's end."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        pending = self.directory / f"{owner}{_PENDING}"
        fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Published under its final name only once locked: whoever finds the file finds
            # it locked for as long as the owner lives.
            os.replace(pending, self.directory / f"{owner}{_SUFFIX}")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                pending.unlink()
            raise
        self._held[owner] = fd

    def release(self, owner: str) -> None:
        fd = self._held.pop(owner, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            (self.directory / f"{owner}{_SUFFIX}").unlink()  # removed while still locked
        os.close(fd)

    def live(self, owners: set[str]) -> set[str]:
        """Which of ``owners`` still hold their lock. Files of owners found gone (these, or any
        other process that died without closing its ledger) are removed on the way."""
        alive: set[str] = set()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return alive
        for name in names:
            # A pending file is left alone: its owner may be between creating and locking it.
            owner = name.removesuffix(_SUFFIX)
            if owner != name and (owner in self._held or self._locked(self.directory / name)):
                alive.add(owner)
        return alive & owners

    @staticmethod
    def _locked(path: Path) -> bool:
        """True if a live process holds ``path``'s lock; a free lock's file is removed."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            # Its owner is gone and owner ids are never reused: the name cannot come back.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        finally:
            os.close(fd)
