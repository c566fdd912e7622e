"""BlueZ through bleak: passive scanning by default, a watchdog, adapter power-cycling.

Passive scanning registers a BlueZ AdvertisementMonitor whose or-patterns select the adverts
the gateway needs (Bluezone manufacturer data and service, EN service data, Apple, and the
phone-like senders counted for adoption); the radio never sends scan requests. Active
scanning (``ble.scanning_mode: active``) sees every device.

Scanners die silently in the field (BlueZ "Operation already in progress", stuck UART
controllers): when no advert arrives for ``ble.watchdog_s`` the scanner is restarted, and
after ``ble.watchdog_restarts_before_reset`` fruitless restarts the adapter is power-cycled
through its D-Bus ``Powered`` property.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ble.config import BleConfig
from ble.decoders import BLUEZONE_IOS_SERVICE_WIRE, ad_from_parts
from ble.ios import IosResolver
from ble.sources.base import QueueSource, ScannerStartError
from core.clock import Clock

if TYPE_CHECKING:
    from bleak import BleakScanner
    from bleak.args.bluez import OrPattern
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

log = logging.getLogger(__name__)

_ADDR_CACHE_MAX = 4096
_BLEAK_NO_RSSI = -127  # bleak's value when BlueZ gave no RSSI


def passive_patterns() -> list[OrPattern]:
    """Or-patterns of the passive monitor: what the gateway must hear."""
    from bleak.args.bluez import OrPattern
    from bleak.assigned_numbers import AdvertisementDataType as T

    mfr, sd16 = T.MANUFACTURER_SPECIFIC_DATA, T.SERVICE_DATA_UUID16
    uuid16, uuid128 = T.COMPLETE_LIST_SERVICE_UUID16, T.COMPLETE_LIST_SERVICE_UUID128
    return [
        OrPattern(0, mfr, b"\xb5\x22"),  # Bluezone Android: company 0x22B5
        OrPattern(0, uuid16, b"\x56\x4e"),  # Bluezone service 0x4E56
        OrPattern(0, sd16, b"\x6f\xfd"),  # Exposure Notification 0xFD6F
        OrPattern(0, mfr, b"\x4c\x00"),  # Apple: overflow area (iOS Bluezone), iPhones
        OrPattern(0, uuid128, BLUEZONE_IOS_SERVICE_WIRE),  # iOS Bluezone in the foreground
        OrPattern(0, mfr, b"\xe0\x00"),  # Google  } phone-like senders, for adoption
        OrPattern(0, mfr, b"\x75\x00"),  # Samsung }
        OrPattern(0, mfr, b"\x06\x00"),  # Microsoft
    ]


class BleakSource(QueueSource):
    """Adverts from BlueZ via bleak.

    Args:
        cfg: the ``ble`` section (adapter, scanning mode, watchdog).
        clock: stamps each advert on arrival.
        resolver: attaches GATT-read IDs to iOS Bluezone adverts (optional).
        queue_size: bound of the advert queue.
        start_timeout_s: per attempt to start scanning.
        start_attempts: attempts before giving up with :class:`ScannerStartError`.
        reset_pause_s: how long the adapter stays powered off during a reset.
    """

    def __init__(self, cfg: BleConfig, clock: Clock, *, resolver: IosResolver | None = None,
                 queue_size: int = 4096, start_timeout_s: float = 10.0,
                 start_attempts: int = 3, reset_pause_s: float = 1.0) -> None:
        super().__init__(queue_size)
        self._cfg = cfg
        self._clock = clock
        self._resolver = resolver
        self._start_timeout = start_timeout_s
        self._attempts = max(1, start_attempts)
        self._reset_pause = reset_pause_s
        self._scanner: BleakScanner | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_rx = 0.0  # loop time of the last advert
        self._started_at = 0.0  # loop time of the last (re)start
        self._last: dict[str, tuple[Any, Any, Any, Any, bytes]] = {}
        self.restarts = 0
        self.resets = 0
        self.errors = 0

    # -- radio ----------------------------------------------------------------------------

    def _make_scanner(self) -> BleakScanner:
        from bleak import BleakScanner
        from bleak.args.bluez import BlueZScannerArgs

        bluez: BlueZScannerArgs = {}
        if self._cfg.adapter:
            bluez["adapter"] = self._cfg.adapter
        if self._cfg.scanning_mode == "passive":
            bluez["or_patterns"] = list(passive_patterns())
        return BleakScanner(detection_callback=self._on_advert,
                            scanning_mode=self._cfg.scanning_mode, bluez=bluez)

    async def _start_scanner(self) -> None:
        from bleak.exc import BleakError
        from dbus_fast import DBusError

        last: BaseException | None = None
        for attempt in range(1, self._attempts + 1):
            scanner = self._make_scanner()
            try:
                async with asyncio.timeout(self._start_timeout):
                    await scanner.start()
            except (BleakError, DBusError, OSError, TimeoutError, EOFError) as err:
                last = err
                self.errors += 1
                log.warning("starting the BLE scanner failed (attempt %d/%d): %s", attempt,
                            self._attempts, err or type(err).__name__)
                if attempt < self._attempts:
                    await asyncio.sleep(min(0.5 * attempt, 5.0))
                continue
            self._scanner = scanner
            self._started_at = asyncio.get_running_loop().time()
            return
        raise ScannerStartError(
            f"the BLE scanner did not start on {self._cfg.adapter or 'the default adapter'} "
            f"({type(last).__name__}: {last})", _advice(last)) from last

    async def _stop_scanner(self) -> None:
        from bleak.exc import BleakError
        from dbus_fast import DBusError

        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with asyncio.timeout(self._start_timeout):
                await scanner.stop()
        except (BleakError, DBusError, OSError, TimeoutError, EOFError) as err:
            self.errors += 1
            log.warning("stopping the BLE scanner failed: %s", err or type(err).__name__)

    async def start(self) -> None:
        """Start scanning (bounded retries) and the watchdog.

        Raises:
            ScannerStartError: the adapter is missing, off, or BlueZ is not running.
        """
        if self._started:
            return
        self._started = True
        await self._start_scanner()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        base = self._cfg.watchdog_s
        tick = min(1.0, base / 4)
        fruitless = resets = 0
        while not self._closed:
            await asyncio.sleep(tick)
            if self._last_rx > self._started_at:
                fruitless = resets = 0  # adverts arrived since the last (re)start
            quiet_s = quiet_threshold(base, resets)
            if loop.time() - max(self._last_rx, self._started_at) < quiet_s:
                continue
            if fruitless >= self._cfg.watchdog_restarts_before_reset:
                log.warning("no advert for %.1f s after %d scanner restarts: power-cycling "
                            "the adapter", quiet_s, fruitless)
                await self._stop_scanner()
                await self.reset_adapter()
                fruitless = 0
                resets += 1
            else:
                log.warning("no advert for %.1f s: restarting the scanner", quiet_s)
                await self._stop_scanner()
                fruitless += 1
            self.restarts += 1
            try:
                await self._start_scanner()
            except ScannerStartError as err:
                log.warning("%s", err)  # keep trying: the next quiet period escalates
            self._started_at = loop.time()

    async def adapter_path(self) -> str:
        """D-Bus path of the adapter in use."""
        if self._cfg.adapter:
            return f"/org/bluez/{self._cfg.adapter}"
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        manager = await get_global_bluez_manager()
        return manager.get_default_adapter()

    async def reset_adapter(self) -> None:
        """Power the adapter off and on again through its D-Bus ``Powered`` property."""
        from bleak.exc import BleakError
        from dbus_fast import BusType, DBusError, Message, MessageType, Variant
        from dbus_fast.aio import MessageBus

        self.resets += 1
        try:
            path = await self.adapter_path()
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (BleakError, DBusError, OSError, EOFError) as err:
            self.errors += 1
            log.warning("adapter reset impossible: %s", err or type(err).__name__)
            return
        try:
            for powered in (False, True):
                reply = await bus.call(Message(
                    destination="org.bluez", path=path,
                    interface="org.freedesktop.DBus.Properties", member="Set",
                    signature="ssv", body=["org.bluez.Adapter1", "Powered",
                                           Variant("b", powered)]))
                if reply is None or reply.message_type == MessageType.ERROR:
                    self.errors += 1
                    log.warning("setting Powered=%s on %s failed: %s", powered, path,
                                reply.body if reply is not None else "no reply")
                    return
                if not powered:
                    await asyncio.sleep(self._reset_pause)
        finally:
            bus.disconnect()

    # -- adverts --------------------------------------------------------------------------

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        address = device.address
        mfr, sd, uuids, tx = adv.manufacturer_data, adv.service_data, adv.service_uuids, \
            adv.tx_power
        prev = self._last.get(address)
        if prev is not None and prev[0] == mfr and prev[1] == sd and prev[2] == uuids \
                and prev[3] == tx:
            data = prev[4]  # BlueZ repeats the cached properties with each RSSI update
        else:
            data = ad_from_parts(mfr, sd, uuids, tx)
            if len(self._last) >= _ADDR_CACHE_MAX:
                self._last.pop(next(iter(self._last)))
            self._last[address] = (mfr, sd, uuids, tx, data)
        details = device.details if isinstance(device.details, dict) else {}
        props = details.get("props") or {}
        atype = 1 if props.get("AddressType") == "random" else 0
        rssi = adv.rssi if adv.rssi != _BLEAK_NO_RSSI else None
        # raw bytes, like every other source: repeats then cost one dict lookup downstream
        self._put((self._clock.now(), address, atype, rssi, data))

    async def close(self) -> None:
        """Stop the watchdog, the scanner and any GATT read."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._stop_scanner()
        if self._resolver is not None:
            await self._resolver.close()
        self._last.clear()
        await super().close()

    def diagnostics(self) -> dict[str, object]:
        """Queue counters plus restarts, resets and errors."""
        out = super().diagnostics()
        out.update(backend="bleak", scanning=self._scanner is not None,
                   restarts=self.restarts, resets=self.resets, errors=self.errors)
        if self._resolver is not None:
            out["gatt"] = asdict(self._resolver.stats)
        return out


