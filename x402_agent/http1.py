"""HTTP/1.1 connections for the agent's exchanges: h11 over asyncio streams and plain sockets.

httpx stays the interface (requests, responses, content decoding, its error types); only the
layer under it changes. httpx's default transport (httpcore over anyio) spent about 1.5 ms of
CPU per request on its pool bookkeeping, cancel scopes and stream wrappers, half of what a paid
fetch costs its client, while all the agent needs is a keep-alive pool per origin: the guard has
already pinned the address (the URL's host) and named the TLS server (``sni_hostname``), so a
connection is opened to exactly that address and verified for exactly that name.

h11 parses and frames the messages (the same parser httpcore uses, with the same 100 KiB limit
on a response's head). A connection goes back to its pool only when both sides finished their
message cleanly and the server did not ask to close; one idle longer than the keep-alive expiry,
or closed by the server meanwhile, is dropped rather than reused. A request is never retried on
another connection: it may carry a payment. Connections are not capped in number (httpcore's
pool queued requests beyond 100): the callers bound their own concurrency (the MCP server's
sessions, a caller's gather), and a fetch waiting in a queue would spend its deadline there.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import h11
import httpx

MAX_HEAD_BYTES = 100 * 1024
READ_SIZE = 64 * 1024
_Origin = tuple[bytes, str, int, str | None]


def _origin(request: httpx.Request) -> _Origin:
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    name = request.extensions.get("sni_hostname")
    return url.raw_scheme, url.host, port, name if isinstance(name, str) else None


def _timeout(request: httpx.Request, operation: str) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    value = timeouts.get(operation)
    return float(value) if value is not None else None


def _request_head(request: httpx.Request) -> h11.Request:
    return h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)


def _response(head: h11.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        status_code=head.status_code,
        headers=head.headers.raw_items(),
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


@contextmanager
def _mapped(request: httpx.Request, operation: str) -> Iterator[None]:
    """Errors of the connection layer as httpx's own, so callers handle one tree."""
    try:
        yield
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    except TimeoutError as exc:  # socket.timeout is TimeoutError
        timeout = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout}.get(
            operation, httpx.ReadTimeout
        )
        raise timeout(f"{operation} timed out", request=request) from exc
    except OSError as exc:  # includes ssl.SSLError and name resolution failures
        error = {"connect": httpx.ConnectError, "write": httpx.WriteError}.get(operation, httpx.ReadError)
        raise error(str(exc) or type(exc).__name__, request=request) from exc


def _closed_early(request: httpx.Request) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError("server disconnected before the response was complete", request=request)


def _idle_and_open(sock: Any) -> bool:
    """Nothing to read on an idle connection: anything readable is the server's close (or bytes
    it should not have sent), either way not a connection to send a request on."""
    try:
        return not select.select([sock], [], [], 0)[0]
    except (OSError, ValueError):
        return False


def _reusable(protocol: h11.Connection) -> bool:
    return protocol.our_state is h11.DONE and protocol.their_state is h11.DONE


class _Pool:
    """Idle connections by origin, at most ``size`` in all, each kept ``expiry`` seconds."""

    def __init__(self, size: int, expiry: float) -> None:
        self.size = size
        self.expiry = expiry
        self.idle: dict[_Origin, deque[tuple[float, Any]]] = {}
        self.count = 0

    def take(self, origin: _Origin) -> Any | None:
        queue = self.idle.get(origin)
        now = time.monotonic()
        found = None
        while queue and found is None:
            since, connection = queue.pop()
            self.count -= 1
            if now - since <= self.expiry and connection.alive():
                found = connection
            else:
                connection.close()
        if queue is not None and not queue:
            del self.idle[origin]  # origins come and go (every pinned address is one)
        return found

    def put(self, origin: _Origin, connection: Any) -> None:
        if self.size == 0:
            connection.close()
            return
        if self.count >= self.size:
            self._drop_oldest()
        self.idle.setdefault(origin, deque()).append((time.monotonic(), connection))
        self.count += 1

    def _drop_oldest(self) -> None:
        origin = min((q[0][0], o) for o, q in self.idle.items() if q)[1]
        self.idle[origin].popleft()[1].close()
        self.count -= 1
        if not self.idle[origin]:
            del self.idle[origin]

    def drain(self) -> list[Any]:
        connections = [c for queue in self.idle.values() for _, c in queue]
        self.idle.clear()
        self.count = 0
        return connections


