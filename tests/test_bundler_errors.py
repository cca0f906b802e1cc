"""A bundler's refusals in words: each ERC-7769 error code (and -32602) becomes a reason code with
a message and a next step, and the EntryPoint's AAxx code quoted by the bundler is explained.

The bundler here is ``hostile_bundler.HostileBundler``, a stand-in for a provider's bundler
(see its module doc for why a fake): real HTTP on a free loopback port, real JSON-RPC.
"""

from __future__ import annotations

import pytest
from hostile_bundler import HostileBundler

from x402_agent.chain.bundler import BundlerClient
from x402_agent.chain.bundler_errors import ENTRY_POINT_CODES, entry_point_words
from x402_agent.chain.entrypoint import ENTRY_POINT_V07
from x402_agent.chain.userop import PackedUserOperation
from x402_agent.errors import ChainError
from x402_agent.reasons import Reason

OP = PackedUserOperation(
    sender="0x" + "11" * 20, nonce=0, initCode=b"", callData=b"", accountGasLimits=b"\0" * 32,
    preVerificationGas=0, gasFees=b"\0" * 32, paymasterAndData=b"", signature=b"",
)  # fmt: skip

CASES = [
    (-32500, "UserOperation reverted with reason: AA23 reverted", "bundler_validation_reverted",
     "AA23: the account's validation reverted"),
    (-32501, "paymaster validation failed: AA33 reverted", "bundler_paymaster_rejected",
     "AA33: the paymaster's validation reverted"),
    (-32502, "account uses banned opcode: TIMESTAMP", "bundler_rules_violated", "ERC-7562"),
    (-32503, "UserOperation expires too soon: AA22 expired or not due", "bundler_time_range",
     "AA22: the operation is expired or not valid yet"),
    (-32504, "account 0x11.. is throttled", "bundler_throttled", "throttled or banned"),
    (-32505, "factory stake 0 is too low", "bundler_stake_too_low", "stake"),
    (-32506, "unsupported aggregator", "bundler_aggregator", "aggregator"),
    (-32507, "UserOperation reverted with reason: AA24 signature error", "bundler_signature_invalid",
     "AA24: the account refused the signature"),
    (-32602, "maxPriorityFeePerGas must be at least 0x3b9aca00", "bundler_invalid_fields",
     "gas price below its minimum"),
    (-32000, "something a provider made up", "bundler_rejected", "the bundler refused"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "said", "reason", "words"), CASES, ids=[str(c[0]) for c in CASES])
@pytest.mark.parametrize("method", ["send", "estimate"])
def test_each_refusal_is_said_in_words(code: int, said: str, reason: str, words: str, method: str) -> None:
    with (
        HostileBundler(84532, ENTRY_POINT_V07, code, said) as hostile,
        BundlerClient(hostile.url) as client,
        pytest.raises(ChainError) as refused,
    ):
        getattr(client, method)(OP)
    error = refused.value
    assert error.reason == reason and words in error.message
    assert said in error.message and error.details["code"] == code  # the provider's own words too
    member = Reason.of(reason)
    assert member is not None and member.next_step
    if member != Reason.BUNDLER_REJECTED:
        assert "nothing was paid" in member.next_step
    shown = error.to_dict()
    assert shown["reason"] == reason and shown["next_step"] == member.next_step


def test_a_long_answer_is_cut_and_a_non_bundler_is_unavailable() -> None:
    with HostileBundler(1, ENTRY_POINT_V07, -32500, "x" * 10_000) as hostile, BundlerClient(hostile.url) as c:
        with pytest.raises(ChainError) as long:
            c.send(OP)
        with pytest.raises(ChainError) as not_bundler:
            c.call("eth_getUserOperationByHash", ["0x" + "00" * 32])  # the stand-in lacks it
    assert len(long.value.message) < 1_000
    assert not_bundler.value.reason == "bundler_unavailable"


def test_every_entry_point_code_has_words() -> None:
    for code, words in ENTRY_POINT_CODES.items():
        assert entry_point_words(f"FailedOp: {code} whatever") == f"{code}: {words}"
    assert entry_point_words("AA99 unheard of") is None and entry_point_words(None) is None
