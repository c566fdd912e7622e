"""The wake-up iBeacon through BlueZ's LEAdvertisingManager1, on the mocked bluetoothd."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from ble_fakebluez import (  # noqa: F401  (fixtures: dbus_system, fake_bluez)
    FakeBlueZ,
    dbus,
    dbus_system_fixture,
    fake_bluez_fixture,
)
from click.testing import CliRunner

from ble.beacon import ADVERT_IFACE, ADVERT_PATH, Beacon, ibeacon_payload
from ble.config import BeaconConfig
from ble.decoders import BLUEZONE_BEACON, decode
from bzgw.cli import cli
from bzgw.config import parse
from contract.records import IdKind
from core.settings import KeyProblem


def _props(bus_name: str) -> dict[str, Any]:
    """What bluetoothd reads from the registered object (blocking: call from a thread)."""
    conn = dbus.SystemBus()
    obj = conn.get_object(bus_name, ADVERT_PATH)
    return dict(dbus.Interface(obj, "org.freedesktop.DBus.Properties").GetAll(ADVERT_IFACE))


def test_default_payload_is_the_bluezone_wake_up_beacon() -> None:
    cfg = BeaconConfig()
    payload = ibeacon_payload(cfg)
    assert len(payload) == 23 and payload[:2] == b"\x02\x15"
    assert payload[2:22] == BLUEZONE_BEACON  # what Android Bluezone sends, per our decoder
    assert payload[22] == (-59) & 0xFF
    # our own scanner would classify what we send as that iBeacon
    ad = bytes([26, 0xFF, 0x4C, 0x00]) + payload
    got = decode(ad)
    assert got.kind is IdKind.IBEACON and got.ident == BLUEZONE_BEACON


def test_off_by_default_and_rate_limits_are_enforced() -> None:
    assert parse({}).ble.beacon.enabled is False
    with pytest.raises(msgspec.ValidationError, match=r">= 30.0 - at `\$.every_s`"):
        BeaconConfig(every_s=5)
    with pytest.raises(msgspec.ValidationError, match=r">= 100 - at `\$.interval_ms`"):
        BeaconConfig(interval_ms=20)
    with pytest.raises(KeyProblem, match="must be shorter than every_s"):
        BeaconConfig(on_s=60, every_s=60)
    with pytest.raises(msgspec.ValidationError, match=r"regex .* - at `\$.uuid`"):
        BeaconConfig(uuid="not-a-uuid")


def test_bursts_register_and_unregister_with_bluez(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    cfg = BeaconConfig(enabled=True, uuid=str(uuid.UUID(int=0x1234)), major=7, minor=300,
                       measured_power=-61, interval_ms=500, on_s=10, every_s=120)
    waits: list[float] = []
    seen: list[dict[str, Any]] = []
    registered_during_burst: list[int] = []

    async def main() -> Beacon:
        beacon = Beacon(cfg)

        async def sleep(s: float) -> None:  # the beacon's waits, recorded instead of slept
            waits.append(s)
            if s == cfg.on_s:  # on the air: read it as bluetoothd would
                assert beacon.bus is not None
                seen.append(await asyncio.to_thread(_props, beacon.bus.unique_name))
                registered_during_burst.append(len(
                    await asyncio.to_thread(fake_bluez.calls, "RegisterAdvertisement")))

        beacon.sleep = sleep
        await beacon.open()
        try:
            await beacon.run(asyncio.Event(), bursts=3)
        finally:
            await beacon.close()
        return beacon

    beacon = asyncio.run(main())
    assert waits == [10, 110, 10, 110, 10]  # on 10 s, quiet 110 s: one burst per 120 s
    assert registered_during_burst == [1, 2, 3]
    regs = fake_bluez.calls("RegisterAdvertisement")
    assert [str(r[0]) for r in regs] == [ADVERT_PATH] * 3
    assert [str(r[0]) for r in fake_bluez.calls("UnregisterAdvertisement")] == [ADVERT_PATH] * 3
    props = seen[0]
    assert str(props["Type"]) == "broadcast"
    assert int(props["MinInterval"]) == int(props["MaxInterval"]) == 500
    (company, data), = props["ManufacturerData"].items()
    assert int(company) == 0x004C
    assert bytes(data) == (b"\x02\x15" + uuid.UUID(int=0x1234).bytes + b"\x00\x07\x01\x2c"
                           + bytes([(-61) & 0xFF]))
    assert beacon.stats.bursts == 3 and beacon.stats.failures == 0


def test_a_refused_registration_is_counted_and_the_next_burst_tried(
        fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    # bluetoothd already holds an advertisement at our path (as after a crash): refused
    mgr = dbus.Interface(fake_bluez.conn.get_object("org.bluez", "/org/bluez/hci0"),
                         "org.bluez.LEAdvertisingManager1")
    mgr.RegisterAdvertisement(dbus.ObjectPath(ADVERT_PATH), dbus.Dictionary({}, signature="sv"))

    async def main() -> Beacon:
        beacon = Beacon(BeaconConfig(enabled=True))

        async def sleep(s: float) -> None:
            pass

        beacon.sleep = sleep
        await beacon.open()
        try:
            await beacon.run(asyncio.Event(), bursts=2)
        finally:
            await beacon.close()
        return beacon

    beacon = asyncio.run(main())
    assert beacon.stats.failures == 2 and beacon.stats.bursts == 0
    assert "AlreadyExists" in beacon.stats.last_error


def test_unknown_adapter_is_a_clear_error(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add_adapter("hci0")
    res = CliRunner().invoke(cli, ["ble", "beacon", "--adapter", "hci7", "--bursts", "1"])
    assert res.exit_code == 1
    assert "no adapter hci7" in res.stderr and "Traceback" not in res.output


def test_cli_sends_one_burst(fake_bluez: FakeBlueZ, tmp_path: Any) -> None:
    fake_bluez.add_adapter("hci0")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("ble:\n  beacon:\n    major: 9\n    minor: 9\n")
    res = CliRunner().invoke(cli, ["ble", "beacon", "--config", str(cfg), "--bursts", "1",
                                   "--on", "1"])
    assert res.exit_code == 0, res.output
    assert '"bursts": 1' in res.stdout and "major 9 minor 9" in res.stderr
    assert len(fake_bluez.calls("RegisterAdvertisement")) == 1
    assert len(fake_bluez.calls("UnregisterAdvertisement")) == 1
