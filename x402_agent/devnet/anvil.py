"""anvil (the local EVM node) from the pinned npm package, plus its dev accounts.

The binary comes from node_modules (npm ``@foundry-rs/anvil-linux-amd64``) so
nothing is downloaded at run time. anvil picks a free port itself (``--port 0``)
and prints ``Listening on host:port`` when it accepts requests: that line is the
readiness signal and tells us the port, with no race and no sleeping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic
from eth_account.signers.local import LocalAccount

from ..paths import PROJECT_ROOT
from .proc import ManagedProcess

ANVIL_BIN = PROJECT_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"

# anvil's default dev wallet: public test keys, funded with 10,000 ETH at genesis.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_ACCOUNT_COUNT = 10

_READY_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")


@cache
def dev_account(index: int) -> LocalAccount:
    """anvil's dev account ``index`` (BIP-44 path m/44'/60'/0'/0/index)."""
    if not 0 <= index < DEV_ACCOUNT_COUNT:
        raise ValueError(f"anvil funds dev accounts 0..{DEV_ACCOUNT_COUNT - 1}, not {index}")
    key = key_from_seed(_dev_seed(), f"m/44'/60'/0'/0/{index}")
    account: LocalAccount = Account.from_key(key)
    return account


@cache
def _dev_seed() -> bytes:
    return seed_from_mnemonic(DEV_MNEMONIC, "")


@dataclass
class Anvil:
    """A running anvil bound to a free loopback port."""

    process: ManagedProcess
    rpc_url: str
    chain_id: int

    @classmethod
    def start(
        cls, chain_id: int, *, hardfork: str = "prague", idle_block_seconds: int | None = None
    ) -> Anvil:
        """Start anvil and return once it listens (a few hundred ms at most).

        ``idle_block_seconds``: also mine a block every that many seconds, so the chain's time
        keeps up with the clock while nobody transacts (None: blocks only for transactions).
        """
        if not ANVIL_BIN.exists():
            raise FileNotFoundError(f"{ANVIL_BIN} is missing: run `npm ci` in {PROJECT_ROOT}")
        argv = [
            str(ANVIL_BIN),
            "--host", "127.0.0.1",
            "--port", "0",
            "--chain-id", str(chain_id),
            "--hardfork", hardfork,
            "--accounts", str(DEV_ACCOUNT_COUNT),
        ]  # fmt: skip
        if idle_block_seconds is not None:
            # Mixed mining: every transaction is still mined the moment it arrives (automine, no
            # added latency), and a block also comes every ``idle_block_seconds``. Automine alone
            # leaves an idle chain at its last block's timestamp, which contracts (the smart
            # account's window check) compare against; interval mining alone would hold every
            # transaction until the next tick.
            argv += ["--mixed-mining", "--block-time", str(idle_block_seconds)]
        process = ManagedProcess(f"anvil(chain {chain_id})", argv)
        try:
            line = process.wait_for_line(lambda text: "Listening on" in text, _READY_TIMEOUT_S)
        except BaseException:
            process.stop()
            raise
        found = _LISTENING.search(line)
        if found is None:
            process.stop()
            raise RuntimeError(f"cannot parse anvil's address from {line!r}")
        host, port = found.groups()
        return cls(process=process, rpc_url=f"http://{host}:{port}", chain_id=chain_id)

    def set_balance(self, address: str, wei: int) -> None:
        """Give ``address`` exactly ``wei`` of ETH (anvil's cheat code)."""
        import httpx

        answer = httpx.post(
            self.rpc_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [address, hex(wei)]},
        ).json()
        if "error" in answer:
            raise RuntimeError(f"anvil_setBalance failed: {answer['error']}")

    def stop(self) -> None:
        """Stop anvil (idempotent)."""
        self.process.stop()
