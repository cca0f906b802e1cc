"""ERC-7562 validation-scope rules, checked on anvil's struct-log trace of EntryPoint v0.7's
``handleOps`` (issue 15, item 3).

A public bundler traces a user operation's validation with its own JS tracer and drops the
operation when the validation breaks these rules; anvil has no JS tracer (hence the local alto's
``--safe-mode false``), but ``debug_traceCall`` gives struct logs (every opcode with its stack and
memory), which is enough to apply the same rules here. The rule ids are ERC-7562's; the split
into phases and the treatment of the EntryPoint's own storage follow the reference bundler.

Phases: the EntryPoint (depth 1) calls SenderCreator (the factory phase, when there is initCode),
then the sender's ``validateUserOp`` (the account phase), then the paymaster (we never use one);
its first call to itself (``innerHandleOp``) starts the execution, where no rule applies. Each
phase covers every frame below that call. The EntryPoint's own code at depth 1 is exempt.

Checked for an unstaked account, factory and paymaster unless ``staked`` names them:
OP-011 (blocked opcodes), OP-012 (GAS only right before a call), OP-013 (unassigned opcodes),
OP-020 (out of gas), OP-031/OP-032 (CREATE2 once, by the factory, for the sender; CREATE only by
the sender), OP-041/OP-042 (no code access to addresses without code, but the sender's own in the
factory phase), OP-051..OP-054 (EntryPoint access), OP-061 (no CALL with value but to the
EntryPoint), OP-062 (precompiles 1..9), OP-070 (transient storage counts as storage), OP-080
(BALANCE/SELFBALANCE), STO-010/021/022/031/032/033 (storage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak

# [OP-011], and the blob opcodes the rule lists since Cancun.
BLOCKED = frozenset({
    "ORIGIN", "GASPRICE", "BLOCKHASH", "COINBASE", "TIMESTAMP", "NUMBER", "DIFFICULTY", "PREVRANDAO",
    "GASLIMIT", "BASEFEE", "BLOBHASH", "BLOBBASEFEE", "CREATE", "INVALID", "SELFDESTRUCT",
})  # fmt: skip
STAKED_ONLY = frozenset({"BALANCE", "SELFBALANCE"})  # [OP-080]
CALLS = frozenset({"CALL", "CALLCODE", "DELEGATECALL", "STATICCALL"})
EXTCODE = frozenset({"EXTCODESIZE", "EXTCODEHASH", "EXTCODECOPY"})
STORAGE = {"SLOAD": False, "SSTORE": True, "TLOAD": False, "TSTORE": True}  # op -> writes
HALTS = frozenset({"STOP", "RETURN", "REVERT", "SELFDESTRUCT", "INVALID"})
CORE_PRECOMPILES = frozenset(range(1, 10))  # [OP-062]
# Addresses at or below this are precompiles or reserved for them: no contract lives there.
_PRECOMPILE_RANGE = 0x1FF
DEPOSIT_TO = keccak(text="depositTo(address)")[:4]
# Every opcode name the EVM assigns (Prague), so anything else is "unassigned" [OP-013].
# fmt: off
ASSIGNED = frozenset((
    "STOP", "ADD", "MUL", "SUB", "DIV", "SDIV", "MOD", "SMOD", "ADDMOD", "MULMOD", "EXP", "SIGNEXTEND",
    "LT", "GT", "SLT", "SGT", "EQ", "ISZERO", "AND", "OR", "XOR", "NOT", "BYTE", "SHL", "SHR", "SAR",
    "KECCAK256", "SHA3", "ADDRESS", "BALANCE", "ORIGIN", "CALLER", "CALLVALUE", "CALLDATALOAD",
    "CALLDATASIZE", "CALLDATACOPY", "CODESIZE", "CODECOPY", "GASPRICE", "EXTCODESIZE", "EXTCODECOPY",
    "RETURNDATASIZE", "RETURNDATACOPY", "EXTCODEHASH", "BLOCKHASH", "COINBASE", "TIMESTAMP", "NUMBER",
    "DIFFICULTY", "PREVRANDAO", "GASLIMIT", "CHAINID", "SELFBALANCE", "BASEFEE", "BLOBHASH",
    "BLOBBASEFEE", "POP", "MLOAD", "MSTORE", "MSTORE8", "SLOAD", "SSTORE", "JUMP", "JUMPI", "PC",
    "MSIZE", "GAS", "JUMPDEST", "TLOAD", "TSTORE", "MCOPY", "PUSH0", "CREATE", "CALL", "CALLCODE",
    "RETURN", "DELEGATECALL", "CREATE2", "STATICCALL", "REVERT", "INVALID", "SELFDESTRUCT",
    *(f"PUSH{n}" for n in range(1, 33)), *(f"DUP{n}" for n in range(1, 17)),
    *(f"SWAP{n}" for n in range(1, 17)), *(f"LOG{n}" for n in range(5)),
))
# fmt: on


@dataclass(frozen=True)
class Violation:
    rule: str  # ERC-7562's id, e.g. "OP-011"
    entity: str  # "factory", "account" or "paymaster": whose phase broke it
    address: str  # the contract whose code (or storage) did it
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.entity} ({self.address}): {self.detail}"


@dataclass
class _Frame:
    address: int  # whose storage and ADDRESS (the caller's own for DELEGATECALL/CALLCODE)
    code: int  # whose code runs
    entity: str | None  # None: the EntryPoint's own frame, exempt


@dataclass
class _Checker:
    steps: list[dict[str, Any]]
    sender: int
    entry_point: int
    sender_creator: int
    factory: int | None
    paymaster: int | None
    has_code: Callable[[int], bool]
    staked: frozenset[str]
    precompiles: frozenset[int]
    violations: list[Violation] = field(default_factory=list)
    created: dict[int, int] = field(default_factory=dict)  # step index -> created address
    associated: dict[int, set[int]] = field(default_factory=dict)  # address -> keccak(address||x)
    create2_by_factory: int = 0

    def entity_address(self, entity: str) -> int:
        return {"account": self.sender, "factory": self.factory, "paymaster": self.paymaster}[entity] or 0

    def flag(self, rule: str, frame: _Frame, detail: str, address: int | None = None) -> None:
        assert frame.entity is not None
        where = _hex_address(frame.code if address is None else address)
        found = Violation(rule, frame.entity, where, detail)
        if found not in self.violations:  # a loop repeats the same breach: report it once
            self.violations.append(found)

    def run(self) -> list[Violation]:
        self._find_created()
        frames = [_Frame(self.entry_point, self.entry_point, None)]
        for index, step in enumerate(self.steps):
            frame = frames[-1]
            following = self.steps[index + 1] if index + 1 < len(self.steps) else None
            if frame.entity is not None:
                self._check_step(index, step, frame, following)
            if following is None:
                break
            depth, next_depth = int(step["depth"]), int(following["depth"])
            if next_depth > depth:
                entered = self._entered(index, step, frame)
                if entered is None:  # the EntryPoint called itself: the execution phase
                    break
                frames.append(entered)
            elif next_depth < depth:
                del frames[next_depth - depth :]
        return self.violations

    def _find_created(self) -> None:
        """A CREATE*'s address is on the stack when its frame returns to the creator's depth."""
        pending: list[tuple[int, int]] = []  # (step index, depth)
        for index, step in enumerate(self.steps):
            depth = int(step["depth"])
            while pending and depth <= pending[-1][1] and index > pending[-1][0]:
                self.created[pending.pop()[0]] = _word(step["stack"][-1])
            if step["op"] in ("CREATE", "CREATE2"):
                pending.append((index, depth))

    def _entered(self, index: int, step: dict[str, Any], frame: _Frame) -> _Frame | None:
        op = step["op"]
        target = self.created[index] if op in ("CREATE", "CREATE2") else _word(step["stack"][-2])
        address = frame.address if op in ("DELEGATECALL", "CALLCODE") else target
        if frame.entity is not None:
            return _Frame(address, target, frame.entity)
        if target == self.entry_point:
            return None
        entity = {self.sender: "account", self.sender_creator: "factory"}.get(target)
        if entity is None and target == self.paymaster:
            entity = "paymaster"
        return _Frame(address, target, entity)

    def _check_step(
        self, index: int, step: dict[str, Any], frame: _Frame, following: dict[str, Any] | None
    ) -> None:
        op, stack = step["op"], step["stack"]
        staked = frame.entity in self.staked
        if op not in ASSIGNED:
            self.flag("OP-013", frame, f"unassigned opcode {op}")
        elif op == "CREATE" and frame.address == self.sender and self.factory is not None:
            pass  # [OP-032] the sender may CREATE when a factory deploys it
        elif op in BLOCKED:
            self.flag("OP-011", frame, f"uses {op}")
        elif op in STAKED_ONLY and not staked:
            self.flag("OP-080", frame, f"uses {op} (allowed only to a staked entity)")
        elif op == "GAS" and (following is None or following["op"] not in CALLS):
            self.flag("OP-012", frame, "uses GAS other than right before a call")
        elif op == "CREATE2":
            self._check_create2(index, frame)
        elif op in CALLS:
            self._check_call(step, frame)
        elif op in EXTCODE:
            self._check_extcode(step, frame, following)
        elif op in STORAGE:
            self._check_storage(frame, _word(stack[-1]), write=STORAGE[op], transient=op[0] == "T")
        elif op in ("KECCAK256", "SHA3") and following is not None:
            self._note_keccak(step, _word(following["stack"][-1]))
        self._check_out_of_gas(step, frame, following)

    def _check_create2(self, index: int, frame: _Frame) -> None:
        """[OP-031] once, in the factory phase, and it must create the sender; a staked factory
        may create more (the reference bundler's EREP-060)."""
        created = self.created.get(index, 0)
        if frame.entity != "factory":
            self.flag("OP-031", frame, f"CREATE2 outside the factory phase ({_hex_address(created)})")
            return
        if "factory" in self.staked:
            return
        self.create2_by_factory += 1
        if created != self.sender:
            self.flag("OP-031", frame, f"CREATE2 deploys {_hex_address(created)}, not the sender")
        elif self.create2_by_factory > 1:
            self.flag("OP-031", frame, "CREATE2 used more than once")

    def _check_call(self, step: dict[str, Any], frame: _Frame) -> None:
        op, stack = step["op"], step["stack"]
        target = _word(stack[-2])
        with_value = op in ("CALL", "CALLCODE")
        value = _word(stack[-3]) if with_value else 0
        args = (_word(stack[-4]), _word(stack[-5])) if with_value else (_word(stack[-3]), _word(stack[-4]))
        if target == self.entry_point:
            self._check_entry_point_call(frame, op, _memory(step, *args))
            return
        if value:
            self.flag("OP-061", frame, f"{op} with value {value} to {_hex_address(target)}")
        if target <= _PRECOMPILE_RANGE:
            if target not in self.precompiles:
                self.flag("OP-062", frame, f"{op} to precompile {_hex_address(target)}")
            return
        self._check_code_exists(frame, op, target)

    def _check_entry_point_call(self, frame: _Frame, op: str, data: bytes) -> None:
        """[OP-052] depositTo(sender) from the sender or factory; [OP-053] the fallback from the
        sender; [OP-054] nothing else."""
        deposit = (
            op == "CALL"
            and data[:4] == DEPOSIT_TO
            and int.from_bytes(data[4:36], "big") == self.sender
            and frame.address in (self.sender, self.factory)
        )
        fallback = op == "CALL" and not data and frame.address == self.sender
        if not (deposit or fallback):
            self.flag("OP-054", frame, f"{op} into the EntryPoint (calldata {data[:4].hex() or 'empty'})")

    def _check_extcode(self, step: dict[str, Any], frame: _Frame, following: dict[str, Any] | None) -> None:
        op, target = step["op"], _word(step["stack"][-1])
        if target == self.entry_point:
            # [OP-051] only EXTCODESIZE ISZERO (a has-code check before depositTo)
            if not (op == "EXTCODESIZE" and following is not None and following["op"] == "ISZERO"):
                self.flag("OP-054", frame, f"{op} of the EntryPoint")
            return
        self._check_code_exists(frame, op, target)

    def _check_code_exists(self, frame: _Frame, op: str, target: int) -> None:
        """[OP-041] no code access to an address without code; [OP-042] but the sender's, by the
        factory while it deploys it."""
        if target == self.sender and frame.entity == "factory":
            return
        if target in self.created.values() or self.has_code(target):
            return
        self.flag("OP-041", frame, f"{op} to {_hex_address(target)}, which has no code")

    def _note_keccak(self, step: dict[str, Any], result: int) -> None:
        """keccak(A || x): slots from the result on are associated with A (Definitions, 5)."""
        stack = step["stack"]
        data = _memory(step, _word(stack[-1]), _word(stack[-2]))
        if len(data) >= 32 and data[:12] == bytes(12):
            self.associated.setdefault(int.from_bytes(data[:32], "big"), set()).add(result)

    def _associated(self, slot: int, address: int) -> bool:
        """The slot is the address itself, or within 128 slots of keccak(address || x)."""
        return slot == address or any(0 <= slot - base < 128 for base in self.associated.get(address, ()))

    def _check_storage(self, frame: _Frame, slot: int, *, write: bool, transient: bool) -> None:
        owner = frame.address
        if owner == self.sender:
            return  # [STO-010] the account's own storage
        if owner == self.entry_point:
            return  # deposits: the reference bundler skips them; calls are limited by OP-052..054
        assert frame.entity is not None
        entity_address = self.entity_address(frame.entity)
        staked = frame.entity in self.staked
        kind = ("write to" if write else "read of") + (" transient" if transient else "")
        what = f"{kind} {_hex_address(owner)} slot {slot:#x}"
        if self._associated(slot, self.sender):
            if self.factory is None:
                return  # [STO-021] associated with an account that exists
            if "factory" not in self.staked:
                self.flag(
                    "STO-022", frame, f"{what}: the sender's, while an unstaked factory deploys it", owner
                )
            return
        if owner == entity_address:
            rule = "STO-031"  # the entity's own storage
        elif self._associated(slot, entity_address):
            rule = "STO-032"  # associated with the entity
        elif not write:
            rule = "STO-033"  # read-only access to a non-entity contract
        else:
            self.flag(
                "STO-033", frame, f"{what}: not associated with the sender (forbidden even if staked)", owner
            )
            return
        if not staked:
            self.flag(rule, frame, f"{what}: allowed only to a staked {frame.entity}", owner)

    def _check_out_of_gas(
        self, step: dict[str, Any], frame: _Frame, following: dict[str, Any] | None
    ) -> None:
        """[OP-020] a frame of the phase that ended for want of gas."""
        # anvil names the halt in ``error`` (e.g. OutOfGas, or ReentrancySentryOOG: an SSTORE
        # with 2300 gas or less left); a frame that ends on an unaffordable step is one too.
        error = str(step.get("error") or "").lower()
        ended = following is None or int(following["depth"]) < int(step["depth"])
        out = "oog" in error or "gas" in error
        out = out or (ended and step["op"] not in HALTS and int(step["gasCost"]) > int(step["gas"]))
        if out:
            self.flag("OP-020", frame, f"out of gas at {step['op']}")


def _word(value: str | int) -> int:
    return value if isinstance(value, int) else int(value, 16)


def _hex_address(value: int) -> str:
    return "0x" + value.to_bytes(32, "big")[12:].hex()


def _memory(step: dict[str, Any], offset: int, size: int) -> bytes:
    """``size`` bytes of the step's memory from ``offset`` (zero past its end, as the EVM reads)."""
    if size == 0:
        return b""
    words: Iterable[str] = step.get("memory") or ()
    memory = b"".join(bytes.fromhex(word.removeprefix("0x")) for word in words)
    return memory[offset : offset + size].ljust(size, b"\0")


def sender_creator_v07(entry_point: str) -> int:
    """The EntryPoint v0.7 creates its SenderCreator in its constructor: CREATE at nonce 1."""
    raw = bytes.fromhex(entry_point.removeprefix("0x"))
    return int.from_bytes(keccak(bytes([0xD6, 0x94]) + raw + bytes([1]))[12:], "big")


def check_validation(
    steps: list[dict[str, Any]],
    *,
    sender: str,
    entry_point: str,
    init_code: bytes = b"",
    paymaster_and_data: bytes = b"",
    has_code: Callable[[int], bool],
    staked: Iterable[str] = (),
    precompiles: Iterable[int] = CORE_PRECOMPILES,
) -> list[Violation]:
    """Every ERC-7562 rule the validation phase of one user operation breaks, in trace order.

    ``steps``: the struct logs (with memory) of ``handleOps([op], ...)`` on the EntryPoint v0.7;
    ``has_code``: whether an address held code before the operation; ``staked``: the entities
    ("account", "factory", "paymaster") that hold a stake.
    """
    checker = _Checker(
        steps,
        sender=int(sender, 16),
        entry_point=int(entry_point, 16),
        sender_creator=sender_creator_v07(entry_point),
        factory=int.from_bytes(init_code[:20], "big") if init_code else None,
        paymaster=int.from_bytes(paymaster_and_data[:20], "big") if paymaster_and_data else None,
        has_code=has_code,
        staked=frozenset(staked),
        precompiles=frozenset(precompiles),
    )
    return checker.run()


def trace_handle_ops(
    rpc_url: str, op: Any, entry_point: str, caller: str, block: str = "latest"
) -> list[dict[str, Any]]:
    """The struct logs (memory included: keccak inputs and call data) of ``handleOps([op], caller)``
    as ``caller`` would send it on top of ``block`` (a tag or hex number: an operation that has
    since landed is traced on its block's parent); raises when it would revert (validation refused)."""
    from chain_reads import rpc
    from web3 import Web3

    from x402_agent.chain.entrypoint import entry_point_v07_abi

    contract = Web3().eth.contract(address=Web3.to_checksum_address(entry_point), abi=entry_point_v07_abi())
    data = contract.encode_abi("handleOps", args=[[op.as_tuple()], Web3.to_checksum_address(caller)])
    trace = rpc(
        rpc_url,
        "debug_traceCall",
        {"from": caller, "to": entry_point, "data": data, "gas": hex(15_000_000)},
        block,
        {"enableMemory": True, "disableStorage": True},
    )
    if trace["failed"]:
        raise AssertionError(f"handleOps reverts: {trace['returnValue']}")
    steps: list[dict[str, Any]] = trace["structLogs"]
    return steps


def check_user_op(
    rpc_url: str, op: Any, entry_point: str, caller: str, block: str = "latest"
) -> list[Violation]:
    """``op`` traced in ``handleOps`` sent by ``caller`` on top of ``block``, checked for an
    unstaked account and factory."""
    return check_validation(
        trace_handle_ops(rpc_url, op, entry_point, caller, block),
        sender=op.sender,
        entry_point=entry_point,
        init_code=op.initCode,
        paymaster_and_data=op.paymasterAndData,
        has_code=chain_code(rpc_url, block),
    )


def chain_code(rpc_url: str, block: str = "latest") -> Callable[[int], bool]:
    """Whether an address holds code at ``block`` (before the traced operation), cached."""
    from chain_reads import rpc

    known: dict[int, bool] = {}

    def has_code(address: int) -> bool:
        if address not in known:
            known[address] = rpc(rpc_url, "eth_getCode", _hex_address(address), block) not in ("0x", "")
        return known[address]

    return has_code
