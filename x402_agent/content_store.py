"""Paid bodies, kept: content-addressed files in the agent home.

A paid response is kept at ``<home>/content/<first 2 hex>/<sha256>`` (a large one streams to a
temporary file in the same directory tree while it is read, a small one is written once
complete; either is renamed into place, so a reader never sees half a file), and the receipt
records the same sha256. Whatever the model is shown inline, the whole
body stays readable: by path (CLI), by ``FetchOutcome.read_body`` (Python) or as the MCP resource
``x402://content/<sha256>``. The policy's ``max_paid_body_bytes`` bounds one file; past it the
rest is not read (what was stored is kept, and says it is incomplete).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CONTENT_DIR = "content"
# Used when the policy names no cap: large enough for documents, datasets and media, small
# enough that a hostile server cannot fill the disk with one answer.
DEFAULT_MAX_PAID_BODY_BYTES = 256 * 1024 * 1024
# How much of a stored body is also kept in memory (FetchOutcome.content); the rest is read from
# the file. The same bound as an unpaid body's.
INLINE_BYTES = 32 * 1024 * 1024
# Bodies up to this size are held in memory until complete (most paid answers): one write, and
# none at all when the store already holds the same bytes.
BUFFER_BYTES = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredBody:
    """A body in the store: its sha256 (of the bytes in the file), size and path. ``complete``
    is False when the body went past the cap and only its first ``size`` bytes were kept."""

    sha256: str
    size: int
    path: Path
    complete: bool = True

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        with self.open() as file:
            file.seek(offset)
            return file.read(-1 if length is None else length)


class ContentStore:
    """The content directory of one agent home."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str) -> StoredBody | None:
        """The stored body with this hash, or None (unknown hash, not a hash, or removed)."""
        sha256 = sha256.lower()
        if not _SHA256.fullmatch(sha256):
            return None
        path = self.path(sha256)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return StoredBody(sha256, size, path)

    def writer(self, max_bytes: int) -> BodyWriter:
        return BodyWriter(self, max_bytes)


class BodyWriter:
    """Takes one body while hashing it; ``commit`` names it by its hash. A body up to
    BUFFER_BYTES is held in memory and written at commit, in one write, only if the store does
    not hold the same bytes already; a larger one streams to a temporary file."""

    def __init__(self, store: ContentStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self.complete = True
        self._hash = hashlib.sha256()
        self._buffer: list[bytes] | None = []
        self._temp = store.root / f".partial-{secrets.token_hex(8)}"
        self._file: BinaryIO | None = None

    def write(self, chunk: bytes) -> bool:
        """Keep ``chunk`` (up to the cap); False once the cap is reached: stop reading."""
        room = self.max_bytes - self.size
        if len(chunk) > room:
            chunk, self.complete = chunk[:room], False
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._buffer is not None:
            self._buffer.append(chunk)
            if self.size > BUFFER_BYTES:
                self._spill()
        else:
            assert self._file is not None
            self._file.write(chunk)
        return self.complete

    def _spill(self) -> None:
        """Move what is buffered to the temporary file; the rest streams there."""
        assert self._buffer is not None
        self.store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file = open(  # noqa: SIM115 - closed in commit/abort
            os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"
        )
        self._file.write(b"".join(self._buffer))
        self._buffer = None

    def commit(self) -> StoredBody:
        sha256 = self._hash.hexdigest()
        target = self.store.path(sha256)
        if self._buffer is not None:
            try:
                if os.stat(target).st_size == self.size:  # the same hash is the same bytes
                    self._buffer = None
                    return StoredBody(sha256, self.size, target, self.complete)
            except FileNotFoundError:
                pass
            self._spill()
        assert self._file is not None
        self._file.close()
        self._file = None
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(self._temp, target)  # atomic: a reader never sees half a file
        return StoredBody(sha256, self.size, target, self.complete)

    def abort(self) -> None:
        self._buffer = None
        if self._file is not None:
            self._file.close()
            self._file = None
            self._temp.unlink(missing_ok=True)


@dataclass(frozen=True)
class BodySink:
    """Where the driver streams a paid body: the store and the policy's cap."""

    store: ContentStore
    max_bytes: int

    def open(self) -> BodyWriter:
        return self.store.writer(self.max_bytes)
