"""Connection pools that never cross TLS names.

The network guard sends each request to the address it checked (the URL's host becomes that
address; the name travels as the ``sni_hostname`` extension, so TLS verifies it). httpx pools
connections by the URL's origin, now the address: two names served at one address and port
would share a connection whose certificate was verified for the first name only. So every
server name gets its own pool (an httpx transport), looked up per request; requests without
one (plain http, an https address written as such, RPC calls by name) share a pool keyed, as
usual, by their URL. The named pools are bounded: the least recently used is closed when a new
name needs room (a request still running on it then fails as a network error, as a dropped
connection would: at 64 names in use at once, rare), and all are closed with the client.
"""

from __future__ import annotations

import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import httpx

from .http1 import AsyncHttp1Transport, Http1Transport

# Distinct https names kept pooled at once; a name beyond that starts a fresh pool.
MAX_NAMES = 64
P = TypeVar("P")


class _Named(Generic[P]):
    """Pools by server name, least recently used first."""

    def __init__(self, make: Callable[[], P], size: int) -> None:
        self._make = make
        self._size = size
        self._pools: OrderedDict[str, P] = OrderedDict()

    def get(self, name: str) -> tuple[P, P | None]:
        """The pool for ``name`` and the pool evicted to make room for it, if any."""
        pool = self._pools.get(name)
        if pool is not None:
            self._pools.move_to_end(name)
            return pool, None
        pool = self._pools[name] = self._make()
        evicted = self._pools.popitem(last=False)[1] if len(self._pools) > self._size else None
        return pool, evicted

    def drain(self) -> list[P]:
        pools = list(self._pools.values())
        self._pools.clear()
        return pools


def _name(request: httpx.Request) -> str | None:
    name = request.extensions.get("sni_hostname")
    return name if isinstance(name, str) else None


class NamePooledTransport(httpx.BaseTransport):
    def __init__(self, verify: ssl.SSLContext | bool, limits: httpx.Limits, size: int = MAX_NAMES) -> None:
        # One context for every pool: building one loads the CA bundle.
        context = httpx.create_ssl_context(verify)

        def make() -> Http1Transport:
            return Http1Transport(context, limits)

        self._shared = make()
        self._named: _Named[Http1Transport] = _Named(make, size)
        self._lock = threading.Lock()  # a sync client may serve several threads

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = _name(request)
        if name is None:
            return self._shared.handle_request(request)
        with self._lock:
            pool, evicted = self._named.get(name)
        if evicted is not None:
            evicted.close()
        return pool.handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools = self._named.drain()
        for pool in (self._shared, *pools):
            pool.close()


class AsyncNamePooledTransport(httpx.AsyncBaseTransport):
    def __init__(self, verify: ssl.SSLContext | bool, limits: httpx.Limits, size: int = MAX_NAMES) -> None:
        context = httpx.create_ssl_context(verify)

        def make() -> AsyncHttp1Transport:
            return AsyncHttp1Transport(context, limits)

        self._shared = make()
        self._named: _Named[AsyncHttp1Transport] = _Named(make, size)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = _name(request)
        if name is None:
            return await self._shared.handle_async_request(request)
        pool, evicted = self._named.get(name)  # no await in between: one event loop, no lock
        if evicted is not None:
            await evicted.aclose()
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        for pool in (self._shared, *self._named.drain()):
            await pool.aclose()
