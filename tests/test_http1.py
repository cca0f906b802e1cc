"""The h11 connection layer (x402_agent/http1.py) against a real server on loopback, both drivers.

The server is a raw socket server scripted per test (what it answers, when it closes), so the
connection behaviour is what the test asserts: reuse, no reuse after a close or a partly read
body, 1xx answers skipped, limits and timeouts as httpx's own errors.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from x402_agent.http1 import AsyncHttp1Transport, Http1Transport

LIMITS = httpx.Limits(max_keepalive_connections=4, keepalive_expiry=30.0)
Answer = Callable[[int], bytes | None]  # request number -> raw response (None: close without one)


def ok(body: bytes, *extra: str) -> bytes:
    head = "\r\n".join(("HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra))
    return head.encode() + b"\r\n\r\n" + body


class ScriptedServer:
    """Answers each request with ``answer(n)``; closes after it when ``close_after(n)``."""

    def __init__(self, answer: Answer, close_after: Callable[[int], bool] = lambda n: False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.stop = threading.Event()
        self.closed = threading.Semaphore(0)  # released each time the server closed a connection
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/thing"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._exchange(conn)
        except OSError:
            pass  # the client closed a connection it did not read to the end: a reset
        finally:
            conn.close()
            self.closed.release()

    def _exchange(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            _, buffer = buffer.split(b"\r\n\r\n", 1)
            n = self.requests
            self.requests += 1
            raw = self.answer(n)
            if raw is None:
                return
            conn.sendall(raw)
            if self.close_after(n):
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(answer: Answer, close_after: Callable[[int], bool] = lambda n: False) -> ScriptedServer:
        servers.append(ScriptedServer(answer, close_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def get_all(url: str, count: int, driver: str, **extensions: object) -> list[httpx.Response]:
    """``count`` GETs in turn on one transport, each body read to its end."""
    context = ssl.create_default_context()
    if driver == "sync":
        with httpx.Client(transport=Http1Transport(context, LIMITS)) as client:
            return [client.get(url, extensions=extensions) for _ in range(count)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=AsyncHttp1Transport(context, LIMITS)) as client:
            return [await client.get(url, extensions=extensions) for _ in range(count)]

    return asyncio.run(run())


DRIVERS = pytest.mark.parametrize("driver", ["sync", "async"])


@DRIVERS
def test_a_kept_alive_connection_is_reused(serve: Callable[..., ScriptedServer], driver: str) -> None:
    server = serve(lambda n: ok(f"answer {n}".encode()))
    answers = get_all(server.url, 3, driver)
    assert [a.text for a in answers] == ["answer 0", "answer 1", "answer 2"]
    assert server.connections == 1


@DRIVERS
def test_connection_close_and_a_server_closing_an_idle_connection_are_not_reused(
    serve: Callable[..., ScriptedServer], driver: str
) -> None:
    # Request 0 says close; request 1 is kept alive but the server then drops the connection:
    # request 2 is sent once the server has closed it, and goes on a new connection.
    server = serve(
        lambda n: ok(b"x", "Connection: close") if n == 0 else ok(b"y"), close_after=lambda n: n < 2
    )
    context = ssl.create_default_context()
    if driver == "sync":
        with httpx.Client(transport=Http1Transport(context, LIMITS)) as client:
            texts = [client.get(server.url).text for _ in range(2)]
            assert server.closed.acquire(timeout=10) and server.closed.acquire(timeout=10)
            texts.append(client.get(server.url).text)
    else:

        async def run() -> list[str]:
            async with httpx.AsyncClient(transport=AsyncHttp1Transport(context, LIMITS)) as client:
                texts = [(await client.get(server.url)).text for _ in range(2)]
                assert server.closed.acquire(timeout=10) and server.closed.acquire(timeout=10)
                texts.append((await client.get(server.url)).text)
                return texts

        texts = asyncio.run(run())
    assert texts == ["x", "y", "y"]
    assert server.connections == 3


@DRIVERS
def test_a_body_not_read_to_its_end_closes_its_connection(
    serve: Callable[..., ScriptedServer], driver: str
) -> None:
    server = serve(lambda n: ok(b"z" * 200_000))
    context = ssl.create_default_context()
    if driver == "sync":
        with httpx.Client(transport=Http1Transport(context, LIMITS)) as client:
            with client.stream("GET", server.url) as response:
                next(response.iter_raw(1000))
            assert client.get(server.url).content == b"z" * 200_000
    else:

        async def run() -> None:
            async with httpx.AsyncClient(transport=AsyncHttp1Transport(context, LIMITS)) as client:
                async with client.stream("GET", server.url) as response:
                    await anext(response.aiter_raw(1000))
                assert (await client.get(server.url)).content == b"z" * 200_000

        asyncio.run(run())
    assert server.connections == 2


@DRIVERS
def test_informational_answers_are_skipped_and_bodies_decoded(
    serve: Callable[..., ScriptedServer], driver: str
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    zipped = ok(gzip.compress(b"unzipped"), "Content-Encoding: gzip")
    server = serve(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + (chunked if n == 0 else zipped))
    answers = get_all(server.url, 2, driver)
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.text for a in answers] == ["hello world", "unzipped"]
    assert server.connections == 1


@DRIVERS
def test_an_oversized_head_and_a_cut_body_are_protocol_errors(
    serve: Callable[..., ScriptedServer], driver: str
) -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n"
    server = serve(lambda n: huge, close_after=lambda n: True)
    with pytest.raises(httpx.RemoteProtocolError):
        get_all(server.url, 1, driver)
    cut = serve(
        lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", close_after=lambda n: True
    )
    with pytest.raises(httpx.RemoteProtocolError):
        get_all(cut.url, 1, driver)
    silent = serve(lambda n: None)
    with pytest.raises(httpx.RemoteProtocolError):
        get_all(silent.url, 1, driver)


@DRIVERS
def test_timeouts_and_refused_connections_are_httpx_errors(
    serve: Callable[..., ScriptedServer], driver: str
) -> None:
    answered = threading.Event()
    stalled = serve(lambda n: answered.wait(10) and None)  # answers nothing until the test ends
    timeouts = {"connect": 5.0, "read": 0.3, "write": 5.0, "pool": 5.0}
    try:
        with pytest.raises(httpx.ReadTimeout):
            get_all(stalled.url, 1, driver, timeout=timeouts)
    finally:
        answered.set()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(httpx.ConnectError):
        get_all(f"http://127.0.0.1:{port}/", 1, driver)
