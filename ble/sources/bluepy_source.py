"""bluepy backend for hosts where it is preferred (it talks to the kernel management socket
through its ``bluepy-helper``, not to BlueZ over D-Bus).

bluepy is blocking, so its scanner runs in one worker thread; adverts cross into the event
loop with ``call_soon_threadsafe`` and land in the bounded queue like every radio source.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ble.config import BleConfig
from ble.ios import IosResolver
from ble.sources.base import QueueSource, ScannerStartError, SourceError
from core.clock import Clock
from core.errors import DependencyMissingError

log = logging.getLogger(__name__)

_ADDR_TYPES = {"public": 0, "random": 1}


def _iface(adapter: str | None) -> int:
    if not adapter:
        return 0
    if adapter.startswith("hci") and adapter[3:].isdigit():
        return int(adapter[3:])
    raise ScannerStartError(f"bluepy needs an adapter named hciN, not {adapter!r}",
                            "set ble.adapter to e.g. hci0")


class BluepySource(QueueSource):
    """Adverts from bluepy's ``Scanner``.

    Args:
        cfg: the ``ble`` section (adapter, scanning mode).
        clock: stamps each advert on arrival.
        resolver: attaches GATT-read IDs to iOS Bluezone adverts (optional).
        queue_size: bound of the advert queue.
        process_s: how long one ``Scanner.process`` call blocks (stop latency).
    """

    def __init__(self, cfg: BleConfig, clock: Clock, *, resolver: IosResolver | None = None,
                 queue_size: int = 4096, process_s: float = 0.25) -> None:
        super().__init__(queue_size)
        self._cfg = cfg
        self._clock = clock
        self._resolver = resolver
        self._process_s = process_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._iface = _iface(cfg.adapter)

    async def start(self) -> None:
        """Start the bluepy scanner in its thread.

        Raises:
            DependencyMissingError: bluepy is not installed.
            ScannerStartError: the kernel management interface refused (no adapter,
                no permission).
        """
        if self._started:
            return
        self._started = True
        try:
            import bluepy.btle  # noqa: F401  (fail here, clearly, not in the thread)
        except ImportError as err:
            raise DependencyMissingError("bluepy", "pip install 'bzgw[bluepy]' (needs "
                                         "libglib2.0-dev to build)") from err
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop, ready),
                                        name="bluepy-scan", daemon=True)
        self._thread.start()
        await ready

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        from bluepy.btle import BTLEException, BTLEManagementError, DefaultDelegate, Scanner

        source = self

        class Delegate(DefaultDelegate):
            def handleDiscovery(self, dev: Any, is_new_dev: bool, is_new_data: bool) -> None:
                source._on_entry(loop, dev)

        scanner = Scanner(self._iface).withDelegate(Delegate())
        try:
            scanner.start(passive=self._cfg.scanning_mode == "passive")
        except BTLEManagementError as err:
            loop.call_soon_threadsafe(_settle, ready, ScannerStartError(
                f"bluepy could not start scanning on hci{self._iface} ({err})",
                "no Bluetooth management interface: check the adapter (hciconfig), run as "
                "root or give bluepy-helper CAP_NET_ADMIN,CAP_NET_RAW (setcap)"))
            return
        except BTLEException as err:
            loop.call_soon_threadsafe(_settle, ready, ScannerStartError(
                f"bluepy could not start scanning on hci{self._iface} ({err})",
                "check the adapter and that bluepy-helper is installed and executable"))
            return
        loop.call_soon_threadsafe(_settle, ready, None)
        try:
            while not self._stop.is_set():
                scanner.process(self._process_s)
        except BTLEException as err:
            if not self._stop.is_set():
                loop.call_soon_threadsafe(self._fail, SourceError(
                    f"bluepy scanning stopped ({err})", "the adapter went away; the gateway "
                    "service restarts it"))
        finally:
            try:
                scanner.stop()
            except (BTLEException, OSError) as err:  # helper already gone: nothing to stop
                log.debug("bluepy stop: %s", err)

    def _on_entry(self, loop: asyncio.AbstractEventLoop, dev: Any) -> None:
        """Runs in the scanner thread: decode, then hand over to the loop."""
        raw = dev.rawData
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else b""
        atype = _ADDR_TYPES.get(dev.addrType, 1)
        # raw, undecoded: the consumer decodes only payloads it has not seen yet
        loop.call_soon_threadsafe(self._put, (self._clock.now(), str(dev.addr).upper(),
                                              atype, dev.rssi, data))

    async def close(self) -> None:
        """Stop the scanner thread (within one ``process_s``)."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        if self._resolver is not None:
            await self._resolver.close()
        await super().close()

    def diagnostics(self) -> dict[str, object]:
        """Queue counters."""
        out = super().diagnostics()
        out["backend"] = "bluepy"
        return out


def _settle(fut: asyncio.Future[None], err: BaseException | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)
