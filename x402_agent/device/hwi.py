"""Hardware wallets through HWI: list, enroll, sign approval lines.

This package is the only place that imports hwilib or trezorlib. HWI is in maintenance mode
upstream, so the rest of the project sees only ``HardwareDevice`` and ``DeviceInfo``; another
backend can replace HWI behind them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from ..approval import Enrollment
from ..errors import X402AgentError
from ..reasons import Reason

# A dedicated BIP32 path for approving policies: hardened "402" account on the testnet coin
# type, so it never coincides with a path holding funds.
DEFAULT_APPROVAL_PATH = "m/44'/1'/402'/0/0"
# How long a person has to confirm on the device.
DEFAULT_TIMEOUT_SECONDS = 300.0
# A request that needs no person (reading a key) gets this long before the device counts as gone.
_PROBE_SECONDS = 5.0
T = TypeVar("T")


class DeviceError(X402AgentError):
    """The device is missing, locked, disconnected, timed out or said no."""

    reason = Reason.DEVICE_ERROR


@dataclass(frozen=True)
class DeviceInfo:
    device_type: str
    path: str
    fingerprint: str | None
    model: str | None
    label: str | None
    error: str | None = None


class HardwareDevice(Protocol):
    def enroll(self, path: str) -> Enrollment: ...
    def sign_message(self, message: str, path: str) -> str:
        """Bitcoin signed-message signature, base64, made and confirmed on the device."""
        ...

    def close(self) -> None: ...


def _errors() -> tuple[type[BaseException], ...]:
    from hwilib.devices.trezorlib.exceptions import TrezorException
    from hwilib.errors import HWWError

    return (HWWError, TrezorException, OSError, RuntimeError, ValueError)


def _device_error(exc: BaseException, action: str) -> DeviceError:
    from hwilib.devices.trezorlib.transport import TransportException
    from hwilib.errors import ACTION_CANCELED

    code = getattr(exc, "code", None)
    if code == ACTION_CANCELED or "cancel" in str(exc).lower():
        return DeviceError(f"{action}: rejected on the device", reason=Reason.DEVICE_REJECTED)
    if isinstance(exc, OSError | TimeoutError | TransportException) or ("timed out" in str(exc).lower()):
        return DeviceError(
            f"{action}: the device stopped answering (unplugged or timed out)",
            reason=Reason.DEVICE_UNAVAILABLE,
        )
    return DeviceError(f"{action}: {type(exc).__name__}: {str(exc)[:200]}")


# (device type, HWI path) of a device the scan cannot find, e.g. a simulator on its own port.
Known = tuple[str, str]


def list_devices(known: Sequence[Known] = ()) -> list[DeviceInfo]:
    """The ``known`` devices (each probed; ``error`` says why one does not answer), then every
    device HWI's scan reaches, emulators (and our simulator at HWI's port) included."""
    from hwilib.commands import enumerate as hwi_enumerate

    found = [_probe(device_type, path) for device_type, path in known]
    seen = {path for _, path in known}
    for entry in hwi_enumerate(allow_emulators=True):
        if entry.get("path") in seen:
            continue
        found.append(
            DeviceInfo(
                device_type=str(entry.get("type")),
                path=str(entry.get("path")),
                fingerprint=entry.get("fingerprint"),
                model=entry.get("model"),
                label=entry.get("label"),
                error=entry.get("error"),
            )
        )
    return found


def _probe(device_type: str, path: str) -> DeviceInfo:
    try:
        device = HwiDevice.at(device_type, path)
    except DeviceError as exc:
        return DeviceInfo(device_type, path, None, None, None, error=exc.message)
    try:
        device.fingerprint()
        return device.info
    except DeviceError as exc:
        return DeviceInfo(device_type, path, None, None, None, error=exc.message)
    finally:
        device.close()


def _client(device_type: str, path: str) -> Any:
    """HWI's client for the device at ``path``. HWI's ``get_client`` looks for a Trezor
    emulator only at 127.0.0.1:21324; its Trezor client takes the emulator's address, so a
    simulator on any port opens through the same, unmodified client."""
    if device_type == "trezor" and path.startswith("udp:"):
        from hwilib.devices.trezor import TrezorClient

        return TrezorClient(path, sim_path=path.removeprefix("udp:"))
    from hwilib.commands import get_client

    return get_client(device_type, path)


class HwiDevice:
    """One device, opened through HWI's client for its type."""

    def __init__(self, info: DeviceInfo, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.info = info
        self.timeout = timeout
        try:
            client = _client(info.device_type, info.path)
        except _errors() as exc:
            raise _device_error(exc, "opening the device") from exc
        if client is None:
            raise DeviceError(f"cannot open {info.device_type} at {info.path}")
        self._client: Any = client

    def fingerprint(self) -> str:
        """The master key fingerprint (hex): from the scan, else asked of the device."""
        fingerprint = self.info.fingerprint
        if fingerprint is None:  # opened by path: learn which device answers there
            try:
                fingerprint = str(self._client.get_master_fingerprint().hex())
            except _errors() as exc:
                raise _device_error(exc, "reading the device's fingerprint") from exc
            self.info = replace(self.info, fingerprint=fingerprint)
        return fingerprint

    @classmethod
    def at(cls, device_type: str, path: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> HwiDevice:
        """Open a device at a known HWI path (e.g. ``udp:127.0.0.1:21324``) without scanning."""
        return cls(DeviceInfo(device_type, path, None, None, None), timeout)

    @classmethod
    def find(cls, fingerprint: str | None = None, known: Sequence[Known] = ()) -> HwiDevice:
        """The device with ``fingerprint`` (any single one when None): a ``known`` path that
        answers is used without scanning (the device recorded in the home, e.g. a simulator on
        its own port, which HWI's scan would miss); otherwise HWI scans."""
        for device_type, path in known:
            try:
                device = cls.at(device_type, path)
            except DeviceError:
                continue  # gone (a stopped simulator): a scan may still find the device
            try:
                if fingerprint is None or device.fingerprint() == fingerprint:
                    return device
            except DeviceError:
                pass  # not answering after all: scan
            device.close()
        devices = [
            d
            for d in list_devices()
            if d.error is None and (fingerprint is None or d.fingerprint == fingerprint)
        ]
        if not devices:
            wanted = f" with fingerprint {fingerprint}" if fingerprint else ""
            raise DeviceError(
                f"no hardware wallet{wanted} found (is it plugged in and unlocked? "
                "`x402-agent device simulate` runs a simulator)",
                reason=Reason.DEVICE_NOT_FOUND,
            )
        if len(devices) > 1 and fingerprint is None:
            raise DeviceError(
                "several devices found; pass --fingerprint",
                reason=Reason.DEVICE_AMBIGUOUS,
                fingerprints=[d.fingerprint for d in devices],
            )
        return cls(devices[0])

    def enroll(self, path: str) -> Enrollment:
        """Read the key at ``path`` and show its address on the device for the person to see."""
        from hwilib.commands import displayaddress, getxpub
        from hwilib.common import AddressType
        from hwilib.errors import BadArgumentError
        from hwilib.key import ExtendedKey

        try:
            fingerprint = self.fingerprint()
            xpub = getxpub(self._client, path)["xpub"]
        except _errors() as exc:
            raise _device_error(exc, "enrolling") from exc
        try:  # the person confirms the address: as long as signing may wait, not for ever
            self._with_timeout(
                lambda: displayaddress(self._client, path=path, addr_type=AddressType.LEGACY), "enrolling"
            )
        except DeviceError as exc:
            if not isinstance(exc.__cause__, BadArgumentError):
                raise
            # HWI's Trezor client reports every failed display (a "no" on the device, a lost
            # link) as "No path supplied matched device keys", though that key was just read.
            # Still answering (else this raises device_unavailable)? Then the person said no.
            # Reading a key needs no person: a device that does not answer at once is gone (a
            # UDP emulator link has no error to give, so HWI would wait for ever).
            self._with_timeout(
                lambda: getxpub(self._client, path),
                "enrolling",
                limit=_PROBE_SECONDS,
                silence=Reason.DEVICE_UNAVAILABLE,
            )
            raise DeviceError(
                "enrolling: the address was rejected on the device", reason=Reason.DEVICE_REJECTED
            ) from exc.__cause__
        pubkey = ExtendedKey.deserialize(xpub).pubkey.hex()
        return Enrollment(
            fingerprint=str(fingerprint),
            path=path,
            pubkey=pubkey,
            device_type=self.info.device_type,
            model=self.info.model,
        )

    def sign_message(self, message: str, path: str) -> str:
        from hwilib.commands import signmessage

        return str(
            self._with_timeout(lambda: signmessage(self._client, message, path), "signing")["signature"]
        )

    def _with_timeout(
        self,
        call: Callable[[], T],
        action: str,
        *,
        limit: float | None = None,
        silence: Reason = Reason.DEVICE_TIMEOUT,
    ) -> T:
        """HWI waits for the person without a deadline; give up after ``self.timeout`` (or
        ``limit``), with the reason ``silence``."""
        limit = self.timeout if limit is None else limit
        outcome: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                outcome.append(call())
            except BaseException as exc:  # re-raised on the caller's thread
                failure.append(exc)

        worker = threading.Thread(target=run, name="hwi-call", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            self.close()  # abandons the request; the device may still show it until cancelled
            raise DeviceError(f"{action}: no answer from the device within {limit:.0f}s", reason=silence)
        if failure:
            if isinstance(failure[0], _errors()):
                raise _device_error(failure[0], action) from failure[0]
            raise failure[0]
        return outcome[0]

    def close(self) -> None:
        try:
            self._client.close()
        except _errors():
            pass  # already gone: nothing to release
