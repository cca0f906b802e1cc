"""The private-network guard: the agent fetches public addresses only, unless the policy opts in.

A URL an agent was handed must not turn the wallet into a proxy into the user's own network
(the chain's RPC, a router, a cloud metadata service). So every request is checked on the
addresses its host resolves to, whatever spelling the host used (``127.1``, ``2130706433``,
``0x7f000001``, ``[::ffff:127.0.0.1]``, a name answering 127.0.0.1): the resolver's answer is
what gets classified, and the request is then sent to that very address (with the original
``Host`` header and TLS server name), so a second lookup between check and connect (DNS
rebinding) cannot send it elsewhere.

The policy's ``private_network.allow`` opts hosts, addresses or ranges in, optionally for one
port only (the local world's home opts in its own API that way). Entries are validated when the
policy loads (``parse_allow_entry``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from functools import lru_cache
from ipaddress import IPv6Address, ip_address
from urllib.parse import urlsplit

import httpx

from .addresses import IPAddress, check_addresses, literal_address
from .errors import UpstreamError
from .request_limits import parsed_url

# Answers the host's addresses (as strings) for a port; the default asks the system resolver.
Resolver = Callable[[str, int], Sequence[str]]


def _target(url: httpx.URL) -> tuple[str, int]:
    host = url.host.removesuffix(".").lower()
    return host, url.port or (443 if url.scheme == "https" else 80)


def check_literal(url: object, allow: Sequence[str]) -> None:
    """Refuse a host written as a private address, whatever its spelling, even one the URL
    parser rejects (octal ``0177.0.0.1``). No lookup is made: names are checked on their
    resolved addresses when the request is sent. Anything else wrong with ``url`` is left to
    the request's validation."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return  # other schemes are refused by the request's validation, as such
    try:
        host, port = _target(parsed_url(url))
    except (httpx.InvalidURL, ValueError):
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").removesuffix(".")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return
    address = literal_address(host)
    if address is not None:
        check_addresses(host, port, [address], allow)


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class NetworkGuard:
    """Checks and pins every request a driver sends. ``allow`` is read at every request, so a
    newly approved policy applies at once; ``resolver`` is the system's unless a test says."""

    def __init__(self, allow: Callable[[], Sequence[str]], resolver: Resolver | None = None) -> None:
        self._allow = allow
        self._resolver = resolver or system_resolve

    def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ip_address(a) for a in self._resolver(host, port)]
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(
                f"cannot resolve {host}: {exc}", cause="NameResolutionError", host=host
            ) from exc

    def pin(self, request: httpx.Request) -> httpx.Request:
        host, port = _target(request.url)
        literal = literal_address(host)
        addresses = [literal] if literal is not None else self._lookup(host, port)
        return _pinned(request, host, check_addresses(host, port, addresses, self._allow()))

    async def apin(self, request: httpx.Request) -> httpx.Request:
        host, port = _target(request.url)
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            # A lookup blocks: the system resolver's runs in the loop's executor, as
            # loop.getaddrinfo does.
            addresses = await asyncio.get_running_loop().run_in_executor(None, self._lookup, host, port)
        return _pinned(request, host, check_addresses(host, port, addresses, self._allow()))


def _pinned(request: httpx.Request, host: str, address: IPAddress) -> httpx.Request:
    """The same request, sent to ``address``: the Host header (set from the URL when the
    request was built) stays, and TLS still checks the certificate against the name."""
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        address = IPv6Address(str(address).split("%")[0])
    extensions = dict(request.extensions)
    if request.url.scheme == "https" and literal_address(host) is None:
        extensions["sni_hostname"] = host
    return httpx.Request(
        request.method,
        _with_host(request.url, str(address)),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


@lru_cache(maxsize=256)
def _with_host(url: httpx.URL, host: str) -> httpx.URL:
    """``url`` sent to ``host``: httpx re-parses a URL to copy it, so once per pair."""
    return url.copy_with(host=host)
