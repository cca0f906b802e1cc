"""Trezor wire protocol v1 over UDP: 64-byte datagrams.

First chunk: ``"?##"`` + ``>HL`` (message type, payload length) + payload; next chunks: ``"?"``
+ 63 payload bytes; every chunk is zero-padded to 64 bytes. ``PINGPING`` is answered with
``PONGPONG`` (emulator presence check). Protobuf (de)serialisation is trezorlib's.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable

from trezorlib.mapping import DEFAULT_MAPPING
from trezorlib.protobuf import MessageType

CHUNK_SIZE = 64
PING = b"PINGPING"
PONG = b"PONGPONG"
MAX_MESSAGE_SIZE = 256 * 1024
_HEADER = struct.Struct(">HL")
_FIRST_MAGIC = b"?##"
_NEXT_MAGIC = b"?"


def encode(msg: MessageType) -> list[bytes]:
    """Serialise ``msg`` with trezorlib's mapping and split it into 64-byte chunks."""
    wire_type, payload = DEFAULT_MAPPING.encode(msg)
    return chunk(wire_type, payload)


def chunk(wire_type: int, payload: bytes) -> list[bytes]:
    data = b"##" + _HEADER.pack(wire_type, len(payload)) + payload
    return [
        (_NEXT_MAGIC + data[i : i + CHUNK_SIZE - 1]).ljust(CHUNK_SIZE, b"\x00")
        for i in range(0, len(data), CHUNK_SIZE - 1)
    ]


def decode(wire_type: int, payload: bytes) -> MessageType:
    """trezorlib's decoding; ``KeyError`` for an unknown type, ``ValueError``/``EOFError`` for bad data."""
    return DEFAULT_MAPPING.decode(wire_type, payload)


class Reassembler:
    """Collects chunks per sender until a whole message (type, payload) is there."""

    def __init__(self, max_senders: int = 32) -> None:
        self._partial: OrderedDict[Hashable, tuple[int, int, bytearray]] = OrderedDict()
        self._max_senders = max_senders

    def feed(self, sender: Hashable, datagram: bytes) -> tuple[int, bytes] | None:
        """Returns the message completed by ``datagram``, if any. Raises ``ValueError`` for a
        message larger than ``MAX_MESSAGE_SIZE`` (its remaining chunks are then ignored)."""
        if len(datagram) != CHUNK_SIZE:
            return None
        if datagram.startswith(_FIRST_MAGIC):
            self._partial.pop(sender, None)
            wire_type, length = _HEADER.unpack_from(datagram, len(_FIRST_MAGIC))
            if length > MAX_MESSAGE_SIZE:
                raise ValueError("message too large")
            buffer = bytearray(datagram[len(_FIRST_MAGIC) + _HEADER.size :])
        elif datagram.startswith(_NEXT_MAGIC) and sender in self._partial:
            wire_type, length, buffer = self._partial.pop(sender)
            buffer += datagram[len(_NEXT_MAGIC) :]
        else:
            return None
        if len(buffer) >= length:
            return wire_type, bytes(buffer[:length])
        self._partial[sender] = (wire_type, length, buffer)
        while len(self._partial) > self._max_senders:
            self._partial.popitem(last=False)
        return None
