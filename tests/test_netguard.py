"""The private-network guard, against real sockets on loopback.

A listener on one port at 127.0.0.1, 127.0.0.2 and [::1] counts every connection it accepts
(and answers 200, so a connection the guard let through shows as a fetched body, never a hang).
Every spelling of a private address is refused before a connection is opened, through the CLI
(subprocesses), a real MCP client session against `x402-agent mcp`, and the LangChain tools
(sync and async, GET and POST); in-process, an audit hook on ``socket.connect`` shows that no
connection was even attempted. Redirects into the private network are refused with the guard's
reason; a name resolving to loopback is refused; a resolver that rebinds between lookups cannot
move a request off the address that was checked; TLS to a pinned address still verifies the
certificate against the name.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from mcp import ClientSession, StdioServerParameters, stdio_client

from x402_agent.addresses import address_rule, literal_address, parse_allow_entry
from x402_agent.client import AsyncX402Client, X402Client
from x402_agent.devnet.info import WorldInfo
from x402_agent.devnet.provision import provision_devnet_home
from x402_agent.errors import PrivateAddressRefused, RedirectRefused, X402AgentError
from x402_agent.flow import FetchRequest, Payer
from x402_agent.langchain_tools import X402Toolkit
from x402_agent.ledger.sqlite import SQLiteLedger
from x402_agent.netguard import Resolver
from x402_agent.policy import AssetRule, Policy, PrivateNetwork, load_policy, parse_policy
from x402_agent.signer import LocalKeySigner
from x402_agent.spendgate import PolicyGate
from x402_agent.tightening import loosenings

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "x402_agent.cli"]
LOOPBACKS = ("127.0.0.1", "127.0.0.2", "::1")


# ---- a listener that counts connections --------------------------------------------------------
class _Counting(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Listener:
    """One TCP port on 127.0.0.1, 127.0.0.2 and ::1; ``accepted`` counts per address."""

    port: int
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOOPBACKS, 0))
    heads: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.accepted.values())


@contextmanager
def counting_listener() -> Iterator[Listener]:
    servers: list[_Counting] = []
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    listener = Listener(int(probe.getsockname()[1]))
    probe.close()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with listener.lock:
                listener.accepted[self.server.server_address[0]] += 1
            head = self.request.recv(65536)
            with listener.lock:
                listener.heads.append(head)
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                b"content-length: 7\r\nconnection: close\r\n\r\nreached"
            )

    class V6(_Counting):
        address_family = socket.AF_INET6

    for host in LOOPBACKS:
        server = (V6 if ":" in host else _Counting)((host, listener.port), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield listener
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    with counting_listener() as made:
        yield made


# ---- the spellings ----------------------------------------------------------------------------
def spellings(port: int) -> list[tuple[str, str]]:
    """(URL, the rule that refuses it). The first ones reach the counting listener if let
    through; the others are addresses no test can listen on."""
    p = port
    return [
        (f"http://localhost:{p}/x", "loopback"),
        (f"http://127.1:{p}/x", "loopback"),
        (f"http://2130706433:{p}/x", "loopback"),
        (f"http://0x7f000001:{p}/x", "loopback"),
        (f"http://0177.0.0.1:{p}/x", "loopback"),
        (f"http://0x7f.1:{p}/x", "loopback"),
        (f"http://0.0.0.0:{p}/x", "unspecified"),
        (f"http://[::1]:{p}/x", "loopback"),
        (f"http://127.0.0.2:{p}/x", "loopback"),
        (f"http://evil.example@127.0.0.1:{p}/x", "loopback"),
        (f"http://[::ffff:127.0.0.1]:{p}/x", "loopback"),
        (f"http://127.0.0.1.:{p}/x", "loopback"),
        (f"http://LOCALHOST:{p}/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        (f"http://10.1.2.3:{p}/x", "private"),
        (f"http://172.16.0.1:{p}/x", "private"),
        (f"http://192.168.1.1:{p}/x", "private"),
        (f"http://[fc00::1]:{p}/x", "unique_local"),
        (f"http://[fd12:3456::1]:{p}/x", "unique_local"),
        (f"http://[fe80::1]:{p}/x", "link_local"),
        (f"http://169.254.1.1:{p}/x", "link_local"),
        (f"http://224.0.0.1:{p}/x", "multicast"),
        (f"http://[2002:7f00:1::]:{p}/x", "loopback"),  # 6to4 carrying 127.0.0.1
        (f"http://[64:ff9b::7f00:1]:{p}/x", "loopback"),  # NAT64 carrying 127.0.0.1
        (f"http://100.64.0.1:{p}/x", "reserved"),  # shared address space (carrier NAT)
    ]


def parseable(url: str) -> bool:
    """httpx cannot express some spellings (octal 0177.0.0.1): the adapters, which check URLs
    before the agent opens, refuse those as ``invalid_url`` (no connection either)."""
    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return True


def assert_refused(url: str, rule: str, refusal: dict[str, Any]) -> None:
    if not parseable(url) and refusal["reason"] == "invalid_url":
        return
    assert refusal["reason"] == "private_address", (url, refusal)
    assert refusal["details"]["rule"] == rule, (url, refusal)
    assert "private_network.allow" in refusal["message"]


@pytest.fixture(scope="module")
def audit() -> Callable[[], list[Any]]:
    """Start recording ``socket.connect`` attempts made in this process; returns the reader."""
    events: list[Any] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            events.append(args[1])

    sys.addaudithook(hook)  # hooks cannot be removed: it only appends to this module's list

    def since() -> list[Any]:
        seen = list(events)
        events.clear()
        return seen

    return since


# ---- the classifier ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "address", "rule"),
    [
        ("127.1", "127.0.0.1", "loopback"),
        ("2130706433", "127.0.0.1", "loopback"),
        ("0x7f000001", "127.0.0.1", "loopback"),
        ("0X7F000001", "127.0.0.1", "loopback"),
        ("0177.0.0.1", "127.0.0.1", "loopback"),
        ("0x7f.0.0.1", "127.0.0.1", "loopback"),
        ("127.0.1", "127.0.0.1", "loopback"),
        ("127.0.0.1.", "127.0.0.1", "loopback"),
        ("[::1]", "::1", "loopback"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1", "loopback"),
        ("::ffff:7f00:1", "::ffff:7f00:1", "loopback"),
        ("0", "0.0.0.0", "unspecified"),
        ("0.0.0.0", "0.0.0.0", "unspecified"),
        ("0.1.2.3", "0.1.2.3", "unspecified"),
        ("::", "::", "unspecified"),
        ("169.254.169.254", "169.254.169.254", "metadata"),
        ("2852039166", "169.254.169.254", "metadata"),  # decimal metadata address
        ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe", "metadata"),
        ("fd00:ec2::254", "fd00:ec2::254", "metadata"),
        ("100.100.100.200", "100.100.100.200", "metadata"),
        ("169.254.0.1", "169.254.0.1", "link_local"),
        ("fe80::1", "fe80::1", "link_local"),
        ("10.0.0.1", "10.0.0.1", "private"),
        ("012.0.0.1", "10.0.0.1", "private"),  # octal 10
        ("172.31.255.255", "172.31.255.255", "private"),
        ("192.168.0.1", "192.168.0.1", "private"),
        ("0xc0a80001", "192.168.0.1", "private"),
        ("fc00::1", "fc00::1", "unique_local"),
        ("fdff::1", "fdff::1", "unique_local"),
        ("224.0.0.1", "224.0.0.1", "multicast"),
        ("ff02::1", "ff02::1", "multicast"),
        ("2002:7f00:1::", "2002:7f00:1::", "loopback"),
        ("2002:a00:1::", "2002:a00:1::", "private"),
        ("64:ff9b::7f00:1", "64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "metadata"),
        ("100.64.0.1", "100.64.0.1", "reserved"),
        ("240.0.0.1", "240.0.0.1", "private"),
        ("255.255.255.255", "255.255.255.255", "private"),
        ("192.0.2.1", "192.0.2.1", "private"),  # documentation
        ("::7f00:1", "::7f00:1", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_every_spelling_is_read_as_the_resolver_does_and_classified(
    host: str, address: str, rule: str
) -> None:
    found = literal_address(host)
    assert found == ipaddress.ip_address(address)
    assert address_rule(found) == rule
    # The C resolver reads the IPv4 shorthands the same way (no lookup: all numeric).
    if ":" not in host and not host.endswith("."):
        infos = socket.getaddrinfo(host, 80, socket.AF_INET, socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        assert {i[4][0] for i in infos} == {address}


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::",
        "64:ff9b::808:808",
        "134744072",
    ],
)
def test_public_addresses_pass(host: str) -> None:
    found = literal_address(host)
    assert found is not None and address_rule(found) is None


@pytest.mark.parametrize("host", ["example.com", "localhost", "1.2.3.4.example", "0x", "x7f", "deadbeef", ""])
def test_names_are_not_read_as_numbers(host: str) -> None:
    assert literal_address(host) is None


@pytest.mark.parametrize(
    ("entry", "normal"),
    [
        ("127.0.0.1:4021", "127.0.0.1:4021"),
        ("LocalHost:80", "localhost:80"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("[::1]:8080", "[::1]:8080"),
        ("[fd00::]", "[fd00::]"),
        ("fd00::/8", "fd00::/8"),
        ("*.corp.example", "*.corp.example"),
        ("192.168.1.7", "192.168.1.7"),
    ],
)
def test_allow_entries_parse(entry: str, normal: str) -> None:
    assert parse_allow_entry(entry).text == normal


@pytest.mark.parametrize(
    "entry",
    [
        "127.1",
        "2130706433",
        "0x7f000001",
        "10.0.0.1/8",
        "10.0.0.0/8:80",
        "host:0",
        "host:70000",
        "a..b",
        "http://x",
        "[::1",
        "a b",
        "",
        "::1:99999",
    ],
)
def test_allow_entries_in_odd_forms_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allow_entry(entry)


def test_policy_field_is_validated_and_left_out_of_old_digests() -> None:
    default = load_policy(ROOT / "policies" / "default.json")
    assert b"private_network" not in default.canonical_json()
    # The digest this document had before the field existed: approvals made then stay valid.
    assert default.digest == ("sha256:d7dfa0151890ad42f6353e00c8fa13c4b27d1161d5c850da9434bf753f9385d8")
    data = json.loads(default.canonical_json())
    data["private_network"] = {"allow": ["127.1"]}
    with pytest.raises(X402AgentError) as bad:
        parse_policy(json.dumps(data))
    assert bad.value.reason == "policy_invalid" and "usual form" in bad.value.message
    data["private_network"] = {"allow": ["127.0.0.1:4021"]}
    opted = Policy.model_validate(data)
    assert opted.digest != default.digest and opted.private_allow == ("127.0.0.1:4021",)
    # Opting an address in loosens the policy: only the device may approve it.
    assert loosenings(opted, default) == ["private_network.allow admits more than before"]
    assert loosenings(default, opted) == []


# ---- in-process payer and drivers (no chain needed: nothing here is paid) ---------------------
POLICY = Policy(
    version=1,
    assets=(
        AssetRule(
            network="eip155:84532",
            address="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            symbol="USDC",
            decimals=6,
            eip712_name="USDC",
            eip712_version="2",
            per_request_max=1000,
        ),
    ),
)


@pytest.fixture
def payer(tmp_path: Path) -> Iterator[Callable[..., Payer]]:
    """Makes payers whose policy opts in exactly ``allow``; their ledgers close at teardown."""
    ledgers: list[SQLiteLedger] = []

    def make(*allow: str) -> Payer:
        policy = POLICY.model_copy(update={"private_network": PrivateNetwork(allow=allow)})
        ledgers.append(SQLiteLedger(tmp_path / f"ledger-{len(ledgers)}.sqlite3"))
        return Payer(gate=PolicyGate(policy, ledgers[-1]), signer=LocalKeySigner(Account.create()))

    yield make
    for ledger in ledgers:
        ledger.close()


def fetch(
    payer: Payer,
    url: str,
    driver: str,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
    **request: Any,
) -> Any:
    req = FetchRequest(url=url, **request)
    if driver == "sync":
        with X402Client(payer, resolver=resolver, verify=verify) as client:
            return client.fetch(req)

    async def run() -> Any:
        async with AsyncX402Client(payer, resolver=resolver, verify=verify) as client:
            return await client.fetch(req)

    return asyncio.run(run())


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_drivers_refuse_every_spelling_before_connecting(
    payer: Callable[..., Payer], listener: Listener, audit: Callable[[], list[Any]], driver: str
) -> None:
    """Also the control: the listener's own address, opted in, is reached (and counted)."""
    guarded = payer()
    audit()
    for url, rule in spellings(listener.port):
        with pytest.raises(PrivateAddressRefused) as refused:
            fetch(guarded, url, driver, method="POST", body=b'{"jsonrpc":"2.0"}')
        assert refused.value.reason == "private_address"
        assert refused.value.details["rule"] == rule, url
        assert "private_network.allow" in refused.value.message
    assert audit() == [] and listener.total == 0

    opted = payer(f"127.0.0.1:{listener.port}")
    done = fetch(opted, f"http://127.0.0.1:{listener.port}/x", driver)
    assert done.status == 200 and done.content == b"reached"
    assert listener.accepted["127.0.0.1"] == 1
    with listener.lock:
        listener.accepted["127.0.0.1"] = 0
    # The opt-in is for that address and port: the other loopback addresses stay refused.
    with pytest.raises(PrivateAddressRefused):
        fetch(opted, f"http://127.0.0.2:{listener.port}/x", driver)
    assert listener.total == 0


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_no_environment_proxy_carries_a_request_and_url_credentials_go_to_the_pinned_address(
    payer: Callable[..., Payer], listener: Listener, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    """The drivers hand requests to their own transport: whatever the environment's proxy
    variables say, the connection goes to the address the guard checked (a proxy would resolve
    and connect on its own). Credentials written in the URL travel as Basic auth, there only."""
    with counting_listener() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.2:{proxy.port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        opted = payer(f"127.0.0.1:{listener.port}")
        done = fetch(opted, f"http://agent:s3cret@127.0.0.1:{listener.port}/x", driver)
        assert done.status == 200 and done.content == b"reached"
        assert proxy.total == 0
    assert listener.accepted == {"127.0.0.1": 1, "127.0.0.2": 0, "::1": 0}
    expected = b"authorization: basic " + base64.b64encode(b"agent:s3cret").lower()
    assert expected in listener.heads[-1].lower()
    with listener.lock:
        listener.accepted["127.0.0.1"] = 0


class Redirector:
    """A loopback server answering every request with a 302 to ``target``."""

    def __init__(self) -> None:
        self.target = ""
        self.hits = 0
        redirector = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                redirector.hits += 1
                self.request.sendall(
                    f"HTTP/1.1 302 Found\r\nlocation: {redirector.target}\r\n"
                    "content-length: 0\r\nconnection: close\r\n\r\n".encode()
                )

        self.server = _Counting(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    made = Redirector()
    yield made
    made.close()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_redirect_from_an_opted_in_host_into_the_private_network_is_refused(
    payer: Callable[..., Payer], listener: Listener, redirector: Redirector, driver: str
) -> None:
    opted = payer(f"127.0.0.1:{redirector.port}")  # the redirector only
    start = f"http://127.0.0.1:{redirector.port}/start"
    p = listener.port
    for target, rule in (
        (f"http://127.0.0.1:{p}/x", "loopback"),
        (f"http://2130706433:{p}/x", "loopback"),
        (f"http://[::1]:{p}/x", "loopback"),
        (f"http://[::ffff:127.0.0.2]:{p}/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        (f"http://192.168.1.1:{p}/x", "private"),
    ):
        redirector.target = target
        with pytest.raises(PrivateAddressRefused) as refused:
            fetch(opted, start, driver)
        assert refused.value.details["rule"] == rule, target
    # A name is resolved only by the driver: it is refused as another origin, before any lookup.
    redirector.target = f"http://localhost:{p}/x"
    with pytest.raises(RedirectRefused):
        fetch(opted, start, driver)
    assert redirector.hits == 7 and listener.total == 0


class Rebinding:
    """A resolver answering ``first`` once, then ``later``: DNS rebinding, as an attacker's
    name server would play it."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first]
        self.later = later
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [self.answers.pop() if self.answers else self.later]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_rebinding_name_reaches_only_the_checked_address(
    payer: Callable[..., Payer], listener: Listener, driver: str
) -> None:
    p = listener.port
    opted = payer(f"127.0.0.1:{p}")
    resolver = Rebinding("127.0.0.1", "127.0.0.2")
    done = fetch(opted, f"http://rebind.example:{p}/x", driver, resolver)
    assert done.content == b"reached"
    assert resolver.calls == ["rebind.example"]  # one lookup, then the checked address is used
    assert listener.accepted == {"127.0.0.1": 1, "127.0.0.2": 0, "::1": 0}
    assert f"host: rebind.example:{p}".encode() in listener.heads[-1].lower()
    # The next lookup answers a loopback address that is not opted in: refused, not connected.
    with pytest.raises(PrivateAddressRefused) as refused:
        fetch(opted, f"http://rebind.example:{p}/x", driver, resolver)
    assert refused.value.details["address"] == "127.0.0.2"
    assert listener.accepted == {"127.0.0.1": 1, "127.0.0.2": 0, "::1": 0}
    with listener.lock:
        listener.accepted["127.0.0.1"] = 0


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_names_resolving_to_private_addresses_are_refused(
    payer: Callable[..., Payer], listener: Listener, driver: str
) -> None:
    guarded = payer()
    p = listener.port
    # The system resolver: localhost (and this machine's name, when it answers loopback).
    names = ["localhost"] + [socket.gethostname()] * all(
        address_rule(ipaddress.ip_address(i[4][0])) == "loopback"
        for i in socket.getaddrinfo(socket.gethostname(), p)
    )
    for name in names:
        with pytest.raises(PrivateAddressRefused) as refused:
            fetch(guarded, f"http://{name}:{p}/x", driver)
        assert refused.value.details["rule"] == "loopback"
    # A name answering one public and one private address is refused as a whole.
    both = payer()
    with pytest.raises(PrivateAddressRefused) as refused:
        fetch(both, f"http://split.example:{p}/x", driver, lambda host, port: ["93.184.215.14", "10.0.0.7"])
    assert refused.value.details["address"] == "10.0.0.7"
    assert listener.total == 0


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_every_redirect_hop_is_looked_up_and_checked_again(
    payer: Callable[..., Payer], redirector: Redirector, driver: str
) -> None:
    opted = payer(f"127.0.0.1:{redirector.port}")
    resolver = Rebinding("127.0.0.1", "127.0.0.2")
    redirector.target = "/next"  # same origin: followed, and looked up again
    with pytest.raises(PrivateAddressRefused) as refused:
        fetch(opted, f"http://hop.example:{redirector.port}/start", driver, resolver)
    assert refused.value.details["address"] == "127.0.0.2"
    assert resolver.calls == ["hop.example", "hop.example"] and redirector.hits == 1


def _certificate(name: str, directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@dataclass
class TlsServer:
    """A keep-alive HTTPS server on 127.0.0.1 whose certificate names only ``shop.example``;
    ``names`` lists the server name of every handshake, ``context`` is a client context trusting it."""

    port: int
    context: ssl.SSLContext
    names: list[str | None]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    cert_file, key_file = _certificate("shop.example", tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []

    def remember(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext) -> None:
        names.append(name)

    server_context.sni_callback = remember  # type: ignore[assignment]

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                with server_context.wrap_socket(self.request, server_side=True) as tls:
                    head = b""
                    while chunk := tls.recv(65536):  # GETs only: a request ends with its head
                        head += chunk
                        while b"\r\n\r\n" in head:
                            head = head.split(b"\r\n\r\n", 1)[1]
                            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate, or hung up

    server = _Counting(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield TlsServer(
            int(server.server_address[1]), ssl.create_default_context(cafile=str(cert_file)), names
        )
    finally:
        server.shutdown()
        server.server_close()


def to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_tls_to_the_pinned_address_still_verifies_the_name(
    tls_server: TlsServer, payer: Callable[..., Payer], driver: str
) -> None:
    """Connected to 127.0.0.1, the client sends the name as SNI and checks the certificate
    against it: the right name is fetched, a certificate for another name is refused."""
    port = tls_server.port
    opted = payer(f"127.0.0.1:{port}")
    for name, expected in (("shop.example", 200), ("other.example", None)):
        if expected is None:
            with pytest.raises(X402AgentError) as failed:
                fetch(opted, f"https://{name}:{port}/x", driver, to_loopback, tls_server.context)
            assert failed.value.reason == "upstream_unreachable"
        else:
            got = fetch(opted, f"https://{name}:{port}/x", driver, to_loopback, tls_server.context)
            assert got.content == b"ok"
    assert tls_server.names == ["shop.example", "other.example"]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_pooled_connection_is_never_reused_for_another_name(
    tls_server: TlsServer, payer: Callable[..., Payer], driver: str
) -> None:
    """Two names on one address and port: the keep-alive connection verified for the first is
    reused for it, never for the second, whose own handshake then fails on the certificate
    (an attacker holding a certificate for their own name must not serve another name)."""
    port = tls_server.port
    opted = payer(f"127.0.0.1:{port}")
    urls = [f"https://{name}:{port}/x" for name in ("shop.example", "shop.example", "other.example")]

    def outcomes(results: list[Any]) -> list[Any]:
        return [r.content if not isinstance(r, X402AgentError) else r.reason for r in results]

    if driver == "sync":
        results: list[Any] = []
        with X402Client(opted, resolver=to_loopback, verify=tls_server.context) as client:
            for url in urls:
                try:
                    results.append(client.fetch(FetchRequest(url=url)))
                except X402AgentError as exc:
                    results.append(exc)
    else:

        async def run() -> list[Any]:
            done: list[Any] = []
            async with AsyncX402Client(opted, resolver=to_loopback, verify=tls_server.context) as client:
                for url in urls:
                    try:
                        done.append(await client.fetch(FetchRequest(url=url)))
                    except X402AgentError as exc:
                        done.append(exc)
            return done

        results = asyncio.run(run())
    assert outcomes(results) == [b"ok", b"ok", "upstream_unreachable"]
    # One handshake for the first name (its connection reused), one refused for the second.
    assert tls_server.names == ["shop.example", "other.example"]


# ---- through the CLI, MCP and LangChain, against a devnet home ------------------------------------
@pytest.fixture(scope="module")
def home(world: WorldInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The devnet's home as `x402-agent devnet` makes it: only the world's APIs are opted in."""
    return provision_devnet_home(world, tmp_path_factory.mktemp("guard") / "home").root


def test_the_devnet_home_opts_in_its_own_apis_only(world: WorldInfo, home: Path) -> None:
    policy = load_policy(home / "policy.json")
    assert world.facilitator_url is not None and world.batch is not None
    assert set(policy.private_allow) == {
        world.api_url.removeprefix("http://"),
        world.v1_api_url.removeprefix("http://"),
        world.facilitator_url.removeprefix("http://"),  # its Bazaar listing (discover)
        world.batch.api_url.removeprefix("http://"),  # the batch-settlement routes
    }


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "X402_AGENT_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_refuses_every_spelling_before_connecting(
    world: WorldInfo, home: Path, listener: Listener
) -> None:
    cases = [(url, rule, ()) for url, rule in spellings(listener.port)]
    cases.append(
        (
            world.rpc_url,
            "loopback",
            (
                "-X",
                "POST",
                "-d",
                '{"jsonrpc":"2.0","id":1,"method":"eth_accounts","params":[]}',
                "-H",
                "content-type: application/json",
            ),
        )
    )
    cases.append((f"http://127.1:{listener.port}/x", "loopback", ("-X", "POST", "-d", "x")))
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda case: _cli(home, "fetch", case[0], "--json", *case[2]), cases))
    for (url, rule, _), done in zip(cases, runs, strict=True):
        assert done.returncode in (1, 2), (url, done.stdout, done.stderr)
        assert_refused(url, rule, json.loads(done.stdout))
    assert listener.total == 0
    # The world's own API, opted in, is still fetched.
    free = _cli(home, "fetch", world.route("GET", "/free").url)
    assert free.returncode == 0, free.stderr


def test_mcp_refuses_every_spelling_before_connecting(
    world: WorldInfo, home: Path, listener: Listener, tmp_path: Path
) -> None:
    params = StdioServerParameters(
        command=CLI[0], args=[*CLI[1:], "mcp"], env={**os.environ, "X402_AGENT_HOME": str(home)}
    )

    async def main() -> None:
        with (tmp_path / "err.log").open("w") as err:
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                calls = [({"url": url}, rule) for url, rule in spellings(listener.port)]
                # (a JSON-looking body would be parsed into an object by the MCP server's
                # argument handling and refused as the wrong type, before our code runs)
                calls.append(({"url": world.rpc_url, "method": "POST", "body": "eth_accounts"}, "loopback"))
                for tool in ("fetch", "quote"):
                    for arguments, rule in calls:
                        if tool == "quote" and "body" in arguments:
                            continue
                        result = await session.call_tool(tool, arguments)
                        assert result.is_error, (tool, arguments, result)
                        error = result.structured_content or {}
                        assert "reason" in error, (tool, arguments, result)
                        assert_refused(arguments["url"], rule, error)
                        if error["reason"] == "private_address":
                            assert "opt the address in" in error["next_step"]

    asyncio.run(main())
    assert listener.total == 0


def test_langchain_refuses_every_spelling_before_connecting(
    world: WorldInfo, home: Path, listener: Listener, audit: Callable[[], list[Any]]
) -> None:
    toolkit = X402Toolkit.open(home)
    try:
        fetch_tool = {t.name: t for t in toolkit.get_tools()}["x402_fetch"]
        calls = [{"url": url} for url, _ in spellings(listener.port)]
        rules = [rule for _, rule in spellings(listener.port)]
        # What reached the local chain's RPC before: a JSON-RPC POST through the fetch tool.
        calls.append(
            {
                "url": world.rpc_url,
                "method": "POST",
                "headers": {"content-type": "application/json"},
                "body": json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [{}]}
                ),
            }
        )
        calls.append({"url": f"http://0x7f000001:{listener.port}/x", "method": "POST", "body": "x"})
        rules += ["loopback", "loopback"]
        audit()

        async def asynchronously() -> list[Any]:
            return [
                await fetch_tool.ainvoke({"name": "x402_fetch", "args": args, "id": "a", "type": "tool_call"})
                for args in calls
            ]

        messages = [
            fetch_tool.invoke({"name": "x402_fetch", "args": args, "id": "s", "type": "tool_call"})
            for args in calls
        ]
        messages += asyncio.run(asynchronously())
        assert audit() == []  # not one connection attempt, to anything
        for args, rule, message in zip(calls * 2, rules * 2, messages, strict=True):
            assert message.status == "error"
            assert_refused(args["url"], rule, json.loads(message.content))
        assert listener.total == 0
    finally:
        toolkit.close()
