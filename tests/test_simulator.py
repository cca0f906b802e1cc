"""The device simulator against real, unmodified HWI and trezorlib (no mocks).

Expected values are transcribed from trezor-firmware's own device tests and fixtures for the
standard test seed ("all" x12), each with its source file, plus BIP-84's published vector.
"""
# ruff: noqa: E501  (transcribed vectors: xpubs, signatures and typed data stay one per line)

from __future__ import annotations

import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hwilib import commands as hwi
from hwilib.common import AddressType, Chain
from hwilib.devices.trezor import TrezorClient
from hwilib.errors import ACTION_CANCELED, ActionCanceledError
from trezorlib import btc, ethereum, exceptions, messages
from trezorlib.client import Session, get_default_client, get_default_session
from trezorlib.debuglink import DebugLink
from trezorlib.tools import parse_path
from trezorlib.transport import TransportException
from trezorlib.transport.udp import UdpTransport

from x402_agent.device.simulator import DeviceSimulator, Screen, run_simulator

HOST = "127.0.0.1"
EMULATOR_PORT = 21324  # the only place HWI's scan (enumerate) looks for a Trezor emulator
EMULATOR_PATH = f"udp:{HOST}:{EMULATOR_PORT}"
# Only the scan tests bind HWI's port, for a moment each; another test process or a
# `device simulate` may hold it meanwhile: queue behind it.
PORT_WAIT = 120.0
TEST_SEED_FINGERPRINT = "5c9e228d"
EXAMPLE = "This is an example of a signed message."
ETH_PATH = "m/44h/60h/0h/0/0"
ETH_ADDRESS = "0x73d0385F4d8E00C5e6504C6030F47BF6212736A8"

SCREENS: list[Screen] = []


