"""JSON from servers, parsed only when it is not nested deeper than any real document.

The standard parser recurses once per level of nesting and relies on the recursion limit to
stop. py_ecc (imported with web3) raises that limit to 100000 for the whole process, so a
hostile answer of a few hundred kilobytes of ``[`` overflows the C stack and kills the process
instead of raising. The depth is measured first, in linear time on the bytes (C-speed passes,
no backtracking): escaped backslashes and quotes removed, strings removed, then the running
count of the brackets that remain.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64

_STRINGS = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
for _open, _close in (b"[]", b"{}"):
    _STEP[_open], _STEP[_close] = 1, -1


def nesting_depth(raw: bytes) -> int:
    """How deep ``raw``'s arrays and objects nest (exact for valid JSON, never below it)."""
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = _STRINGS.sub(b"", plain).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, skeleton)), default=0)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, or ValueError when ``raw`` nests deeper than ``max_depth``."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if nesting_depth(data) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(data)
