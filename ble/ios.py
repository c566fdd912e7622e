"""iOS Bluezone IDs: optional, rate-limited GATT reads and a MAC → ID cache.

An iPhone's Bluezone ID is never in its advert; a central must connect and read
characteristic ``00004E56-73F5-4BC4-A12F-17D1AD07A689`` (12 bytes). Connections are slow and
intrusive, so reads are optional (``ble.ios_gatt_read``), rate-limited
(``ble.gatt_reads_per_minute``) and one at a time. As Bluezone's own Android code does, an ID
read from an address is reused for later adverts of that address until the 15-minute ID slot
changes. The cache lives in memory only and is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from ble.decoders import BLUEZONE_ID_LEN, BLUEZONE_IOS_CHARACTERISTIC
from ble.ids import BLUEZONE_SLOT_S
from ble.records import Advert
from contract.records import IdKind

log = logging.getLogger(__name__)

_CACHE_MAX = 4096


class GattReader(Protocol):
    """Reads the Bluezone ID characteristic of one device."""

    async def read_id(self, address: str, address_type: int) -> bytes | None:
        """The 12-byte ID, or ``None`` when the device does not answer with one."""
        ...


class BleakGattReader:
    """Reads the ID with bleak's ``BleakClient`` (BlueZ).

    The device is addressed by its BlueZ object path (adapter path + ``dev_AA_BB_...``), which
    the scanner has just created, so bleak does not start a second discovery to find it.
    """

    def __init__(self, *, adapter: str | None = None, timeout_s: float = 10.0) -> None:
        self._adapter = adapter
        self._timeout = timeout_s

    async def _device_path(self, address: str) -> str:
        if self._adapter:
            base = f"/org/bluez/{self._adapter}"
        else:
            from bleak.backends.bluezdbus.manager import get_global_bluez_manager

            base = (await get_global_bluez_manager()).get_default_adapter()
        return f"{base}/dev_{address.replace(':', '_').upper()}"

    async def read_id(self, address: str, address_type: int) -> bytes | None:
        """Connect, read the characteristic, disconnect; ``None`` on any BLE failure."""
        from bleak import BleakClient
        from bleak.backends.device import BLEDevice
        from bleak.exc import BleakError
        from dbus_fast import DBusError

        try:
            device = BLEDevice(address, None, {"path": await self._device_path(address),
                                               "props": {}})
            async with BleakClient(device, timeout=self._timeout) as client:
                value = await client.read_gatt_char(BLUEZONE_IOS_CHARACTERISTIC)
        except (BleakError, DBusError, TimeoutError, OSError, EOFError) as err:
            log.debug("GATT read failed: %s", type(err).__name__)
            return None
        return bytes(value)


@dataclass(slots=True)
class ResolverStats:
    """Counters of the resolver."""

    reads: int = 0  # GATT reads started
    ok: int = 0  # reads that returned a 12-byte ID
    failed: int = 0  # reads that returned nothing usable
    rate_limited: int = 0  # adverts that wanted a read but the budget was spent
    cache_hits: int = 0


class IosResolver:
    """Attaches IDs to iOS Bluezone adverts, reading them over GATT when allowed.

    Args:
        reader: what performs a read (``BleakGattReader`` live, the simulator's, a fake).
        reads_per_minute: the read budget (token bucket, burst of one minute's budget).
        slot_s: Bluezone ID lifetime; a cached ID is valid until its slot ends.
    """

    def __init__(self, reader: GattReader, *, reads_per_minute: int = 6,
                 slot_s: int = BLUEZONE_SLOT_S) -> None:
        self._reader = reader
        self._rate = reads_per_minute / 60.0
        self._burst = float(max(1, reads_per_minute))
        self._tokens = self._burst
        self._t_tokens: float | None = None
        self._slot_s = slot_s
        self._cache: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # addr → (slot, id)
        self._task: asyncio.Task[None] | None = None
        self._pending: str | None = None
        self.stats = ResolverStats()

    def cached(self, address: str, ts: float) -> bytes | None:
        """The ID read from ``address`` during the slot of ``ts``, if any."""
        hit = self._cache.get(address)
        if hit is not None and hit[0] == int(ts // self._slot_s):
            self.stats.cache_hits += 1
            return hit[1]
        return None

    def resolve(self, advert: Advert) -> Advert:
        """``advert`` with its ID when known; may start a background read for next time.

        Only ``BLUEZONE_IOS`` adverts without an ID are touched; the read result serves the
        following adverts of that address (the current one is counted without ID).
        """
        if advert.kind is not IdKind.BLUEZONE_IOS or advert.ident is not None:
            return advert
        ident = self.resolve_raw(advert.ts, advert.address, advert.address_type)
        if ident is not None:
            return Advert(advert.ts, advert.address, advert.address_type, advert.rssi,
                          advert.kind, ident, None, advert.tx_power)
        return advert

    def resolve_raw(self, ts: float, address: str, address_type: int) -> bytes | None:
        """The ID of the iOS Bluezone phone at ``address`` when known, else ``None`` (and
        maybe a background read for next time): the aggregator's ``resolve`` hook."""
        ident = self.cached(address, ts)
        if ident is None:
            self._maybe_read(ts, address, address_type)
        return ident

    def _maybe_read(self, now: float, address: str, address_type: int) -> None:
        if self._task is not None and not self._task.done():
            return  # one connection at a time
        if self._t_tokens is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._t_tokens) * self._rate)
        self._t_tokens = now
        if self._tokens < 1.0:
            self.stats.rate_limited += 1
            return
        self._tokens -= 1.0
        self.stats.reads += 1
        slot = int(now // self._slot_s)
        self._task = asyncio.get_running_loop().create_task(
            self._read(address, address_type, slot))

    async def _read(self, address: str, address_type: int, slot: int) -> None:
        try:
            value = await self._reader.read_id(address, address_type)
        except (OSError, TimeoutError, ValueError) as err:  # a reader should not raise; count
            log.debug("GATT reader raised %s", type(err).__name__)
            value = None
        if value is None or len(value) != BLUEZONE_ID_LEN:
            self.stats.failed += 1
            return
        self.stats.ok += 1
        self._cache[address] = (slot, bytes(value))
        self._cache.move_to_end(address)
        while len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)

    async def drain(self) -> None:
        """Wait for a read in flight (tests, shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Cancel a read in flight and forget every cached ID."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._cache.clear()
