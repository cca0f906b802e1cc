"""Ethereum for the simulator: addresses, EIP-191 messages, EIP-712 typed data (streamed)."""

from __future__ import annotations

from collections.abc import Generator, Sequence

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from trezorlib.messages import (
    EthereumDataType,
    EthereumFieldType,
    EthereumStructMember,
    EthereumTypedDataStructAck,
    EthereumTypedDataStructRequest,
    EthereumTypedDataValueAck,
    EthereumTypedDataValueRequest,
    FailureType,
)

from .keys import Node
from .workflow import Step, WorkflowFailure, expect

DOMAIN_TYPE = "EIP712Domain"
_MAX_TYPES = 64
_MAX_PATH_DEPTH = 16
_MAX_ARRAY_LENGTH = 1024


def address(node: Node) -> str:
    """EIP-55 checksummed address: last 20 bytes of keccak256 of the uncompressed public key."""
    return str(to_checksum_address(keccak(node.uncompressed_public_key[1:])[-20:]))


def personal_message_digest(message: bytes) -> bytes:
    """EIP-191 version 0x45: keccak256("\\x19Ethereum Signed Message:\\n" || len || message)."""
    return bytes(keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message))


def typed_data_digest(domain_separator: bytes, message_hash: bytes | None) -> bytes:
    """EIP-712: keccak256(0x1901 || domainSeparator || hashStruct(message)); no message hash when
    the primary type is the domain itself."""
    return bytes(keccak(b"\x19\x01" + domain_separator + (message_hash or b"")))


def sign(node: Node, digest: bytes) -> bytes:
    """65 bytes r || s || v with v = 27 + recovery id."""
    rs, recid = node.sign_digest(digest)
    return rs + bytes([27 + recid])