class _AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    @classmethod
    async def open(cls, origin: _Origin, context: ssl.SSLContext) -> _AsyncConnection:
        scheme, host, port, name = origin
        secure = scheme == b"https"
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=context if secure else None,
            server_hostname=(name or host) if secure else None,
            limit=READ_SIZE,
        )
        return cls(reader, writer)

    def alive(self) -> bool:
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        sock = self.writer.get_extra_info("socket")
        return sock is None or _idle_and_open(sock)

    async def send(self, request: httpx.Request) -> None:
        self.writer.write(self.protocol.send(_request_head(request)) or b"")
        async for chunk in request.stream:  # type: ignore[union-attr]
            self.writer.write(self.protocol.send(h11.Data(data=chunk)) or b"")
        self.writer.write(self.protocol.send(h11.EndOfMessage()) or b"")
        await self.writer.drain()

    async def next_event(self, request: httpx.Request, timeout: float | None) -> Any:
        """The next event of the response, each read given ``timeout`` (httpx's read timeout
        is per read, and a timeout scope must not span a generator's ``yield``)."""
        while True:
            event = self.protocol.next_event()
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    raise _closed_early(request)
                return event
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
            self.protocol.receive_data(data)

    async def head(self, request: httpx.Request) -> h11.Response:
        timeout = _timeout(request, "read")
        while True:
            event = await self.next_event(request, timeout)
            if isinstance(event, h11.Response):
                return event
            # 1xx answers (100 Continue, 103 Early Hints) precede the real one

    def close(self) -> None:
        self.writer.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(
        self,
        transport: AsyncHttp1Transport,
        origin: _Origin,
        connection: _AsyncConnection,
        request: httpx.Request,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._connection: _AsyncConnection | None = connection
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        timeout = _timeout(self._request, "read")
        while True:
            with _mapped(self._request, "read"):
                event = await connection.next_event(self._request, timeout)
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                yield bytes(event.data)
        self._connection = None
        self._transport.release(self._origin, connection)

    async def aclose(self) -> None:
        if self._connection is not None:  # not read to its end: the connection is unusable
            self._connection.close()
            self._connection = None


class AsyncHttp1Transport(httpx.AsyncBaseTransport):
    """An httpx transport over h11 and asyncio streams, pooling connections per origin."""

    def __init__(self, context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._context = context
        self._pool = _Pool(limits.max_keepalive_connections or 0, limits.keepalive_expiry or 0.0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request)
        connection = self._pool.take(origin)
        if connection is None:
            with _mapped(request, "connect"):
                async with asyncio.timeout(_timeout(request, "connect")):
                    connection = await _AsyncConnection.open(origin, self._context)
        try:
            with _mapped(request, "write"):
                async with asyncio.timeout(_timeout(request, "write")):
                    await connection.send(request)
            with _mapped(request, "read"):
                head = await connection.head(request)
        except BaseException:
            connection.close()
            raise
        return _response(head, _AsyncBody(self, origin, connection, request))

    def release(self, origin: _Origin, connection: _AsyncConnection) -> None:
        if _reusable(connection.protocol) and connection.alive():
            connection.protocol.start_next_cycle()
            self._pool.put(origin, connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        for connection in self._pool.drain():
            connection.close()


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    @classmethod
    def open(cls, origin: _Origin, context: ssl.SSLContext, timeout: float | None) -> _Connection:
        scheme, host, port, name = origin
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                sock = context.wrap_socket(sock, server_hostname=name or host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def alive(self) -> bool:
        return _idle_and_open(self.sock)

    def send(self, request: httpx.Request, timeout: float | None) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(self.protocol.send(_request_head(request)) or b"")
        for chunk in request.stream:  # type: ignore[union-attr]
            self.sock.sendall(self.protocol.send(h11.Data(data=chunk)) or b"")
        self.sock.sendall(self.protocol.send(h11.EndOfMessage()) or b"")

    def next_event(self, request: httpx.Request) -> Any:
        while True:
            event = self.protocol.next_event()
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    raise _closed_early(request)
                return event
            self.protocol.receive_data(self.sock.recv(READ_SIZE))

    def head(self, request: httpx.Request, timeout: float | None) -> h11.Response:
        self.sock.settimeout(timeout)
        while True:
            event = self.next_event(request)
            if isinstance(event, h11.Response):
                return event

    def close(self) -> None:
        self.sock.close()


class _Body(httpx.SyncByteStream):
    def __init__(
        self, transport: Http1Transport, origin: _Origin, connection: _Connection, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._connection: _Connection | None = connection
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        while True:
            with _mapped(self._request, "read"):
                event = connection.next_event(self._request)
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                yield bytes(event.data)
        self._connection = None
        self._transport.release(self._origin, connection)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Http1Transport(httpx.BaseTransport):
    """The synchronous twin of ``AsyncHttp1Transport``; one client may serve several threads."""

    def __init__(self, context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._context = context
        self._pool = _Pool(limits.max_keepalive_connections or 0, limits.keepalive_expiry or 0.0)
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request)
        with self._lock:
            connection = self._pool.take(origin)
        if connection is None:
            with _mapped(request, "connect"):
                connection = _Connection.open(origin, self._context, _timeout(request, "connect"))
        try:
            with _mapped(request, "write"):
                connection.send(request, _timeout(request, "write"))
            with _mapped(request, "read"):
                head = connection.head(request, _timeout(request, "read"))
        except BaseException:
            connection.close()
            raise
        return _response(head, _Body(self, origin, connection, request))

    def release(self, origin: _Origin, connection: _Connection) -> None:
        if _reusable(connection.protocol) and connection.alive():
            connection.protocol.start_next_cycle()
            with self._lock:
                self._pool.put(origin, connection)
        else:
            connection.close()

    def close(self) -> None:
        with self._lock:
            connections = self._pool.drain()
        for connection in connections:
            connection.close()
