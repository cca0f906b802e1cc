"""The UDP server: a simulated Trezor Model T on a port pair, its loop in a thread.

NOT SECURE. Keys live in this process's memory and anything on the machine can talk to the
ports. For tests and demos only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TextIO

from trezorlib import messages as m
from trezorlib.protobuf import MessageType

from . import debuglink, framing, handlers
from .engine import (
    CONFIRM_MODES,
    ConfirmMode,
    Engine,
    Out,
    Outcome,
    PageCallback,
    ResultCallback,
    ScreenCallback,
    Unplug,
)
from .handlers import DEFAULT_LABEL, Device
from .keys import TEST_MNEMONIC, Keychain
from .workflow import Screen

LOG = logging.getLogger("x402_agent.device.simulator")

DEFAULT_PORT = 21324  # where HWI and trezorlib look for the Trezor emulator; debug link on +1
Address = tuple[str, int]
# A zero-length datagram: both trezorlib and HWI reject it as a transport error. Sent to the host
# whose request is in progress when the (virtual) cable is pulled, so it errors out instead of
# waiting for ever on a UDP socket (UDP has no connection to break).
LINK_DOWN = b""


def _check_mode(mode: str) -> ConfirmMode:
    if mode not in CONFIRM_MODES:
        raise ValueError(f"confirm must be one of {', '.join(CONFIRM_MODES)}")
    return mode  # type: ignore[return-value]


class DeviceSimulator:
    """A Trezor Model T SIMULATOR (NOT SECURE) speaking wire protocol v1 over UDP.

    Unmodified HWI (``hwilib``, ``hwi --emulators``) and trezorlib find it at
    ``udp:127.0.0.1:21324``; its debug link listens on the next port. ``port=0`` picks a free
    pair (main, main + 1). ``debug_port=None`` means ``port + 1``.

    Confirmations (signing, showing an address...) are decided by ``confirm``:
    ``"auto"`` approves, ``"reject"`` refuses (the host gets Failure(ActionCancelled)),
    ``"wait"`` waits for ``approve()`` / ``reject()`` from any thread or, when
    ``honor_debuglink``, a YES/NO on the debug link (HWI presses YES there by itself),
    ``"unplug"`` pulls the virtual cable when the confirmation is reached.
    ``on_screen(screen)`` is called with what the device displays when a confirmation starts,
    ``on_result(screen, outcome)`` when it ends (approved, rejected, cancelled, interrupted,
    unplugged); both run on the server thread (keep them short) and may be reassigned at any time.
    A screen longer than a page (``Screen.pages``) shows its first page; ``next_page()`` turns to
    the next (``on_page(screen, index)`` is called, also for the pages an early ``approve()``
    turns through: the confirm button is on the last page).

    While a request waits for its confirmation, other hosts (HWI opens a socket per call) are
    served if they only read (features, addresses and keys without display, Ping, Cancel...);
    any other request takes over and the waiting host gets Failure(ActionCancelled).
    ``stop()`` and ``unplug()`` send the waiting host an empty datagram, which HWI and trezorlib
    report as a transport error (``TransportException``), then close the ports; later calls see
    ``ConnectionRefusedError``.
    """

    def __init__(
        self,
        mnemonic: str = TEST_MNEMONIC,
        *,
        passphrase: str = "",
        port: int = DEFAULT_PORT,
        debug_port: int | None = None,
        host: str = "127.0.0.1",
        confirm: ConfirmMode = "auto",
        honor_debuglink: bool = True,
        label: str = DEFAULT_LABEL,
        on_screen: ScreenCallback | None = None,
        on_result: ResultCallback | None = None,
        on_page: PageCallback | None = None,
    ) -> None:
        self._confirm = _check_mode(confirm)
        self.honor_debuglink = honor_debuglink
        self._device = Device(Keychain(mnemonic, passphrase), label)
        self.on_screen = on_screen
        self.on_result = on_result
        self.on_page = on_page
        self._engine = Engine(
            self._device, lambda: self._confirm, self._screen_shown, self._screen_done, self._page_shown
        )
        self._lock = threading.RLock()
        self._screen_cv = threading.Condition(self._lock)
        self._host = host
        self._wanted = (port, debug_port)
        self._ports: tuple[int, int] | None = None  # kept across unplug/replug
        self._main: socket.socket | None = None
        self._debug: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._shutdown_request: Outcome | None = None
        self._host_peer: Address | None = None
        self._main_rx = framing.Reassembler()
        self._debug_rx = framing.Reassembler()

    # ---- public API ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._ports[0] if self._ports else self._wanted[0]

    @property
    def debug_port(self) -> int:
        if self._ports:
            return self._ports[1]
        return self._wanted[1] if self._wanted[1] is not None else self._wanted[0] + 1

    @property
    def path(self) -> str:
        """The HWI / trezorlib device path, e.g. ``udp:127.0.0.1:21324``."""
        return f"udp:{self._host}:{self.port}"

    @property
    def fingerprint(self) -> str:
        """Master key fingerprint (hex), as HWI reports it."""
        return self._device.fingerprint

    @property
    def running(self) -> bool:
        """True while the ports are open."""
        with self._lock:
            return self._main is not None

    @property
    def confirm(self) -> ConfirmMode:
        return self._confirm

    @confirm.setter
    def confirm(self, mode: ConfirmMode) -> None:
        self._confirm = _check_mode(mode)

    @property
    def pending_screen(self) -> Screen | None:
        """The confirmation currently displayed, if any."""
        return self._engine.screen

    def start(self, wait: float = 0.0) -> DeviceSimulator:
        """Bind the ports and serve on a thread. After ``stop()`` or ``unplug()`` it starts again
        (on the same ports). ``wait``: seconds to keep retrying while the ports are taken (e.g. by
        another test process's simulator) before raising ``OSError``."""
        if self.running:
            raise RuntimeError("simulator already running")
        previous = self._thread
        if previous is not None and previous is not threading.current_thread():
            previous.join(5.0)  # a loop that closed its ports is finishing
        deadline = time.monotonic() + wait
        while True:
            try:
                main, debug = self._bind()
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)
        with self._lock:
            if self._main is not None:
                main.close()
                debug.close()
                raise RuntimeError("simulator already running")
            wake = socket.socketpair()
            for sock in (main, debug, *wake):
                sock.setblocking(False)
            self._main, self._debug, self._wake = main, debug, wake
            self._stopping.clear()
            self._shutdown_request = None
            self._main_rx, self._debug_rx = framing.Reassembler(), framing.Reassembler()
            self._thread = threading.Thread(
                target=self._serve, args=(main, debug, wake[0]), name="x402-device-simulator", daemon=True
            )
            self._thread.start()
        LOG.info(
            "INSECURE device simulator listening on %s (debug link port %d), fingerprint %s",
            self.path,
            self.debug_port,
            self.fingerprint,
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and free the ports. A host mid-request gets a transport error."""
        self._shut_down("interrupted", timeout)

    def unplug(self, timeout: float = 5.0) -> None:
        """Simulate pulling the cable: the running request fails on the host with a transport error
        and the ports close. ``replug()`` brings the device back on the same ports."""
        self._shut_down("unplugged", timeout)

    def replug(self, wait: float = 0.0) -> DeviceSimulator:
        return self.start(wait)

    def approve(self) -> bool:
        """Approve the displayed confirmation. False when nothing is displayed."""
        return self._decide(True)

    def reject(self) -> bool:
        """Reject the displayed confirmation. False when nothing is displayed."""
        return self._decide(False)

    @property
    def page(self) -> int:
        """The page of the displayed confirmation on display (0: the first)."""
        return self._engine.page

    def next_page(self) -> bool:
        """Turn the displayed confirmation to its next page; False when there is none."""
        with self._lock:
            return self._engine.turn_page()

    def wait_for_screen(self, timeout: float | None = None) -> Screen | None:
        """Block until a confirmation is displayed (returns it), or ``timeout`` passes or the
        simulator stops (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._screen_cv:
            while self._engine.screen is None:
                if self._main is None:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._screen_cv.wait(remaining)
            return self._engine.screen

    def __enter__(self) -> DeviceSimulator:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- internals -----------------------------------------------------------------------------
    def _bind(self) -> tuple[socket.socket, socket.socket]:
        port, debug_port = self._ports if self._ports else self._wanted
        for _ in range(50):
            main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                main.bind((self._host, port))
            except OSError:
                main.close()
                raise
            actual = main.getsockname()[1]
            debug = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                debug.bind((self._host, actual + 1 if debug_port is None else debug_port))
            except OSError:
                main.close()
                debug.close()
                if port == 0 and debug_port is None:
                    continue  # the next port is taken: try another pair
                raise
            self._ports = (actual, debug.getsockname()[1])
            return main, debug
        raise OSError("no free pair of UDP ports")

    def _screen_shown(self, screen: Screen) -> None:
        self._screen_cv.notify_all()  # the engine calls this with the lock held
        if self.on_screen is not None:
            self.on_screen(screen)

    def _page_shown(self, screen: Screen, index: int) -> None:
        if self.on_page is not None:
            self.on_page(screen, index)

    def _screen_done(self, screen: Screen, outcome: Outcome) -> None:
        if self.on_result is not None:
            self.on_result(screen, outcome)

    def _decide(self, approve: bool) -> bool:
        with self._lock:
            outs = self._engine.decide(approve, source="python")
            if outs is None:
                return False
            if self._host_peer is not None:
                self._emit(outs, self._host_peer)
            return True

    def _shut_down(self, outcome: Outcome, timeout: float) -> None:
        """Close the ports; on the server thread itself at once, otherwise by asking it to."""
        with self._lock:
            thread = self._thread
            if self._main is None or thread is None:
                return
            if thread is threading.current_thread():
                self._close_down(outcome)
                return
            self._shutdown_request = outcome
            assert self._wake is not None
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        thread.join(timeout)

    def _close_down(self, outcome: Outcome) -> None:
        """On the server thread, lock held: end the running request (the host gets LINK_DOWN, so
        it fails now rather than never), then close every socket."""
        if self._engine.abort(outcome) and self._host_peer is not None:
            self._send_raw(self._main, LINK_DOWN, self._host_peer)
        self._stopping.set()
        for sock in (self._main, self._debug, *(self._wake or ())):
            if sock is not None:
                sock.close()
        self._main = self._debug = self._wake = None
        self._host_peer = None
        self._screen_cv.notify_all()

    def _serve(self, main: socket.socket, debug: socket.socket, wake: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([main, debug, wake], [], [], 1.0)
                if wake in readable:
                    _drain(wake)
                with self._lock:
                    if self._shutdown_request is not None:
                        self._close_down(self._shutdown_request)
                if self._stopping.is_set():
                    break
                self._pump(main, debug)
        except Exception:
            LOG.exception("device simulator loop failed")
        finally:
            with self._lock:
                if self._main is main:
                    self._close_down("interrupted")

    def _pump(self, main: socket.socket, debug: socket.socket) -> None:
        """Serve what is queued: the debug link first, so that a button press sent before the
        host's next request is seen before that request."""
        while not self._stopping.is_set():
            while not self._stopping.is_set() and (item := _receive(debug)) is not None:
                self._on_debug(*item)
            item = _receive(main) if not self._stopping.is_set() else None
            if item is None:
                return
            self._on_main(*item)

    def _accept(
        self, data: bytes, peer: Address | None, sock: socket.socket | None, rx: framing.Reassembler
    ) -> MessageType | None:
        """Answer the PINGPING handshake; return a complete decoded message, else None."""
        if peer is None:
            return None
        if data == framing.PING:
            self._send_raw(sock, framing.PONG, peer)
            return None
        return self._decode(rx, data, peer, sock)

    def _on_main(self, data: bytes, peer: Address | None) -> None:
        msg = self._accept(data, peer, self._main, self._main_rx)
        if msg is None or peer is None:
            return
        with self._lock:
            if self._stopping.is_set():
                return
            owner = self._host_peer
            if self._engine.busy and owner is not None and peer != owner:
                # Another host (HWI opens a new socket per call) while a request is in progress:
                # passive requests are served aside; anything else takes over the device, and the
                # host that was waiting is told so instead of waiting for ever.
                if handlers.is_passive(msg):
                    self._emit(self._engine.handle_aside(msg), peer)
                    return
                if self._engine.abort("interrupted"):
                    interrupted = m.Failure(
                        code=m.FailureType.ActionCancelled, message="Interrupted by another host"
                    )
                    self._send_message(self._main, interrupted, owner)
            self._host_peer = peer
            self._emit(self._engine.handle(msg), peer)

    def _on_debug(self, data: bytes, peer: Address | None) -> None:
        msg = self._accept(data, peer, self._debug, self._debug_rx)
        if msg is None or peer is None:
            return
        with self._lock:
            if self._stopping.is_set():
                return
            replies, to_host = debuglink.handle(msg, self._engine, self.honor_debuglink)
            for reply in replies:
                self._send_message(self._debug, reply, peer)
            if to_host and self._host_peer is not None:
                self._emit(to_host, self._host_peer)

    def _decode(
        self, rx: framing.Reassembler, data: bytes, peer: Address, sock: socket.socket | None
    ) -> MessageType | None:
        try:
            complete = rx.feed(peer, data)
        except ValueError:
            too_large = m.Failure(code=m.FailureType.DataError, message="Message too large")
            self._send_message(sock, too_large, peer)
            return None
        if complete is None:
            return None
        try:
            return framing.decode(*complete)
        except KeyError:
            failure = m.Failure(code=m.FailureType.UnexpectedMessage, message="Unknown message")
        except Exception:
            failure = m.Failure(code=m.FailureType.DataError, message="Malformed message")
        self._send_message(sock, failure, peer)
        return None

    def _emit(self, outs: list[Out], peer: Address) -> None:
        for out in outs:
            if isinstance(out, Unplug):
                LOG.warning("simulated unplug")
                self._shut_down("unplugged", 0)
                return
            self._send_message(self._main, out, peer)

    def _send_message(self, sock: socket.socket | None, msg: MessageType, peer: Address) -> None:
        LOG.debug("device -> host: %s", type(msg).__name__)
        for chunk in framing.encode(msg):
            self._send_raw(sock, chunk, peer)

    @staticmethod
    def _send_raw(sock: socket.socket | None, data: bytes, peer: Address) -> None:
        if sock is None:
            return
        try:
            sock.sendto(data, peer)
        except OSError as exc:  # the host went away; UDP gives no other sign
            LOG.debug("send to %s failed: %s", peer, exc)


def _receive(sock: socket.socket) -> tuple[bytes, Address | None] | None:
    try:
        data, peer = sock.recvfrom(4096)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:  # e.g. an ICMP error reported on the socket: consumed, nothing to read
        return b"", None
    return data, peer


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


# ---- foreground command ---------------------------------------------------------------------
def run_simulator(
    mnemonic: str | None = None,
    *,
    passphrase: str = "",
    port: int = DEFAULT_PORT,
    debug_port: int | None = None,
    host: str = "127.0.0.1",
    confirm: ConfirmMode = "auto",
    honor_debuglink: bool = True,
    label: str = DEFAULT_LABEL,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
    interactive: bool | None = None,
) -> int:
    """Run the INSECURE simulator in the foreground until Ctrl-C, SIGTERM or ``stop_event``.

    Prints each screen the device would display and its outcome. With ``confirm="wait"`` and an
    interactive terminal (or ``interactive=True``), asks "approve? [y/N]" on stdin for each
    screen. Returns an exit status (0, or 1 when the device could not start or went away).
    """
    stream = out if out is not None else sys.stdout
    ask = confirm == "wait" and (sys.stdin.isatty() if interactive is None else interactive)

    def show(screen: Screen) -> None:
        print(f"\n[device] {screen.text()}", file=stream, flush=True)
        if ask:
            print("[device] approve? [y/N] ", end="", file=stream, flush=True)

    def result(screen: Screen, outcome: Outcome) -> None:
        print(f"[device] {screen.kind}: {outcome}", file=stream, flush=True)

    try:
        sim = DeviceSimulator(
            mnemonic or TEST_MNEMONIC,
            passphrase=passphrase,
            port=port,
            debug_port=debug_port,
            host=host,
            confirm=confirm,
            honor_debuglink=honor_debuglink,
            label=label,
            on_screen=show,
            on_result=result,
        )
        sim.start()
    except (OSError, ValueError) as exc:
        print(f"device simulator: cannot start: {exc}", file=sys.stderr)
        return 1
    seed = "standard test seed (all x12)" if mnemonic in (None, TEST_MNEMONIC) else "custom mnemonic"
    print(
        f"x402-agent Trezor SIMULATOR -- NOT SECURE, for tests and demos only\n"
        f"  path {sim.path} (debug link {host}:{sim.debug_port}), fingerprint {sim.fingerprint}\n"
        f"  seed: {seed}; confirmations: {confirm}\n  Ctrl-C to stop",
        file=stream,
        flush=True,
    )
    stop = stop_event or threading.Event()
    restore = _raise_on_sigterm()
    try:
        if ask:
            _answer_from_stdin(sim, stop)
        while sim.running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        restore()
        gone = not sim.running
        sim.stop()
    if gone and not stop.is_set():
        print("device simulator: the device went away (unplugged)", file=stream)
        return 1
    return 0


def _answer_from_stdin(sim: DeviceSimulator, stop: threading.Event) -> None:
    for line in sys.stdin:
        if stop.is_set() or not sim.running:
            return
        if sim.pending_screen is not None:
            (sim.approve if line.strip().lower() in ("y", "yes") else sim.reject)()


def _raise_on_sigterm() -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