def display_message(message: bytes) -> str:
    """Message text as the device shows it: UTF-8 if it decodes, else hex."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + message.hex()
    return text if text.isprintable() or "\n" in text else "0x" + message.hex()


def _fail(text: str) -> WorkflowFailure:
    return WorkflowFailure(FailureType.DataError, text)


class TypedDataHasher:
    """Asks the host for the EIP-712 types and values (StructRequest/ValueRequest) and hashes them
    as EIP-712 prescribes. ``metamask_v4_compat=False`` hashes arrays of structs the legacy way
    (their encodeData, without typeHash, concatenated) as the firmware does."""

    def __init__(self, primary_type: str, metamask_v4_compat: bool) -> None:
        self.primary_type = primary_type
        self.metamask_v4_compat = metamask_v4_compat
        self.types: dict[str, list[EthereumStructMember]] = {}
        self.shown: list[tuple[str, str]] = []  # (dotted field name, displayed value)
        self._type_hashes: dict[str, bytes] = {}

    def run(self) -> Generator[Step, object, tuple[bytes, bytes | None]]:
        yield from self._collect(DOMAIN_TYPE)
        if self.primary_type != DOMAIN_TYPE:
            yield from self._collect(self.primary_type)
        domain = yield from self._hash_struct(DOMAIN_TYPE, [0], "domain")
        if self.primary_type == DOMAIN_TYPE:
            return domain, None
        message = yield from self._hash_struct(self.primary_type, [1], "message")
        return domain, message

    # ---- types ---------------------------------------------------------------------------------
    def _collect(self, name: str) -> Generator[Step, object, None]:
        if name in self.types:
            return
        if len(self.types) >= _MAX_TYPES:
            raise _fail("Too many EIP-712 types")
        reply = yield EthereumTypedDataStructRequest(name=name)
        members = list(expect(reply, EthereumTypedDataStructAck).members)
        self.types[name] = members
        for member in members:
            base = _base_type(member.type)
            if base.data_type == EthereumDataType.STRUCT:
                if not base.struct_name:
                    raise _fail("Struct member without a struct name")
                yield from self._collect(base.struct_name)

    def _type_hash(self, name: str) -> bytes:
        cached = self._type_hashes.get(name)
        if cached is None:
            dependencies: set[str] = set()
            self._dependencies(name, dependencies)
            dependencies.discard(name)
            encoded = self._encode_type(name) + "".join(
                self._encode_type(dep) for dep in sorted(dependencies)
            )
            cached = self._type_hashes[name] = bytes(keccak(encoded.encode()))
        return cached

    def _dependencies(self, name: str, found: set[str]) -> None:
        for member in self.types[name]:
            base = _base_type(member.type)
            if base.data_type == EthereumDataType.STRUCT and base.struct_name not in found:
                assert base.struct_name is not None
                found.add(base.struct_name)
                self._dependencies(base.struct_name, found)

    def _encode_type(self, name: str) -> str:
        members = ",".join(f"{_type_name(m.type)} {m.name}" for m in self.types[name])
        return f"{name}({members})"

    # ---- values --------------------------------------------------------------------------------
    def _hash_struct(self, name: str, path: list[int], label: str) -> Generator[Step, object, bytes]:
        data = yield from self._encode_data(name, path, label)
        return bytes(keccak(self._type_hash(name) + data))

    def _encode_data(self, name: str, path: list[int], label: str) -> Generator[Step, object, bytes]:
        encoded = b""
        for index, member in enumerate(self.types[name]):
            encoded += yield from self._encode_field(member.type, [*path, index], f"{label}.{member.name}")
        return encoded

    def _encode_field(
        self, field: EthereumFieldType, path: list[int], label: str
    ) -> Generator[Step, object, bytes]:
        if len(path) > _MAX_PATH_DEPTH:
            raise _fail("EIP-712 data nested too deeply")
        if field.data_type == EthereumDataType.STRUCT:
            assert field.struct_name is not None
            return (yield from self._hash_struct(field.struct_name, path, label))
        if field.data_type == EthereumDataType.ARRAY:
            return (yield from self._encode_array(field, path, label))
        raw = yield from self._value(path)
        encoded = _encode_atomic(field, raw)
        self.shown.append((label, _display_atomic(field, raw)))
        return encoded

    def _encode_array(
        self, field: EthereumFieldType, path: list[int], label: str
    ) -> Generator[Step, object, bytes]:
        raw = yield from self._value(path)
        if len(raw) != 2:
            raise _fail("Array length must be 2 bytes")
        length = int.from_bytes(raw, "big")
        if (field.size is not None and length != field.size) or length > _MAX_ARRAY_LENGTH:
            raise _fail("Invalid array length")
        entry = field.entry_type
        if entry is None:
            raise _fail("Array without entry type")
        if length == 0:
            self.shown.append((label, "[]"))
        elements = b""
        for k in range(length):
            element_path, element_label = [*path, k], f"{label}[{k}]"
            if entry.data_type == EthereumDataType.STRUCT and not self.metamask_v4_compat:
                assert entry.struct_name is not None
                elements += yield from self._encode_data(entry.struct_name, element_path, element_label)
            else:
                elements += yield from self._encode_field(entry, element_path, element_label)
        return bytes(keccak(elements))

    def _value(self, path: Sequence[int]) -> Generator[Step, object, bytes]:
        reply = yield EthereumTypedDataValueRequest(member_path=list(path))
        return expect(reply, EthereumTypedDataValueAck).value


def _base_type(field: EthereumFieldType) -> EthereumFieldType:
    depth = 0
    while field.data_type == EthereumDataType.ARRAY:
        if field.entry_type is None or depth > _MAX_PATH_DEPTH:
            raise _fail("Invalid array type")
        field, depth = field.entry_type, depth + 1
    return field


def _type_name(field: EthereumFieldType) -> str:
    kind, size = field.data_type, field.size
    if kind == EthereumDataType.ARRAY:
        assert field.entry_type is not None
        return _type_name(field.entry_type) + ("[]" if size is None else f"[{size}]")
    if kind == EthereumDataType.STRUCT:
        return field.struct_name or ""
    if kind in (EthereumDataType.UINT, EthereumDataType.INT):
        if size is None or not 1 <= size <= 32:
            raise _fail("Invalid integer size")
        return ("uint" if kind == EthereumDataType.UINT else "int") + str(size * 8)
    if kind == EthereumDataType.BYTES:
        return "bytes" if size is None else f"bytes{size}"
    names = {
        EthereumDataType.STRING: "string",
        EthereumDataType.BOOL: "bool",
        EthereumDataType.ADDRESS: "address",
    }
    if kind not in names:
        raise _fail("Unknown EIP-712 data type")
    return names[kind]


def _encode_atomic(field: EthereumFieldType, raw: bytes) -> bytes:
    kind, size = field.data_type, field.size
    if kind == EthereumDataType.STRING or (kind == EthereumDataType.BYTES and size is None):
        return bytes(keccak(raw))
    if kind == EthereumDataType.BYTES:
        if size is None or not 1 <= size <= 32 or len(raw) != size:
            raise _fail("Invalid bytesN value")
        return raw.ljust(32, b"\x00")
    if kind in (EthereumDataType.UINT, EthereumDataType.INT):
        if size is None or not 1 <= size <= 32 or len(raw) != size:
            raise _fail("Invalid integer value")
        if kind == EthereumDataType.INT:
            return int.from_bytes(raw, "big", signed=True).to_bytes(32, "big", signed=True)
        return raw.rjust(32, b"\x00")
    if kind == EthereumDataType.BOOL:
        if raw not in (b"\x00", b"\x01"):
            raise _fail("Invalid bool value")
        return raw.rjust(32, b"\x00")
    if kind == EthereumDataType.ADDRESS:
        if len(raw) != 20:
            raise _fail("Invalid address value")
        return raw.rjust(32, b"\x00")
    raise _fail("Unknown EIP-712 data type")


def _display_atomic(field: EthereumFieldType, raw: bytes) -> str:
    kind = field.data_type
    if kind == EthereumDataType.STRING:
        return raw.decode("utf-8", errors="replace")
    if kind == EthereumDataType.UINT:
        return str(int.from_bytes(raw, "big"))
    if kind == EthereumDataType.INT:
        return str(int.from_bytes(raw, "big", signed=True))
    if kind == EthereumDataType.BOOL:
        return "true" if raw == b"\x01" else "false"
    if kind == EthereumDataType.ADDRESS:
        return str(to_checksum_address(raw))
    return "0x" + raw.hex()