def quiet_threshold(watchdog_s: float, resets: int) -> float:
    """Silence that triggers the watchdog after ``resets`` fruitless adapter resets.

    It doubles with every reset that brought nothing back (up to 32×): a venue can be truly
    empty at night, and power-cycling a healthy radio every few minutes helps no one.
    """
    return watchdog_s * 2 ** min(resets, 5)


def _advice(err: BaseException | None) -> str:
    """One line telling the operator what to do about a scanner that will not start."""
    text = f"{type(err).__name__} {err}" if err is not None else ""
    if "ServiceUnknown" in text or ("org.bluez" in text and "not" in text):
        return "BlueZ is not running: start bluetoothd (systemctl start bluetooth)"
    if "POWERED_OFF" in text or "powered off" in text.lower():
        return "the adapter is powered off: run 'bluetoothctl power on' or check rfkill"
    if "passive scanning" in text:
        return ("passive scanning needs BlueZ >= 5.56 with --experimental and Linux >= 5.10;"
                " set ble.scanning_mode: active or upgrade")
    if "No such file" in text or isinstance(err, FileNotFoundError):
        return "no system D-Bus: is dbus running and the gateway allowed to use it?"
    if "adapter" in text.lower() and "not found" in text.lower():
        return "the configured adapter does not exist: check ble.adapter (hciconfig -a)"
    return "check that the Bluetooth adapter is present and not used by another program"