# ---- fixtures and helpers -------------------------------------------------------------------
def _port_free(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((HOST, port))
    except OSError:
        return False
    finally:
        probe.close()
    return True


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[DeviceSimulator]:
    """A simulator on a free port pair, reached by path. When conftest provides the session's
    simulator (``device_simulator``), that one is used."""
    try:
        shared: DeviceSimulator | None = request.getfixturevalue("device_simulator")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        previous = shared.on_screen
        shared.on_screen = SCREENS.append
        try:
            yield shared
        finally:
            shared.on_screen = previous
            shared.confirm, shared.honor_debuglink = "auto", True
            if not shared.running:
                shared.start()
        return
    simulator = DeviceSimulator(port=0, on_screen=SCREENS.append)
    simulator.start()
    try:
        yield simulator
    finally:
        port = simulator.port
        simulator.stop()
        assert not simulator.running
        assert _port_free(port) and _port_free(port + 1)


@pytest.fixture
def at_emulator_port() -> Iterator[DeviceSimulator]:
    """A simulator on HWI's emulator port, for the tests of HWI's scan (only they need it)."""
    with DeviceSimulator(port=EMULATOR_PORT).start(wait=PORT_WAIT) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh_device(request: pytest.FixtureRequest) -> Iterator[None]:
    if "sim" not in request.fixturenames:
        yield
        return
    simulator: DeviceSimulator = request.getfixturevalue("sim")
    if not simulator.running:
        simulator.start()
    simulator.confirm = "auto"
    simulator.honor_debuglink = True
    SCREENS.clear()
    yield
    if simulator.pending_screen is not None:
        simulator.reject()


def hwi_open(sim: DeviceSimulator, chain: Chain = Chain.MAIN) -> TrezorClient:
    """HWI's own Trezor client for the simulator at its port. (``hwi.get_client`` finds an
    emulator only at HWI's port; its Trezor client takes the emulator's address.)"""
    return TrezorClient(sim.path, chain=chain, sim_path=f"{HOST}:{sim.port}")


@pytest.fixture
def hwi_client(sim: DeviceSimulator) -> Iterator[Any]:
    client = hwi_open(sim)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def session(sim: DeviceSimulator) -> Session:
    return _session_at(sim)


def _session_at(sim: DeviceSimulator) -> Session:
    return get_default_session(get_default_client("x402-agent-tests", UdpTransport(f"{HOST}:{sim.port}")))


class Background:
    """Runs a client call on a thread; ``join`` fails the test if it does not finish in time."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 10.0) -> Background:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the client hung"
        return self


def b64(hex_signature: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_signature)).decode()


# ---- vectors ----------------------------------------------------------------------------------
# trezor-firmware tests/device_tests/bitcoin/test_getpublickey.py, VECTORS_BITCOIN (seed "all" x12)
XPUB_VECTORS = [
    (
        "m/44h/0h/0h",
        "xpub6BiVtCpG9fQPxnPmHXG8PhtzQdWC2Su4qWu6XW9tpWFYhxydCLJGrWBJZ5H6qTAHdPQ7pQhtpjiYZVZARo14qHiay2fvrX996oEP42u8wZy",
    ),
    (
        "m/44h/0h/10h",
        "xpub6BiVtCpG9fQQR6cSuFeDaSvCDgNvNme499JUGX4RHDiZVWwZy9NwNieWKXHLe8XRbdrEmY87aqztBCbRJkXWV7VJB96XBT5cpkqYMHwvLWB",
    ),
    (
        "m/44h/0h/0h/0/0",
        "xpub6FVDRC1jiWNTuT3embehwSZ1buxRDyZGbTakVCkBr6w2LwpERmYqXyvtrLeJX9hqzLaucS3qJXGekeFsSVCELkbgepp7FVGeH5BYekEgT9x",
    ),
    (
        "m/44h/0h/10h/1/100",
        "xpub6GhTNegKCjTqjYS4HNkPhXHXHNZV2cPC38N7HbpUKexXXuTkjKPnijqKTB7yXidP4JtTUWTuWPTt6P55xi91NPgUp51BnqYzYdNhho4y5j8",
    ),
    (
        "m/0h",
        "xpub68Zyu13qjcQvJXTsnmhH2h2TyPiXAama5bTU8u9iRXyYtS9X9yWvSKij6YGt7JJ2nr5rSGi4KLUW5Z8bTKHqXhbLwqb7smG3Y8j2wy4rmf3",
    ),
]
# same file, Testnet entry
TESTNET_XPUB = (
    "m/44h/1h/0h",
    "tpubDDKn3FtHc74CaRrRbi1WFdJNaaenZkDWqq9NsEhcafnDZ4VuKeuLG2aKHm5SuwuLgAhRkkfHqcCxpnVNSrs5kJYZXwa6Ud431VnevzzzK3U",
)
# same file, VECTORS_SCRIPT_TYPES (path m/44h/0h/0, version bytes per script type)
SCRIPT_TYPE_XPUBS = [
    (
        messages.InputScriptType.SPENDADDRESS,
        "xpub6BiVtCp7ozsRo7kaoYNrCNAVJwPYTQHjoXFD3YS797S55Y42sm2raxPrXQWAJodn7aXnHJdhz433ZJDhyUztHW55WatHeoYUVqui8cYNX8y",
    ),
    (
        messages.InputScriptType.SPENDP2SHWITNESS,
        "ypub6WYmBsV2xgQueQwhduAUQTFzUuXzQ2HEidmRpwKzX7ox8dsG8RCRD23zYcTkJiHhXDeb2nEGSiPbSaqGhBQu5jkgNvaiEiMxmZyMXEvfNco",
    ),
    (
        messages.InputScriptType.SPENDWITNESS,
        "zpub6qP2VY9x7MxPVi8pUFx6cYMVesgSLeGjdkHecLDsu8BqBjgVP5Myq5i8ZpRLJcwcvrmPnFppuNk9KsSqQspusySHFGH8pdBT3J2zujqcVuz",
    ),
]

# trezor-firmware tests/device_tests/bitcoin/test_signmessage.py, VECTORS and VECTORS_LONG_MESSAGE:
# (coin, path, script type, no_script_type, address, message, signature hex)
MESSAGE_NFKD = "Pr\u030ci\u0301s\u030cerne\u030c z\u030clut\u030couc\u030cky\u0301 ku\u030an\u030c u\u0301pe\u030cl d\u030ca\u0301belske\u0301 o\u0301dy za\u0301ker\u030cny\u0301 uc\u030cen\u030c be\u030cz\u030ci\u0301 pode\u0301l zo\u0301ny u\u0301lu\u030a"
MESSAGE_NFC = "P\u0159\xed\u0161ern\u011b \u017elu\u0165ou\u010dk\xfd k\u016f\u0148 \xfap\u011bl \u010f\xe1belsk\xe9 \xf3dy z\xe1ke\u0159n\xfd u\u010de\u0148 b\u011b\u017e\xed pod\xe9l z\xf3ny \xfal\u016f"
S = messages.InputScriptType
BTC_SIGN_VECTORS = [
    (
        "Bitcoin",
        "m/44h/0h/0h/0/0",
        S.SPENDADDRESS,
        False,
        "1JAd7XCBzGudGpJQSDSfpmJhiygtLQWaGL",
        EXAMPLE,
        "20fd8f2f7db5238fcdd077d5204c3e6949c261d700269cefc1d9d2dcef6b95023630ee617f6c8acf9eb40c8edd704c9ca74ea4afc393f43f35b4e8958324cbdd1c",
    ),
    (
        "Bitcoin",
        "m/49h/0h/0h/0/0",
        S.SPENDP2SHWITNESS,
        False,
        "3L6TyTisPBmrDAj6RoKmDzNnj4eQi54gD2",
        EXAMPLE,
        "23744de4516fac5c140808015664516a32fead94de89775cec7e24dbc24fe133075ac09301c4cc8e197bea4b6481661d5b8e9bf19d8b7b8a382ecdb53c2ee0750d",
    ),
    (
        "Bitcoin",
        "m/84h/0h/0h/0/0",
        S.SPENDWITNESS,
        False,
        "bc1qannfxke2tfd4l7vhepehpvt05y83v3qsf6nfkk",
        EXAMPLE,
        "28b55d7600d9e9a7e2a49155ddf3cfdb8e796c207faab833010fa41fb7828889bc47cf62348a7aaa0923c0832a589fab541e8f12eb54fb711c90e2307f0f66b194",
    ),
    (
        "Bitcoin",
        "m/49h/0h/0h/0/0",
        S.SPENDP2SHWITNESS,
        True,
        "3L6TyTisPBmrDAj6RoKmDzNnj4eQi54gD2",
        EXAMPLE,
        "1f744de4516fac5c140808015664516a32fead94de89775cec7e24dbc24fe133075ac09301c4cc8e197bea4b6481661d5b8e9bf19d8b7b8a382ecdb53c2ee0750d",
    ),
    (
        "Bitcoin",
        "m/84h/0h/0h/0/0",
        S.SPENDWITNESS,
        True,
        "bc1qannfxke2tfd4l7vhepehpvt05y83v3qsf6nfkk",
        EXAMPLE,
        "20b55d7600d9e9a7e2a49155ddf3cfdb8e796c207faab833010fa41fb7828889bc47cf62348a7aaa0923c0832a589fab541e8f12eb54fb711c90e2307f0f66b194",
    ),
    (
        "Bitcoin",
        "m/44h/0h/0h/0/1",
        S.SPENDADDRESS,
        False,
        "1GWFxtwWmNVqotUPXLcKVL2mUKpshuJYo",
        MESSAGE_NFKD,
        "2046a0b46e81492f82e0412c73701b9740e6462c603575ee2d36c7d7b4c20f0f33763ca8cb3027ea8e1ce5e83fda8b6746fea8f5c82655d78fd419e7c766a5e17a",
    ),
    (
        "Bitcoin",
        "m/44h/0h/0h/0/1",
        S.SPENDADDRESS,
        False,
        "1GWFxtwWmNVqotUPXLcKVL2mUKpshuJYo",
        MESSAGE_NFC,
        "2046a0b46e81492f82e0412c73701b9740e6462c603575ee2d36c7d7b4c20f0f33763ca8cb3027ea8e1ce5e83fda8b6746fea8f5c82655d78fd419e7c766a5e17a",
    ),
    (
        "Bitcoin",
        "m/44h/0h/0h/0/0",
        S.SPENDADDRESS,
        False,
        "1JAd7XCBzGudGpJQSDSfpmJhiygtLQWaGL",
        "VeryLongMessage!" * 64,
        "200a46476ceb84d06ef5784828026f922c8815f57aac837b8c013007ca8a8460db63ef917dbebaebd108b1c814bbeea6db1f2b2241a958e53fe715cc86b199d9c3",
    ),
    (
        "Testnet",
        "m/44h/1h/0h/0/0",
        S.SPENDADDRESS,
        False,
        "mvbu1Gdy8SUjTenqerxUaZyYjmveZvt33q",
        EXAMPLE,
        "2030cd7f116c0481d1936cfef48137fd23ee56aaf00787bfa08a94837466ec9909390c3efacfc56bae5782f1db4cf49ae05f242b5f62a47f871ec46bf1a3253e7f",
    ),
    (
        "Testnet",
        "m/49h/1h/0h/0/0",
        S.SPENDP2SHWITNESS,
        False,
        "2N4Q5FhU2497BryFfUgbqkAJE87aKHUhXMp",
        EXAMPLE,
        "23ef39fd388c3425d6aaa04274dcd5c7dd4c283a411b616443474fbcde5dd966050d91bc7c57e9578f28efdd84c9a9bcba415f93c5727b5d3f2bf3de46d7084896",
    ),
    (
        "Testnet",
        "m/84h/1h/0h/0/0",
        S.SPENDWITNESS,
        False,
        "tb1qkvwu9g3k2pdxewfqr7syz89r3gj557l3uuf9r9",
        EXAMPLE,
        "27758b3393396ad9fe48f6ce81f63410145e7b2b69a5dfc1d48b5e6e623e91e08e3afb60bda1546f9c6f9fb5bd0a41887b784c266036dd4b4015a0abc1137daa1d",
    ),
]
# The subset HWI can ask for: HWI always signs with script type SPENDADDRESS (header 31 + recid),
# which equals the firmware's no_script_type result; (chain, path, message, signature hex).
EXAMPLE_SIGNATURE = {"signature": b64(BTC_SIGN_VECTORS[0][6])}  # HWI's answer, m/44h/0h/0h/0/0
HWI_SIGN_VECTORS = [
    (Chain.MAIN, v[1], v[5], v[6]) for v in BTC_SIGN_VECTORS if v[2] == S.SPENDADDRESS or v[3]
] + [(Chain.TEST, v[1], v[5], v[6]) for v in BTC_SIGN_VECTORS if v[0] == "Testnet" and v[2] == S.SPENDADDRESS]

# trezor-firmware common/tests/fixtures/ethereum/getaddress.json (seed "all" x12)
ETH_ADDRESS_VECTORS = [
    ("m/44'/60'/0'", "0xdA0b608bdb1a4A154325C854607c68950b4F1a34"),
    ("m/44'/60'/100'", "0x93Fb0Ff84F5BB6E7b6a9835C7AA6dE7a76794266"),
    ("m/44'/60'/0'/0/0", ETH_ADDRESS),
    ("m/44'/60'/0'/0/100", "0x1e6E3708a059aEa1241a81c7aAe84b6CDbC54d59"),
    ("m/44'/61'/0'/0/0", "0xF410e37E9C8BCf8CF319c84Ae9dCEbe057804a04"),
]

# trezor-firmware common/tests/fixtures/ethereum/signmessage.json (path m/44'/60'/0'/0/0)
ETH_MESSAGE_VECTORS = [
    (
        EXAMPLE,
        "af4eac50f21acc6daeb0ab036f616f5d19fccade46e47100642b3dfc798c9b740d5873887bdc2f02502c90777a082d10dca113bd1ec29d08108396401421c8cc1b",
    ),
    (
        "VeryLongMessage!" * 64,
        "e9b3648fe10146a7c5c73ae1e42468273b945554b13769be19c3658e5b55c62d7036b56c1e094dc364060b798b120a528f31d91e815d0612c367bf7471519c761c",
    ),
    (
        "MsgLenIs9",
        "495b5b021517cd01cb05f02dfb6a1f79a8d9e4f82e8fb01d44ebf7d1218333f1528b67043ffc25c5b64b1e5a182f5d7d5707fcb639092af708969f90038155a91c",
    ),
    (
        "MsgLenIs10",
        "0c8eb57decbb95d2a783e69d444b3747c49ebcceb14f24287732ba77c39aa5cd2c66f7ec545b8108ef7ce078edac4588c70ab6249fc626114a95606783828f041b",
    ),
    (
        "MsgLenIs11!",
        "5f1ab8940c2137baf69a2b94f55f0f7e53a022b9e363b564744616271eb89b66145055fc9923c6ead63dd784854c742f4f5651c8257d70cbce5a96ce2986dd311c",
    ),
    (
        "This message has length 99".ljust(99, "!"),
        "f2c3d9c81fe35a6bc68f0ace01bd7209baf11e455e7335903e7ad2879ce5d7bc2199bf8bafc1efe1ff2cfdf2963cd5767911a641c9445cca6f37dc6da72fd1611b",
    ),
    (
        "This message has length 100".ljust(100, "!"),
        "a6d05d98180246cbd7084f191465d02c4242bc7f856632a2b5b43acd496c46c03a36cc60bfeca6ca98fd210748a3aa68aa7ebba71b39adcad7f88325fc34131a1b",
    ),
    (
        "This message has length 101".ljust(101, "!"),
        "fa9d60644436f27eb88956a50893e9a47f67c42fb1b57a44bde4c6e127ab777e0c23b234b6ec9327ffd0620daaa514243ebb5a3652a1bac2d720e0f5555b2e071c",
    ),
]

# trezor-firmware common/tests/fixtures/ethereum/sign_typed_data.json (path m/44'/60'/0'/0/0):
# name -> (metamask_v4_compat, data, domain separator hash, message hash or None, signature)
_DOMAIN_4 = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_DOMAIN_5 = [*_DOMAIN_4, {"name": "salt", "type": "bytes32"}]
_PERSON = [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}]
_ETHER_MAIL = {
    "name": "Ether Mail",
    "version": "1",
    "chainId": 1,
    "verifyingContract": "0x1e0Ae8205e9726E6F296ab8869160A6423E2337E",
}
_MAIL_BASIC = {
    "types": {
        "EIP712Domain": _DOMAIN_4,
        "Person": _PERSON,
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
        ],
    },
    "primaryType": "Mail",
    "domain": _ETHER_MAIL,
    "message": {
        "from": {"name": "Cow", "wallet": "0xc0004B62C5A39a728e4Af5bee0c6B4a4E54b15ad"},
        "to": {"name": "Bob", "wallet": "0x54B0Fa66A065748C40dCA2C7Fe125A2028CF9982"},
        "contents": "Hello, Bob!",
    },
}
_MAIL_LIST = {
    "types": {
        "EIP712Domain": _DOMAIN_4,
        "Person": _PERSON,
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person[]"},
            {"name": "contents", "type": "string"},
        ],
    },
    "primaryType": "Mail",
    "domain": _ETHER_MAIL,
    "message": {
        "from": {"name": "Cow", "wallet": "0xc0004B62C5A39a728e4Af5bee0c6B4a4E54b15ad"},
        "to": [
            {"name": "Bob", "wallet": "0x54B0Fa66A065748C40dCA2C7Fe125A2028CF9982"},
            {"name": "Dave", "wallet": "0x73d0385F4d8E00C5e6504C6030F47BF6212736A8"},
        ],
        "contents": "Hello, guys!",
    },
}
_COMPLEX_PERSON = [
    {"name": "name", "type": "string"},
    {"name": "wallet", "type": "address"},
    {"name": "married", "type": "bool"},
    {"name": "kids", "type": "uint8"},
    {"name": "karma", "type": "int16"},
    {"name": "secret", "type": "bytes"},
    {"name": "small_secret", "type": "bytes16"},
    {"name": "pets", "type": "string[]"},
    {"name": "two_best_friends", "type": "string[2]"},
]
_COMPLEX = {
    "types": {
        "EIP712Domain": _DOMAIN_5,
        "Person": _COMPLEX_PERSON,
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "messages", "type": "string[]"},
        ],
    },
    "primaryType": "Mail",
    "domain": {**_ETHER_MAIL, "salt": "0xca92da1a6e91d9358328d2f2155af143a7cb74b81a3a4e3e57e2191823dbb56c"},
    "message": {
        "from": {
            "name": "Amy",
            "wallet": "0xc0004B62C5A39a728e4Af5bee0c6B4a4E54b15ad",
            "married": True,
            "kids": 2,
            "karma": 4,
            "secret": "0x62c5a39a728e4af5bee0c6b462c5a39a728e4af5bee0c6b462c5a39a728e4af5bee0c6b462c5a39a728e4af5bee0c6b4",
            "small_secret": "0x5ccf0e54367104795a47bc0481645d9e",
            "pets": ["parrot"],
            "two_best_friends": ["Carl", "Denis"],
        },
        "to": {
            "name": "Bob",
            "wallet": "0x54B0Fa66A065748C40dCA2C7Fe125A2028CF9982",
            "married": False,
            "kids": 0,
            "karma": -4,
            "secret": "0x7fe125a2028cf97fe125a2028cf97fe125a2028cf97fe125a2028cf97fe125a2028cf97fe125a2028cf97fe125a2028cf9",
            "small_secret": "0xa5e5c47b64775abc476d2962403258de",
            "pets": ["dog", "cat"],
            "two_best_friends": ["Emil", "Franz"],
        },
        "messages": ["Hello, Bob!", "How are you?", "Hope you're fine"],
    },
}
TYPED_DATA_VECTORS: dict[str, tuple[bool, dict[str, Any], str, str | None, str]] = {
    "bare_minimum": (
        True,
        {"types": {"EIP712Domain": []}, "primaryType": "EIP712Domain", "message": {}, "domain": {}},
        "6192106f129ce05c9075d319c1fa6ea9b3ae37cbd0c1ef92e2be7137bb07baa1",
        None,
        "18aaea9abed7cd88d3763a9a420e2e7b71a9f991685fbc62d74da86326cffa680644862d459d1973e422777a3933bc74190b1cae9a5418ddaea645a7d7630dd91c",
    ),
    "full_domain_empty_message": (
        True,
        {
            "types": {"EIP712Domain": _DOMAIN_5},
            "primaryType": "EIP712Domain",
            "message": {},
            "domain": {
                "name": "Trezor",
                "version": "Test v0.0.0",
                "chainId": 1,
                "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
                "salt": "0x0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            },
        },
        "f85aaf157e9a36dc6e12643fff450fdf8d98fd0d0e41c5b42bb1f7aae6c83388",
        None,
        "98a3e66f738002da98c70b976ef131c11ed8b94aad872140574ed2a2d4a2bac53a9350e284994274f0a7ce1191cf79bf13f2f0d0a862dcf0dd86ad8141eb90dc1c",
    ),
    "basic_data": (
        True,
        _MAIL_BASIC,
        "97d6f53774b810fbda27e091c03c6a6d6815dd1270c2e62e82c6917c1eff774b",
        "ea6529f0ee9eb0b207b5a8b0ebfa673d398d6a78262818da1d270bd138f81f03",
        "2c2d8c7c1facf5bdcd997b5435bb42f3f4170a111ce079c94b5d1e34414f76560c4600d2167568e052ab846555bd590de93bb230987766c636613262eaeb8bdc1c",
    ),
    "complex_data": (
        True,
        _COMPLEX,
        "c4f4e0cd1376e27837fe933e3f77b7bd6213211b377f0e19815a0dbd194731cc",
        "dbafe746b1c47e4870f6f77205660d3c49a94db9a80939809bfca7bf43919df5",
        "f0a187388b33f17885c915173f38bd613d2ce4346acadfc390b2bae4c6def03667ceac155b5398bd8be326386e841e8820c5254f389a09d6d95ac72e2f6e19e61c",
    ),
    "struct_list_v4": (
        True,
        _MAIL_LIST,
        "97d6f53774b810fbda27e091c03c6a6d6815dd1270c2e62e82c6917c1eff774b",
        "c16c4b0b9a45a8e9c34c4074d8deb589686f7de3b83e80596ec79f815a17276e",
        "61d4a929f8513b6327c5eae227d65c394c3857904de483a2191095e2ec35a9ea2ecaf1a461332a6f4847679018848612b35c94150d9be8870ffad01fcbe72cf71c",
    ),
    "struct_list_non_v4": (
        False,
        _MAIL_LIST,
        "97d6f53774b810fbda27e091c03c6a6d6815dd1270c2e62e82c6917c1eff774b",
        "6ba2528513daa98abdbec7363a77751fc79ca38fe6d37bdbb983e310e5c1444e",
        "ba6658fd95d8f6048150c8ac64a596d974184522d1069237a57d0e170835fff661ff6f10c5049906a8a508c18d58145dcff91508e70e7e3c186193e3e3bb7dd61b",
    ),
    "array_of_structs": (
        True,
        {
            "types": {
                "EIP712Domain": [],
                "Message": [{"name": "element", "type": "Element[]"}],
                "Element": [{"name": "foo", "type": "int8"}],
            },
            "primaryType": "Message",
            "message": {"element": [{"foo": 1}, {"foo": 2}]},
            "domain": {},
        },
        "6192106f129ce05c9075d319c1fa6ea9b3ae37cbd0c1ef92e2be7137bb07baa1",
        "7be2cca6dd2e37cf3e8ab76ab19df174e369ad48e3fd0088c7f99137cbf6a2d8",
        "5c7fe30cc1889a59177864c58c2e5f46e4c5fd4ad7b565a6a6c0416a2d1370d233da9c2c40fc95b694af21b8cb1e027d9d664118fa021f71e2fd0d8eada7fd5d1c",
    ),
}

# BIP-84's published test vector (bips/bip-0084.mediawiki), for a seed other than the default
BIP84_MNEMONIC = (
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
)
BIP84_ZPUB = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
BIP84_ADDRESS = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"


# ---- lifecycle --------------------------------------------------------------------------------
def test_stop_frees_ports_and_start_again_works(sim: DeviceSimulator) -> None:
    port = sim.port
    sim.stop()
    assert not sim.running
    assert _port_free(port) and _port_free(port + 1)
    sim.start()
    assert sim.running and sim.port == port and not _port_free(port)
    assert UdpTransport(f"{HOST}:{port}").find_by_path(sim.path)


def test_free_port_pair_ping_and_restart() -> None:
    with DeviceSimulator(port=0) as other:
        assert other.port != EMULATOR_PORT and other.debug_port == other.port + 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(2)
            probe.sendto(b"PINGPING", (HOST, other.port))
            assert probe.recv(64) == b"PONGPONG"
        port = other.port
        other.stop()
        assert _port_free(port) and _port_free(port + 1)
        other.start()
        assert other.port == port and UdpTransport(f"{HOST}:{port}").find_by_path(other.path)
    assert not other.running


def test_bad_mnemonic_and_bad_mode_are_refused() -> None:
    with pytest.raises(ValueError):
        DeviceSimulator("all all all all all all all all all all all alll", port=0)
    with pytest.raises(ValueError):
        DeviceSimulator(port=0, confirm="yes")  # type: ignore[arg-type]


def test_custom_mnemonic_bip84_vector() -> None:
    with DeviceSimulator(BIP84_MNEMONIC, port=0) as other:
        client = get_default_client("x402-agent-tests", UdpTransport(other.path[len("udp:") :]))
        session = get_default_session(client)
        node = btc.get_public_node(
            session, parse_path("m/84h/0h/0h"), coin_name="Bitcoin", script_type=S.SPENDWITNESS
        )
        assert node.xpub == BIP84_ZPUB
        address = btc.get_address(
            session, "Bitcoin", parse_path("m/84h/0h/0h/0/0"), script_type=S.SPENDWITNESS
        )
        assert address == BIP84_ADDRESS
        assert other.fingerprint != TEST_SEED_FINGERPRINT


def test_run_simulator_foreground_prints_and_stops() -> None:
    out, stop = io.StringIO(), threading.Event()
    runner = Background(lambda: run_simulator(port=0, out=out, stop_event=stop))
    deadline = time.monotonic() + 5
    while "Ctrl-C" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    banner = out.getvalue()
    assert "NOT SECURE" in banner and "fingerprint 5c9e228d" in banner and "all all" not in banner
    stop.set()
    assert runner.join().result == 0


# ---- HWI ------------------------------------------------------------------------------------------
def test_hwi_enumerate_lists_the_simulator(at_emulator_port: DeviceSimulator) -> None:
    found = [d for d in hwi.enumerate(allow_emulators=True) if d["path"] == EMULATOR_PATH]
    assert len(found) == 1
    entry = found[0]
    assert entry["type"] == "trezor"
    assert entry["fingerprint"] == TEST_SEED_FINGERPRINT == at_emulator_port.fingerprint
    assert entry["model"] == "trezor_t_simulator"
    assert "SIMULATOR" in entry["label"] and "insecure" in entry["label"]
    assert "error" not in entry


def test_hwi_cli_with_emulators(at_emulator_port: DeviceSimulator) -> None:
    hwi_cli = str(Path(sys.executable).parent / "hwi")
    listed = json.loads(
        subprocess.run(
            [hwi_cli, "--emulators", "enumerate"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    assert any(d["path"] == EMULATOR_PATH and d["fingerprint"] == TEST_SEED_FINGERPRINT for d in listed)
    signed = json.loads(
        subprocess.run(  # HWI's CLI finds a path only among what it scans
            [hwi_cli, "-t", "trezor", "-d", EMULATOR_PATH, "signmessage", EXAMPLE, "m/44h/0h/0h/0/0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert signed == EXAMPLE_SIGNATURE


@pytest.mark.parametrize(("path", "xpub"), XPUB_VECTORS)
def test_hwi_getxpub(hwi_client: Any, path: str, xpub: str) -> None:
    assert hwi.getxpub(hwi_client, path) == {"xpub": xpub}


def test_hwi_getxpub_testnet(sim: DeviceSimulator) -> None:
    client = hwi_open(sim, Chain.TEST)
    try:
        assert hwi.getxpub(client, TESTNET_XPUB[0]) == {"xpub": TESTNET_XPUB[1]}
    finally:
        client.close()


@pytest.mark.parametrize(("chain", "path", "message", "signature"), HWI_SIGN_VECTORS)
def test_hwi_signmessage(sim: DeviceSimulator, chain: Chain, path: str, message: str, signature: str) -> None:
    client = hwi_open(sim, chain)
    try:
        assert hwi.signmessage(client, message, path) == {"signature": b64(signature)}
    finally:
        client.close()
    shown = [s for s in SCREENS if s.kind == "sign_message"]
    assert shown and shown[-1].field("Path") == path.replace("h", "'")


def test_hwi_signmessage_round_trip_time(hwi_client: Any) -> None:
    hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0")  # warm-up
    durations = []
    for _ in range(20):
        started = time.perf_counter()
        hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0")
        durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    print(
        f"\nHWI signmessage round trip (auto-approval): median {median * 1000:.1f} ms, "
        f"max {max(durations) * 1000:.1f} ms"
    )
    assert median < 0.5


@pytest.mark.parametrize(
    ("addr_type", "path", "address"),
    [
        (AddressType.LEGACY, "m/44h/0h/0h/0/0", "1JAd7XCBzGudGpJQSDSfpmJhiygtLQWaGL"),
        (AddressType.SH_WIT, "m/49h/0h/0h/0/0", "3L6TyTisPBmrDAj6RoKmDzNnj4eQi54gD2"),
        (AddressType.WIT, "m/84h/0h/0h/0/0", "bc1qannfxke2tfd4l7vhepehpvt05y83v3qsf6nfkk"),
    ],
)  # addresses from trezor-firmware tests/device_tests/bitcoin/test_signmessage.py
def test_hwi_displayaddress(hwi_client: Any, addr_type: AddressType, path: str, address: str) -> None:
    assert hwi.displayaddress(hwi_client, path=path, addr_type=addr_type) == {"address": address}
    assert SCREENS[-1].kind == "show_address" and SCREENS[-1].field("Address") == address


def test_hwi_reject_is_a_cancellation(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm = "reject"
    with pytest.raises(ActionCanceledError) as caught:
        hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0")
    assert caught.value.code == ACTION_CANCELED
    sim.confirm = "auto"
    assert hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0") == EXAMPLE_SIGNATURE


def test_hwi_wait_mode_debuglink_yes_approves(sim: DeviceSimulator, hwi_client: Any) -> None:
    # HWI's emulator client presses YES on the debug link by itself: like the real emulator.
    sim.confirm = "wait"
    assert hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0") == EXAMPLE_SIGNATURE


def test_hwi_wait_mode_blocks_until_approved(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm, sim.honor_debuglink = "wait", False  # only the Python-level decision counts
    call = Background(lambda: hwi.signmessage(hwi_client, "approve policy #1", "m/44h/1h/402h/0/0"))
    screen = sim.wait_for_screen(timeout=10)
    assert screen is not None and screen.kind == "sign_message"
    assert screen.field("Message") == "approve policy #1" and screen.field("Path") == "m/44'/1'/402'/0/0"
    time.sleep(0.3)
    assert call.running, "signing must wait for the decision"
    assert sim.approve()
    call.join()
    assert call.error is None and set(call.result) == {"signature"}
    assert sim.pending_screen is None and not sim.approve()


def test_hwi_wait_mode_reject_from_another_thread(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm, sim.honor_debuglink = "wait", False
    call = Background(lambda: hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0"))
    assert sim.wait_for_screen(timeout=10) is not None
    threading.Thread(target=sim.reject).start()
    assert isinstance(call.join().error, ActionCanceledError)


def test_hwi_unplug_mid_signing(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm = "unplug"
    started = time.monotonic()
    call = Background(lambda: hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0")).join(timeout=10)
    assert call.error is not None and time.monotonic() - started < 5
    assert not sim.running and _port_free(sim.port)
    sim.confirm = "auto"
    sim.replug()
    client = hwi_open(sim)
    try:
        assert hwi.signmessage(client, EXAMPLE, "m/44h/0h/0h/0/0") == EXAMPLE_SIGNATURE
    finally:
        client.close()


def test_hwi_unplug_while_waiting_for_the_user(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm, sim.honor_debuglink = "wait", False
    call = Background(lambda: hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0"))
    assert sim.wait_for_screen(timeout=10) is not None
    sim.unplug()
    assert call.join(timeout=10).error is not None
    assert not sim.running


def test_other_hosts_are_served_while_a_confirmation_waits(sim: DeviceSimulator, hwi_client: Any) -> None:
    sim.confirm, sim.honor_debuglink = "wait", False
    call = Background(lambda: hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0"))
    assert sim.wait_for_screen(timeout=10) is not None
    # A new HWI client (what its scan does: features, fingerprint) and a new trezorlib client
    # (probe: Cancel, Initialize...), each from another socket
    reader = hwi_open(sim)
    try:
        assert reader.get_master_fingerprint().hex() == TEST_SEED_FINGERPRINT
    finally:
        reader.close()
    other = _session_at(sim)
    assert ethereum.get_address(other, parse_path(ETH_PATH)) == ETH_ADDRESS
    assert call.running and sim.pending_screen is not None
    assert sim.approve()
    assert call.join().result == EXAMPLE_SIGNATURE


def test_a_signing_request_from_another_host_interrupts_the_waiting_one(
    sim: DeviceSimulator, session: Session, hwi_client: Any
) -> None:
    sim.confirm = "wait"  # the debug link decides: HWI presses YES, trezorlib does not
    first = Background(lambda: ethereum.sign_message(session, parse_path(ETH_PATH), EXAMPLE))
    assert sim.wait_for_screen(timeout=10) is not None
    assert hwi.signmessage(hwi_client, EXAMPLE, "m/44h/0h/0h/0/0") == EXAMPLE_SIGNATURE
    assert isinstance(first.join().error, exceptions.Cancelled)  # told, not left waiting


# ---- trezorlib ---------------------------------------------------------------------------------------
def test_trezorlib_features(session: Session) -> None:
    features = session.client.refresh_features()
    assert (features.vendor, features.model, features.internal_model) == ("trezor.io", "T", "T2T1")
    assert features.initialized and features.unlocked and features.session_id
    assert features.label is not None and "insecure" in features.label
    assert {messages.Capability.Bitcoin, messages.Capability.Ethereum} <= set(features.capabilities)
    assert not session.client.is_outdated()
    assert session.get_root_fingerprint().hex() == TEST_SEED_FINGERPRINT


@pytest.mark.parametrize(("script_type", "xpub"), SCRIPT_TYPE_XPUBS)
def test_trezorlib_xpub_version_per_script_type(session: Session, script_type: Any, xpub: str) -> None:
    path = parse_path("m/44h/0h/0")
    node = btc.get_public_node(session, path, coin_name="Bitcoin", script_type=script_type)
    assert node.xpub == xpub
    plain = btc.get_public_node(
        session, path, coin_name="Bitcoin", script_type=script_type, ignore_xpub_magic=True
    )
    assert plain.xpub == SCRIPT_TYPE_XPUBS[0][1]


@pytest.mark.parametrize(
    ("coin", "path", "script_type", "no_script_type", "address", "message", "signature"), BTC_SIGN_VECTORS
)
def test_trezorlib_bitcoin_signmessage_header_per_script_type(
    session: Session,
    coin: str,
    path: str,
    script_type: Any,
    no_script_type: bool,
    address: str,
    message: str,
    signature: str,
) -> None:
    signed = btc.sign_message(
        session, coin, parse_path(path), message, script_type=script_type, no_script_type=no_script_type
    )
    assert signed.address == address
    assert signed.signature.hex() == signature


@pytest.mark.parametrize(("path", "address"), ETH_ADDRESS_VECTORS)
def test_trezorlib_ethereum_get_address(session: Session, path: str, address: str) -> None:
    assert ethereum.get_address(session, parse_path(path)) == address


def test_trezorlib_ethereum_show_address(session: Session) -> None:
    assert ethereum.get_address(session, parse_path(ETH_PATH), show_display=True) == ETH_ADDRESS
    assert SCREENS[-1].kind == "eth_show_address" and SCREENS[-1].field("Address") == ETH_ADDRESS


@pytest.mark.parametrize(("message", "signature"), ETH_MESSAGE_VECTORS)
def test_trezorlib_ethereum_sign_message(session: Session, message: str, signature: str) -> None:
    signed = ethereum.sign_message(session, parse_path(ETH_PATH), message)
    assert signed.address == ETH_ADDRESS
    assert signed.signature.hex() == signature
    assert SCREENS[-1].kind == "eth_sign_message" and SCREENS[-1].field("Message") == message


@pytest.mark.parametrize("name", sorted(TYPED_DATA_VECTORS))
def test_trezorlib_sign_typed_data_streaming(session: Session, name: str) -> None:
    v4, data, domain_hash, message_hash, signature = TYPED_DATA_VECTORS[name]
    signed = ethereum.sign_typed_data(
        session, parse_path(ETH_PATH), json.loads(json.dumps(data)), metamask_v4_compat=v4
    )
    assert signed.address == ETH_ADDRESS
    assert signed.signature.hex() == signature
    screen = SCREENS[-1]
    assert screen.kind == "eth_sign_typed_data"
    assert screen.field("Domain hash") == "0x" + domain_hash
    assert screen.field("Message hash") == ("0x" + message_hash if message_hash else "(none)")


def test_trezorlib_sign_typed_data_shows_the_fields(session: Session) -> None:
    ethereum.sign_typed_data(session, parse_path(ETH_PATH), json.loads(json.dumps(_COMPLEX)))
    screen = SCREENS[-1]
    assert screen.field("domain.name") == "Ether Mail"
    assert screen.field("domain.verifyingContract") == "0x1e0Ae8205e9726E6F296ab8869160A6423E2337E"
    assert screen.field("message.from.karma") == "4" and screen.field("message.to.karma") == "-4"
    assert screen.field("message.to.married") == "false"
    assert screen.field("message.from.pets[0]") == "parrot"
    assert screen.field("message.messages[2]") == "Hope you're fine"


def test_trezorlib_sign_typed_data_show_message_hash(session: Session) -> None:
    # "basic_data_with_show_message_hash" in sign_typed_data.json: same signature as basic_data
    _, data, _, message_hash, signature = TYPED_DATA_VECTORS["basic_data"]
    assert message_hash is not None
    signed = ethereum.sign_typed_data(
        session,
        parse_path(ETH_PATH),
        json.loads(json.dumps(data)),
        show_message_hash=bytes.fromhex(message_hash),
    )
    assert signed.signature.hex() == signature
    with pytest.raises(exceptions.TrezorFailure, match="hash mismatch"):
        ethereum.sign_typed_data(
            session, parse_path(ETH_PATH), json.loads(json.dumps(data)), show_message_hash=b"\x00" * 32
        )


@pytest.mark.parametrize("name", sorted(TYPED_DATA_VECTORS))
def test_trezorlib_sign_typed_data_hash(session: Session, name: str) -> None:
    _, _, domain_hash, message_hash, signature = TYPED_DATA_VECTORS[name]
    signed = ethereum.sign_typed_data_hash(
        session,
        parse_path(ETH_PATH),
        bytes.fromhex(domain_hash),
        bytes.fromhex(message_hash) if message_hash else None,
    )
    assert signed.address == ETH_ADDRESS
    assert signed.signature.hex() == signature


def test_trezorlib_reject_is_cancelled(sim: DeviceSimulator, session: Session) -> None:
    sim.confirm = "reject"
    with pytest.raises(exceptions.Cancelled):
        ethereum.sign_message(session, parse_path(ETH_PATH), EXAMPLE)
    with pytest.raises(exceptions.Cancelled):
        ethereum.sign_typed_data(session, parse_path(ETH_PATH), json.loads(json.dumps(_MAIL_BASIC)))


@pytest.mark.parametrize("approve", [True, False])
def test_trezorlib_debuglink_decides_in_wait_mode(
    sim: DeviceSimulator, session: Session, approve: bool
) -> None:
    sim.confirm = "wait"
    call = Background(lambda: ethereum.sign_message(session, parse_path(ETH_PATH), EXAMPLE))
    assert sim.wait_for_screen(timeout=10) is not None
    debug = DebugLink(UdpTransport(f"{HOST}:{sim.debug_port}"))
    try:
        assert debug.read_layout().title() == "Sign Ethereum message"
        (debug.press_yes if approve else debug.press_no)()
    finally:
        debug.close()
    call.join()
    if approve:
        assert call.error is None and call.result.signature.hex() == ETH_MESSAGE_VECTORS[0][1]
    else:
        assert isinstance(call.error, exceptions.Cancelled)


def test_legacy_debuglink_no_rejects(sim: DeviceSimulator, session: Session) -> None:
    # HWI's vendored (older) DebugLink sends the legacy ``yes_no`` field
    from hwilib.devices.trezorlib.debuglink import DebugLink as LegacyDebugLink
    from hwilib.devices.trezorlib.transport.udp import UdpTransport as LegacyUdpTransport

    sim.confirm = "wait"
    call = Background(lambda: ethereum.sign_message(session, parse_path(ETH_PATH), EXAMPLE))
    assert sim.wait_for_screen(timeout=10) is not None
    debug = LegacyDebugLink(LegacyUdpTransport(f"{HOST}:{sim.debug_port}"))
    debug.open()
    try:
        debug.press_no()
    finally:
        debug.close()
    assert isinstance(call.join().error, exceptions.Cancelled)


def test_label_always_says_insecure() -> None:
    with DeviceSimulator(port=0, label="Demo device") as other:
        features = get_default_client("x402-agent-tests", UdpTransport(other.path[len("udp:") :])).features
        assert features.label == "Demo device (SIMULATOR, insecure)"


def test_trezorlib_wait_mode_blocks_until_approved(sim: DeviceSimulator, session: Session) -> None:
    sim.confirm = "wait"
    _, data, _, _, signature = TYPED_DATA_VECTORS["basic_data"]
    request = json.loads(json.dumps(data))
    call = Background(lambda: ethereum.sign_typed_data(session, parse_path(ETH_PATH), request))
    screen = sim.wait_for_screen(timeout=10)
    assert screen is not None and screen.field("message.contents") == "Hello, Bob!"
    time.sleep(0.3)
    assert call.running
    threading.Thread(target=sim.approve).start()
    assert call.join().result.signature.hex() == signature


def test_trezorlib_unplug_mid_signing(sim: DeviceSimulator, session: Session) -> None:
    sim.confirm = "unplug"
    data = json.loads(json.dumps(_MAIL_BASIC))
    call = Background(lambda: ethereum.sign_typed_data(session, parse_path(ETH_PATH), data)).join(timeout=10)
    assert isinstance(call.error, TransportException)
    assert not sim.running


def test_unsupported_request_gets_a_failure(session: Session) -> None:
    with pytest.raises(exceptions.TrezorFailure, match="not supported"):
        session.call(messages.WipeDevice())
    assert ethereum.get_address(session, parse_path(ETH_PATH)) == ETH_ADDRESS  # still serving


def test_cancel_while_waiting_ends_the_workflow(sim: DeviceSimulator) -> None:
    sim.confirm = "wait"
    results: list[str] = []
    sim.on_result = lambda screen, outcome: results.append(outcome)
    try:
        transport = UdpTransport(f"{HOST}:{sim.port}")
        client = get_default_client("x402-agent-tests", transport)
        session = get_default_session(client)
        with session:
            session.write(messages.SignMessage(address_n=parse_path("m/44h/0h/0h/0/0"), message=b"x"))
            assert isinstance(session.read(), messages.ButtonRequest)
            session.write(messages.ButtonAck())
            assert sim.wait_for_screen(timeout=5) is not None
            session.write(messages.Cancel())
            reply = session.read(timeout=5)
        assert isinstance(reply, messages.Failure) and reply.code == messages.FailureType.ActionCancelled
        assert results == ["cancelled"] and sim.pending_screen is None
    finally:
        sim.on_result = None
