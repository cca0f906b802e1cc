"""Compile ``contracts/src/*.sol`` with the pinned solcjs (npm ``solc``), offline.

Run from anywhere with the project's venv: ``.venv/bin/python contracts/build.py [OUT_DIR]``.
It writes ``<OUT_DIR>/<Name>.json`` (abi, bytecode, deployedBytecode; sorted keys) for every
contract defined in ``contracts/src``. The default OUT_DIR is ``contracts/build``.

Source unit names are repository-relative and the settings are fixed, so the output (including
the metadata hash at the end of the bytecode) depends only on the sources and the solc version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = ROOT / "contracts" / "src"
DEFAULT_OUT = ROOT / "contracts" / "build"
# Our batch-settlement contracts (the x402 scheme's interface, placed at the canonical addresses
# in the local world), built with the same settings into their own directory.
BATCH_SRC_DIR = ROOT / "contracts" / "batch" / "src"
BATCH_OUT = ROOT / "contracts" / "batch" / "build"

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 1_000_000},
    "evmVersion": "shanghai",
    "remappings": [
        "@account-abstraction/=node_modules/@account-abstraction/",
        "@openzeppelin/=node_modules/@openzeppelin/",
    ],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

# solcjs reads imports through this callback, relative to the repository root and never outside it.
_NODE_COMPILE = r"""
const fs = require('fs');
const path = require('path');
const solc = require(path.join(process.cwd(), 'node_modules', process.argv[1]));
const root = fs.realpathSync(process.cwd());
function findImports(name) {
  const file = path.resolve(root, name);
  if (!file.startsWith(root + path.sep)) return { error: 'outside the repository: ' + name };
  try { return { contents: fs.readFileSync(file, 'utf8') }; }
  catch (e) { return { error: 'not found: ' + name }; }
}
const input = fs.readFileSync(0, 'utf8');
process.stdout.write(solc.compile(input, { import: findImports }));
"""


def compile_sources(src_dir: Path = SRC_DIR) -> dict[str, Any]:
    """Run solcjs standard JSON over ``src_dir`` (inside the repository, for the imports) and
    return its output (raises on errors)."""
    return compile_files(sorted(src_dir.glob("*.sol")))


def compile_files(
    files: list[Path], settings: dict[str, Any] = SETTINGS, solc: str = "solc"
) -> dict[str, Any]:
    """Compile ``files`` (inside the repository) with the npm package ``solc`` names (another
    pinned solcjs for sources whose pragma needs it) and ``settings``; raises on errors."""
    sources = {path.relative_to(ROOT).as_posix(): {"content": path.read_text()} for path in files}
    request = {"language": "Solidity", "sources": sources, "settings": settings}
    done = subprocess.run(
        ["node", "-e", _NODE_COMPILE, solc],
        input=json.dumps(request),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    output: dict[str, Any] = json.loads(done.stdout)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    return output


def build(out_dir: Path = DEFAULT_OUT, src_dir: Path = SRC_DIR) -> list[Path]:
    """Compile and write one artifact per contract defined in ``src_dir``; return their paths.
    (Another ``src_dir``, e.g. an earlier revision's sources, is built with the same settings.)"""
    output = compile_sources(src_dir)
    prefix = src_dir.relative_to(ROOT).as_posix() + "/"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for unit, contracts in sorted(output["contracts"].items()):
        if not unit.startswith(prefix):
            continue
        for name, compiled in sorted(contracts.items()):
            artifact = {
                "contractName": name,
                "sourceName": unit,
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
            target = out_dir / f"{name}.json"
            target.write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")
            written.append(target)
    return written


if __name__ == "__main__":
    # With no OUT_DIR: both the account contracts and the batch-settlement ones.
    written = build(Path(sys.argv[1])) if len(sys.argv) > 1 else build() + build(BATCH_OUT, BATCH_SRC_DIR)
    for path in written:
        print(path)
