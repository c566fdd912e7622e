"""An iBeacon sent through BlueZ, so sleeping iOS Bluezone apps wake up and advertise.

Bluezone's Android app sent an iBeacon that iOS Bluezone apps monitor as a region: entering
the region wakes the app for a few seconds, long enough to advertise its ID. A gateway can do
the same. bleak has no peripheral role, so this talks to bluetoothd directly with dbus-fast
(the D-Bus library bleak already uses): it exports an ``org.bluez.LEAdvertisement1`` object
and registers it with the adapter's ``org.bluez.LEAdvertisingManager1``.

The beacon is rate-limited: it is registered for ``on_s`` seconds once every ``every_s``
(at least 30 s apart), at an advertising interval of at least 100 ms. iOS reports a region
entry only after the beacon has been silent for a while, so the quiet gap is what lets a
phone that stays be woken again later.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method

from ble.config import BeaconConfig
from core.errors import BzgwError

log = logging.getLogger(__name__)

APPLE = 0x004C
BLUEZ = "org.bluez"
MANAGER_IFACE = "org.bluez.LEAdvertisingManager1"
ADVERT_IFACE = "org.bluez.LEAdvertisement1"
ADVERT_PATH = "/org/bzgw/beacon0"


def ibeacon_payload(cfg: BeaconConfig) -> bytes:
    """Apple manufacturer data of an iBeacon: ``02 15`` UUID major minor power (23 bytes)."""
    return (b"\x02\x15" + uuidlib.UUID(cfg.uuid).bytes + cfg.major.to_bytes(2, "big")
            + cfg.minor.to_bytes(2, "big") + (cfg.measured_power & 0xFF).to_bytes(1, "big"))


class Advertisement(ServiceInterface):
    """The ``LEAdvertisement1`` object bluetoothd reads when the beacon is registered."""

    def __init__(self, cfg: BeaconConfig) -> None:
        super().__init__(ADVERT_IFACE)
        self._payload = ibeacon_payload(cfg)
        self._interval = cfg.interval_ms
        self.released = asyncio.Event()

    @method()
    def Release(self):  # type: ignore[no-untyped-def]  # no annotation: an empty D-Bus reply
        """bluetoothd dropped the advertisement (adapter off, bluetoothd restart)."""
        self.released.set()

    @dbus_property(access=PropertyAccess.READ)
    def Type(self) -> "s":  # type: ignore[name-defined]  # noqa: F821, UP037
        # Not connectable: a beacon only has to be heard.
        return "broadcast"

    @dbus_property(access=PropertyAccess.READ)
    def ManufacturerData(self) -> "a{qv}":  # type: ignore[valid-type]  # noqa: F722
        return {APPLE: Variant("ay", self._payload)}

    @dbus_property(access=PropertyAccess.READ)
    def MinInterval(self) -> "u":  # type: ignore[name-defined]  # noqa: F821, UP037
        return self._interval

    @dbus_property(access=PropertyAccess.READ)
    def MaxInterval(self) -> "u":  # type: ignore[name-defined]  # noqa: F821, UP037
        return self._interval


@dataclass
class BeaconStats:
    """What the beacon has done (status page, tests)."""

    bursts: int = 0
    failures: int = 0
    last_burst_at: float | None = None
    last_error: str = ""
    on_s_total: float = field(default=0.0)


Sleep = Callable[[float], Awaitable[None]]


class Beacon:
    """Registers the iBeacon in bursts until stopped.

    Args:
        cfg: the ``ble.beacon`` section.
        adapter: adapter name when ``cfg.adapter`` is unset (e.g. ``ble.adapter``).
        bus_address: D-Bus address (default: the system bus).
        sleep: waits between state changes (tests pass their own; no wall-clock asserts).
    """

    def __init__(self, cfg: BeaconConfig, *, adapter: str | None = None,
                 bus_address: str | None = None, sleep: Sleep | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.adapter = cfg.adapter or adapter or "hci0"
        self.adapter_path = f"/org/bluez/{self.adapter}"
        self.bus_address = bus_address
        self.sleep: Sleep = sleep or asyncio.sleep
        self.clock = clock
        self.stats = BeaconStats()
        self.advert = Advertisement(cfg)
        self.bus: MessageBus | None = None

    async def open(self) -> None:
        """Connect to D-Bus and export the advertisement object.

        Raises:
            BzgwError: no D-Bus, or the adapter has no LEAdvertisingManager1.
        """
        try:
            bus = (MessageBus(bus_address=self.bus_address) if self.bus_address
                   else MessageBus(bus_type=BusType.SYSTEM))
            self.bus = await bus.connect()
        except (OSError, DBusError) as err:
            raise BzgwError(f"beacon: cannot reach D-Bus: {err}") from err
        try:
            intro = await self.bus.introspect(BLUEZ, self.adapter_path)
        except DBusError as err:
            await self.close()
            raise BzgwError(f"beacon: no adapter {self.adapter} in BlueZ: {err.text}") from err
        names = {i.name for i in intro.interfaces}
        if "org.bluez.Adapter1" not in names:
            await self.close()
            raise BzgwError(f"beacon: no adapter {self.adapter} in BlueZ (is it plugged in? "
                            "see `bluetoothctl list`)")
        if MANAGER_IFACE not in names:
            await self.close()
            raise BzgwError(f"beacon: adapter {self.adapter} cannot advertise "
                            f"(no {MANAGER_IFACE}; BlueZ 5.48 or newer with LE is needed)")
        self.bus.export(ADVERT_PATH, self.advert)

    async def _manager(self) -> object:
        assert self.bus is not None
        intro = await self.bus.introspect(BLUEZ, self.adapter_path)
        obj = self.bus.get_proxy_object(BLUEZ, self.adapter_path, intro)
        return obj.get_interface(MANAGER_IFACE)

    async def burst(self) -> bool:
        """Advertise for ``on_s``; False (logged, counted) when BlueZ refused."""
        mgr = await self._manager()
        try:
            await mgr.call_register_advertisement(ADVERT_PATH, {})  # type: ignore[attr-defined]
        except DBusError as err:
            self.stats.failures += 1
            self.stats.last_error = f"{err.type}: {err.text}"
            log.warning("beacon: BlueZ refused the advertisement: %s", self.stats.last_error)
            return False
        self.stats.bursts += 1
        self.stats.last_burst_at = self.clock()
        try:
            await self.sleep(self.cfg.on_s)
            self.stats.on_s_total += self.cfg.on_s
        finally:
            try:
                await mgr.call_unregister_advertisement(ADVERT_PATH)  # type: ignore[attr-defined]
            except DBusError as err:  # released meanwhile (adapter off): nothing to undo
                log.info("beacon: unregister: %s", err.text)
        return True

    async def run(self, stop: asyncio.Event, *, bursts: int | None = None) -> None:
        """Burst every ``every_s`` until ``stop`` is set (or ``bursts`` were tried)."""
        n = 0
        while not stop.is_set() and (bursts is None or n < bursts):
            await self.burst()
            n += 1
            if bursts is not None and n >= bursts:
                break
            wait = asyncio.ensure_future(self.sleep(self.cfg.every_s - self.cfg.on_s))
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({wait, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (wait, stopped):
                    t.cancel()

    async def close(self) -> None:
        """Leave D-Bus (bluetoothd forgets an advertisement whose owner left)."""
        if self.bus is not None:
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()
            self.bus = None
