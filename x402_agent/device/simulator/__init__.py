"""A Trezor Model T SIMULATOR for tests and demos -- NOT SECURE.

It speaks Trezor wire protocol v1 over UDP, by default on 127.0.0.1:21324 (debug link on
21325), where unmodified HWI (``hwi --emulators``, ``hwilib.commands``) and trezorlib look for
the Trezor emulator; ``port=0`` takes a free pair (local worlds do, so several run at once), to
be opened by path. Its keys come from a BIP-39 mnemonic held in this process's memory (default: the
standard test seed "all" x12) and anything on the machine can ask it to sign: never give it a
mnemonic that guards real funds. Its label says "SIMULATOR (insecure)" and it logs no secrets.

Supported: Initialize/GetFeatures/EndSession/Cancel/Ping/LockDevice/ApplyFlags/ApplySettings,
GetPublicKey, GetAddress and SignMessage (Bitcoin, Testnet, Regtest; P2PKH, P2SH-P2WPKH, P2WPKH),
EthereumGetAddress, EthereumGetPublicKey, EthereumSignMessage (EIP-191), EthereumSignTypedData
(EIP-712, streamed) and EthereumSignTypedHash. Anything else gets a Failure.

    with DeviceSimulator(confirm="auto") as sim:
        ...  # hwilib.commands.get_client("trezor", sim.path) etc.
"""

from .engine import CONFIRM_MODES, ConfirmMode, Outcome
from .handlers import DEFAULT_LABEL, FIRMWARE_VERSION
from .keys import TEST_MNEMONIC
from .server import DEFAULT_PORT, DeviceSimulator, run_simulator
from .workflow import Screen

__all__ = [
    "CONFIRM_MODES",
    "DEFAULT_LABEL",
    "DEFAULT_PORT",
    "FIRMWARE_VERSION",
    "TEST_MNEMONIC",
    "ConfirmMode",
    "DeviceSimulator",
    "Outcome",
    "Screen",
    "run_simulator",
]
