"""The bleak source against BlueZ mocked on a private D-Bus: bleak's real code path runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from ble_fakebluez import (  # noqa: F401  (fixtures: dbus_system, fake_bluez)
    FakeBlueZ,
    dbus,
    dbus_system_fixture,
    fake_bluez_fixture,
)

from ble.config import BleConfig
from ble.ios import IosResolver
from ble.records import Advert
from ble.sources import ScannerStartError, open_source
from ble.sources.bleak_source import BleakSource
from contract.records import IdKind
from core.clock import SystemClock

EXP = "0000fd6f-0000-1000-8000-00805f9b34fb"
BZ_SERVICE = "00004e56-0000-1000-8000-00805f9b34fb"
BZ_ID = bytes.fromhex("b9a665d754fe65e665d76a45")  # a real Bluezone ID (slot 23, 2020-08-08)
RPI_AEM = bytes(range(16)) + b"\x40\x00\x00\x00"
OVERFLOW = b"\x01\x08" + bytes(15)  # Apple overflow area, Bluezone bit 0x08 of byte 0


async def _take(src: BleakSource, n: int, timeout: float = 5.0) -> list[Advert]:
    got: list[Advert] = []
    async with asyncio.timeout(timeout):
        async for adv in src:
            got.append(adv)
            if len(got) == n:
                break
    return got


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 (polls counters owned by the code under test)
            await asyncio.sleep(0.02)


def _run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro())


def test_passive_scan_registers_tracing_patterns_and_decodes(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    cfg = BleConfig(source="bleak")  # passive is the default
    src = open_source(cfg, SystemClock())
    assert isinstance(src, BleakSource)

    async def scenario() -> tuple[list[Advert], list[Any]]:
        await src.start()
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        manager = await get_global_bluez_manager()
        unique = manager._bus.unique_name  # type: ignore[union-attr]
        monitor = fake_bluez.calls("RegisterMonitor")[0][0]

        def read_patterns() -> list[Any]:
            obj = fake_bluez.conn.get_object(unique, monitor, introspect=False)
            props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
            return list(props.Get("org.bluez.AdvertisementMonitor1", "Patterns"))

        patterns = await asyncio.to_thread(read_patterns)

        def script() -> None:
            fake_bluez.advertise("C0:00:00:00:00:01", -61, manufacturer_data={0x22B5: BZ_ID},
                                 uuids=[BZ_SERVICE])
            fake_bluez.advertise("C0:00:00:00:00:02", -70, service_data={EXP: RPI_AEM})
            fake_bluez.advertise("C0:00:00:00:00:03", -75,
                                 manufacturer_data={0x004C: OVERFLOW}, uuids=[])
            fake_bluez.advertise("C0:00:00:00:00:01", -58, manufacturer_data={0x22B5: BZ_ID},
                                 uuids=[BZ_SERVICE])

        await asyncio.to_thread(script)
        got = await _take(src, 4)
        await src.close()
        return got, patterns

    got, patterns = _run(scenario)
    assert fake_bluez.calls("UnregisterMonitor"), "passive scan must unregister on close"
    assert fake_bluez.calls("StartDiscovery") == []  # passive: no discovery, no scan requests
    pats = {(int(p[0]), int(p[1]), bytes(p[2])) for p in patterns}
    assert (0, 0xFF, b"\xb5\x22") in pats  # Bluezone manufacturer 0x22B5
    assert (0, 0x16, b"\x6f\xfd") in pats  # EN service data 0xFD6F
    assert (0, 0x03, b"\x56\x4e") in pats  # Bluezone service 0x4E56
    assert (0, 0xFF, b"\x4c\x00") in pats  # Apple 0x004C
    by_addr = [(a.address, a.kind, a.ident, a.rssi, a.address_type) for a in got]
    assert by_addr == [
        ("C0:00:00:00:00:01", IdKind.BLUEZONE, BZ_ID, -61, 1),
        ("C0:00:00:00:00:02", IdKind.GAEN, bytes(range(16)), -70, 1),
        ("C0:00:00:00:00:03", IdKind.BLUEZONE_IOS, None, -75, 1),
        ("C0:00:00:00:00:01", IdKind.BLUEZONE, BZ_ID, -58, 1),
    ]
    assert got[1].aem == b"\x40\x00\x00\x00"


def test_active_scan_uses_discovery_on_the_chosen_adapter(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    fake_bluez.add_adapter("hci1")
    cfg = BleConfig(source="bleak", scanning_mode="active", adapter="hci1")
    src = open_source(cfg, SystemClock())

    async def scenario() -> list[Advert]:
        await src.start()
        await asyncio.to_thread(fake_bluez.advertise, "D0:00:00:00:00:07", -66,
                                adapter="hci1", service_data={EXP: RPI_AEM},
                                address_type="public")
        got = await _take(src, 1)
        await src.close()
        return got

    got = _run(scenario)
    assert fake_bluez.calls("StartDiscovery", "hci1") == [[]]
    assert fake_bluez.calls("StopDiscovery", "hci1") == [[]]
    assert fake_bluez.calls("StartDiscovery", "hci0") == []
    flt = fake_bluez.calls("SetDiscoveryFilter", "hci1")[0][0]
    assert flt["Transport"] == "le"
    assert [(a.kind, a.address_type, a.rssi) for a in got] == [(IdKind.GAEN, 0, -66)]


def test_watchdog_restarts_then_power_cycles_the_adapter(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    cfg = BleConfig(source="bleak", watchdog_s=0.3, watchdog_restarts_before_reset=1)
    src = BleakSource(cfg, SystemClock(), reset_pause_s=0.05)

    async def scenario() -> list[Advert]:
        await src.start()
        await _until(lambda: src.resets >= 1 and src.restarts >= 2, timeout=10)
        # After the reset the scanner is back: adverts flow again.
        await asyncio.to_thread(fake_bluez.advertise, "C0:00:00:00:00:09", -50,
                                manufacturer_data={0x22B5: BZ_ID}, uuids=[BZ_SERVICE])
        got = await _take(src, 1)
        await src.close()
        return got

    got = _run(scenario)
    assert got[0].ident == BZ_ID
    log = fake_bluez.log()
    off = log.find("org.bluez.Adapter1.Powered False")
    on = log.find("org.bluez.Adapter1.Powered True", off)
    assert 0 <= off < on, "the adapter must be powered off, then on"
    assert len(fake_bluez.calls("RegisterMonitor")) >= 3  # start + restart + after reset
    assert fake_bluez.powered()
    diag = src.diagnostics()
    assert diag["resets"] == 1 and diag["restarts"] >= 2


def test_watchdog_stays_quiet_while_adverts_flow(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    cfg = BleConfig(source="bleak", watchdog_s=1.0)
    src = BleakSource(cfg, SystemClock(), reset_pause_s=0.05)

    async def scenario() -> int:
        await src.start()
        for i in range(8):
            await asyncio.to_thread(fake_bluez.advertise, "C0:00:00:00:00:0A", -60 - i,
                                    manufacturer_data={0x22B5: BZ_ID}, uuids=[BZ_SERVICE])
            await asyncio.sleep(0.1)
        got = await _take(src, 8)
        await src.close()
        return len(got)

    assert _run(scenario) == 8
    assert src.restarts == 0 and src.resets == 0
    assert len(fake_bluez.calls("RegisterMonitor")) == 1


def test_powered_off_adapter_is_a_clear_error(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    fake_bluez.set_powered(False)
    src = BleakSource(BleConfig(source="bleak"), SystemClock(), start_attempts=1)

    async def scenario() -> None:
        try:
            await src.start()
        finally:
            await src.close()

    with pytest.raises(ScannerStartError) as err:
        _run(scenario)
    assert "powered off" in str(err.value)
    assert "bluetoothctl power on" in err.value.fix


def test_no_bluetoothd_is_a_clear_error(dbus_system: Any) -> None:
    src = BleakSource(BleConfig(source="bleak"), SystemClock(), start_attempts=2)

    async def scenario() -> None:
        try:
            async for _ in src:
                pass
        finally:
            await src.close()

    with pytest.raises(ScannerStartError) as err:
        _run(scenario)
    assert "BlueZ is not running" in err.value.fix
    assert src.errors == 2  # bounded retries, then the error


class _Reader:
    """GATT reader fake: the lowest layer (a BLE connection) is what this machine lacks."""

    def __init__(self, ident: bytes) -> None:
        self.ident = ident
        self.calls: list[str] = []

    async def read_id(self, address: str, address_type: int) -> bytes | None:
        self.calls.append(address)
        return self.ident


def test_ios_advert_gets_its_id_after_one_gatt_read(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    reader = _Reader(BZ_ID)
    src = BleakSource(BleConfig(source="bleak", ios_gatt_read=True), SystemClock(),
                      resolver=IosResolver(reader, reads_per_minute=6))

    async def scenario() -> list[Advert]:
        await src.start()
        await asyncio.to_thread(fake_bluez.advertise, "C0:00:00:00:00:0B", -64,
                                manufacturer_data={0x004C: OVERFLOW}, uuids=[])
        first = await _take(src, 1)
        await _until(lambda: src._resolver is not None and src._resolver.stats.ok == 1)
        for rssi in (-65, -66):
            await asyncio.to_thread(fake_bluez.advertise, "C0:00:00:00:00:0B", rssi,
                                    manufacturer_data={0x004C: OVERFLOW}, uuids=[])
        later = await _take(src, 2)
        await src.close()
        return first + later

    got = _run(scenario)
    assert [(a.kind, a.ident) for a in got] == [(IdKind.BLUEZONE_IOS, None),
                                                (IdKind.BLUEZONE_IOS, BZ_ID),
                                                (IdKind.BLUEZONE_IOS, BZ_ID)]
    assert reader.calls == ["C0:00:00:00:00:0B"]  # cached for the rest of the slot


def test_bleak_gatt_reader_reads_the_id_from_bluez(fake_bluez: FakeBlueZ) -> None:
    """The real BleakClient path: connect, resolve services, ReadValue, disconnect."""
    from ble.ios import BleakGattReader

    fake_bluez.add_adapter("hci0")
    addr = "C0:00:00:00:00:0C"
    src = BleakSource(BleConfig(source="bleak"), SystemClock())

    async def scenario() -> tuple[bytes | None, bytes | None]:
        await src.start()  # the scanner is what makes BlueZ know the device
        await asyncio.to_thread(fake_bluez.advertise, addr, -60,
                                manufacturer_data={0x004C: OVERFLOW}, uuids=[])
        await _take(src, 1)
        await asyncio.to_thread(fake_bluez.serve_gatt, addr, BZ_ID)
        reader = BleakGattReader(adapter="hci0", timeout_s=5)
        got = await reader.read_id(addr, 1)
        missing = await BleakGattReader(timeout_s=2).read_id("C0:00:00:00:00:0D", 1)
        await src.close()
        return got, missing

    got, missing = _run(scenario)
    assert got == BZ_ID
    assert missing is None  # no such device: a failed read, not an exception
    log = fake_bluez.log()
    assert "Connect" in log and "ReadValue" in log and "Disconnect" in log


def test_watchdog_backs_off_after_fruitless_resets() -> None:
    from ble.sources.bleak_source import quiet_threshold

    assert [quiet_threshold(90, r) for r in (0, 1, 2, 5, 9)] == [90, 180, 360, 2880, 2880]
