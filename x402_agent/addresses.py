"""Which addresses are private, in every spelling, and which the policy opts in. Pure: no I/O.

``address_rule`` names the rule refusing an address (loopback, private, link-local, metadata,
...), looking through IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64).
``literal_address`` reads a host the way the C resolver does (``127.1``, ``2130706433``,
``0x7f000001``, ``0177.0.0.1`` are all 127.0.0.1). The policy's ``private_network.allow``
entries are parsed by ``parse_allow_entry`` when the policy loads.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any
from urllib.parse import urlsplit

from .errors import PrivateAddressRefused

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Cloud instance metadata services: AWS/GCP/Azure/OpenStack, AWS ECS task metadata, Alibaba,
# Oracle, AWS over IPv6. Named apart from link-local so the refusal says what it protects.
METADATA_ADDRESSES = frozenset(
    ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)
_THIS_NETWORK = IPv4Network("0.0.0.0/8")  # "this host on this network": reaches the machine
_UNIQUE_LOCAL = IPv6Network("fc00::/7")
_NAT64 = IPv6Network("64:ff9b::/96")  # the well-known prefix maps the last 32 bits to IPv4
_HOST_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
POLICY_FIELD = "private_network.allow"


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, NAT64): the one actually reached."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


# Pure functions of a string or an address, run on every request a driver sends (and the
# policy's allow entries on each): cached.
@lru_cache(maxsize=1024)
def address_rule(address: IPAddress) -> str | None:
    """Which rule refuses ``address`` (None: a public address)."""
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return address_rule(inner)
        address = address if address.scope_id is None else IPv6Address(str(address).split("%")[0])
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, IPv6Address) and address in _UNIQUE_LOCAL:
        return "unique_local"
    if address.is_private:
        return "private"
    # Shared (100.64/10), reserved, benchmark, documentation...: nothing an agent should fetch.
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@lru_cache(maxsize=1024)
def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number means to the system resolver, or None for a name.

    Besides the canonical forms, the C resolver accepts inet_aton's shorthands (``127.1``,
    decimal ``2130706433``, hex ``0x7f000001``, octal ``0177.0.0.1``); they mean what it says.
    """
    host = host.strip("[]").removesuffix(".").lower()
    try:
        return ip_address(host)
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class AllowEntry:
    """One opt-in: a host name (``*.domain`` for its subdomains) or an address range, and
    optionally the one port it is opted in for."""

    text: str
    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def admits(self, host: str, port: int, address: IPAddress) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return host.endswith(self.host[1:]) if self.host.startswith("*.") else host == self.host
        assert self.network is not None
        inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        return any(
            a.version == self.network.version and a in self.network for a in (address, inner) if a is not None
        )


def allow_entry_for(url: str) -> str:
    """The ``private_network.allow`` entry admitting exactly this URL's host and port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {entry!r}")
    return int(text)


@lru_cache(maxsize=1024)
def parse_allow_entry(entry: str) -> AllowEntry:
    """``host``, ``*.domain``, ``10.0.0.5``, ``10.0.0.0/8``, ``fd00::/8``, ``[::1]``, with an
    optional ``:port`` (not on ranges). Addresses in their canonical form only."""
    text = entry.strip().lower()
    rest, port = text, None
    if text.startswith("["):
        inside, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"bad bracketed address {entry!r}")
        rest, port = inside, (_port(after[1:], entry) if after else None)
    elif text.count(":") == 1:
        rest, _, port_text = text.partition(":")
        port = _port(port_text, entry)
    if "/" in rest:
        if port is not None:
            raise ValueError(f"a range takes no port: {entry!r}")
        try:
            return AllowEntry(text, network=ip_network(rest))
        except ValueError as exc:
            raise ValueError(f"not an address range: {entry!r} ({exc})") from None
    try:
        return AllowEntry(text, network=ip_network(rest), port=port)
    except ValueError:
        pass
    host = rest.removesuffix(".")
    labels = host.removeprefix("*.").split(".")
    if not host or any(not label or set(label) - _HOST_LABEL for label in labels):
        raise ValueError(f"not a host name, address or range: {entry!r}")
    if literal_address(host) is not None or not any(c.isalpha() for c in labels[-1]):
        raise ValueError(f"write addresses in their usual form (like 127.0.0.1): {entry!r}")
    return AllowEntry(text, host=host, port=port)


def check_addresses(host: str, port: int, addresses: Sequence[IPAddress], allow: Sequence[str]) -> IPAddress:
    """The address to connect to; refuses if any answer is private and not opted in (a name
    answering one public and one private address is refused: which one a client picks is not
    ours to guess)."""
    entries = [parse_allow_entry(e) for e in allow]
    for address in addresses:
        rule = address_rule(address)
        if rule is not None and not any(e.admits(host, port, address) for e in entries):
            raise refusal(host, port, address, rule)
    return addresses[0]


def refusal(host: str, port: int, address: IPAddress, rule: str) -> PrivateAddressRefused:
    shown = f"[{host}]" if ":" in host else host
    inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
    where = f"{address}" + (f", carrying {inner}" if inner is not None else "")
    kind = rule.replace("_", "-")
    article = "an" if kind[0] in "aeiou" else "a"
    embedded: dict[str, Any] = {"embedded_ipv4": str(inner)} if inner is not None else {}
    return PrivateAddressRefused(
        f"{shown} is {article} {kind} address ({where}), not a public one: the agent does not "
        f"fetch from the machine's own or private networks (rule: {rule}). To allow it, a "
        f'device-approved policy must list it in {POLICY_FIELD}, e.g. "{shown}:{port}"',
        rule=rule,
        host=host,
        port=port,
        address=str(address),
        **embedded,
        policy_field=POLICY_FIELD,
    )
