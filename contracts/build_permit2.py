"""Build the local world's Permit2 and x402 Permit2 proxies into ``contracts/permit2/build``.

Run with the project's venv: ``.venv/bin/python contracts/build_permit2.py [OUT_DIR]``.

- Permit2 from the sources npm ``@uniswap/v4-periphery`` ships (``lib/permit2/src``, solmate from
  its ``lib``), with the compiler and settings of Permit2's own foundry.toml: its contracts pin
  ``pragma solidity 0.8.17`` exactly, so the npm package ``solc-0.8.17`` (an alias of solc 0.8.17)
  compiles it, via IR, 1,000,000 optimizer runs, no metadata hash.
- Our two x402 proxies (``contracts/permit2/src``) with the project's pinned solc and settings
  (``contracts/build.py``).

Kept apart from ``contracts/build``, which holds exactly what ``contracts/src`` builds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def _project_build() -> ModuleType:
    """contracts/build.py, beside this script, loaded by path: the name ``build`` alone could be
    another module already imported (PyPA's ``build``)."""
    spec = importlib.util.spec_from_file_location(
        "x402_contracts_build", Path(__file__).resolve().parent / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


project_build = _project_build()

ROOT = project_build.ROOT
SRC_DIR = ROOT / "contracts" / "permit2" / "src"
DEFAULT_OUT = ROOT / "contracts" / "permit2" / "build"
PERMIT2_DIR = ROOT / "node_modules" / "@uniswap" / "v4-periphery" / "lib" / "permit2"
PERMIT2_SOLC = "solc-0.8.17"
PERMIT2_SETTINGS: dict[str, Any] = {
    "viaIR": True,
    "optimizer": {"enabled": True, "runs": 1_000_000},
    "metadata": {"bytecodeHash": "none"},
    "remappings": [f"solmate/={(PERMIT2_DIR / 'lib' / 'solmate').relative_to(ROOT).as_posix()}/"],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def build_permit2(out_dir: Path = DEFAULT_OUT) -> Path:
    """Compile Permit2 and write ``<out_dir>/Permit2.json``."""
    source = PERMIT2_DIR / "src" / "Permit2.sol"
    output = project_build.compile_files([source], PERMIT2_SETTINGS, PERMIT2_SOLC)
    compiled = output["contracts"][source.relative_to(ROOT).as_posix()]["Permit2"]
    artifact = {
        "contractName": "Permit2",
        "sourceName": source.relative_to(ROOT).as_posix(),
        "abi": compiled["abi"],
        "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "Permit2.json"
    target.write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")
    return target


def build(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Permit2 and the proxies (the proxies' abstract base yields an artifact without code too)."""
    return [build_permit2(out_dir), *project_build.build(out_dir, SRC_DIR)]


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(path)
