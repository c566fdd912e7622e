"""BlueZ faked on a private D-Bus with python-dbusmock, so bleak's real code path runs.

Recipe (reference/TEST_ENVIRONMENT.md §3): a private system bus, the ``bluez5`` template in
a subprocess, devices created with correctly typed ``AddObject`` + ``InterfacesAdded`` (the
template's ``AddDevice`` types ManufacturerData/ServiceData as arrays, which bleak cannot
read), later adverts as ``PropertiesChanged``. dbus-python is blocking: tests call it from a
worker thread (``asyncio.to_thread``), never from bleak's event-loop thread.

Import the fixtures into a test module with ``from ble_fakebluez import
dbus_system_fixture, fake_bluez_fixture``; tests then ask for ``dbus_system`` / ``fake_bluez``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

dbus = pytest.importorskip("dbus", reason="dbus-python is needed to fake BlueZ")
dbusmock = pytest.importorskip("dbusmock", reason="python-dbusmock is needed to fake BlueZ")

from dbusmock import BusType, PrivateDBus, SpawnedMock  # noqa: E402

DEVICE_IFACE = "org.bluez.Device1"


class FakeBlueZ:
    """Drives the mocked bluetoothd: adapters, devices, adverts; reads its call log."""

    def __init__(self, conn: Any, log_path: Path) -> None:
        self.conn = conn
        self.log_path = log_path
        self.mock = dbus.Interface(conn.get_object("org.bluez", "/"), "org.bluez.Mock")
        self.adapters: dict[str, str] = {}
        self.known: set[str] = set()

    def add_adapter(self, name: str = "hci0") -> str:
        """Add an adapter (powered, central role); returns its object path."""
        path = str(self.mock.AddAdapter(name, f"gw-{name}"))
        self.adapters[name] = path
        return path

    def _mi(self, path: str) -> Any:
        return dbus.Interface(self.conn.get_object("org.bluez", path), dbusmock.MOCK_IFACE)

    def advertise(self, addr: str, rssi: int, *, adapter: str = "hci0",
                  service_data: dict[str, bytes] | None = None,
                  manufacturer_data: dict[int, bytes] | None = None,
                  uuids: list[str] | None = None, address_type: str = "random") -> str:
        """One advert: InterfacesAdded the first time, PropertiesChanged afterwards."""
        path = f"{self.adapters[adapter]}/dev_{addr.replace(':', '_')}"
        adv = {
            "RSSI": dbus.Int16(rssi),
            "ServiceData": dbus.Dictionary(
                {k: dbus.Array(v, signature="y") for k, v in (service_data or {}).items()},
                signature="sv"),
            "ManufacturerData": dbus.Dictionary(
                {dbus.UInt16(k): dbus.Array(v, signature="y")
                 for k, v in (manufacturer_data or {}).items()}, signature="qv"),
            "UUIDs": dbus.Array(uuids if uuids is not None else list(service_data or {}),
                                signature="s"),
        }
        if path in self.known:
            self._mi(path).UpdateProperties(DEVICE_IFACE, adv)
            return path
        self.known.add(path)
        props = {"Address": dbus.String(addr), "AddressType": dbus.String(address_type),
                 "Alias": dbus.String(addr), "Paired": dbus.Boolean(False),
                 "Connected": dbus.Boolean(False), "Trusted": dbus.Boolean(False),
                 "Blocked": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False),
                 "Adapter": dbus.ObjectPath(self.adapters[adapter]), **adv}
        root = self._mi("/")
        root.AddObject(path, DEVICE_IFACE, props, [])
        root.EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}", [
            dbus.ObjectPath(path),
            dbus.Dictionary({DEVICE_IFACE: dbus.Dictionary(props, signature="sv")},
                            signature="sa{sv}")])
        return path

    def serve_gatt(self, addr: str, value: bytes, *, adapter: str = "hci0",
                   service: str = "00004e56-73f5-4bc4-a12f-17d1ad07a667",
                   characteristic: str = "00004e56-73f5-4bc4-a12f-17d1ad07a689") -> str:
        """Give an advertised device a GATT server with one readable characteristic.

        ``Connect`` resolves services at once (as bluetoothd does after discovery), and the
        characteristic's ``ReadValue`` returns ``value``. Returns the characteristic path.
        """
        dev = f"{self.adapters[adapter]}/dev_{addr.replace(':', '_')}"
        resolved = ("self.UpdateProperties('org.bluez.Device1', {{'Connected': "
                    "dbus.Boolean({0}), 'ServicesResolved': dbus.Boolean({0})}})")
        device = self._mi(dev)
        device.AddMethod(DEVICE_IFACE, "Connect", "", "", resolved.format(True))
        device.AddMethod(DEVICE_IFACE, "Disconnect", "", "", resolved.format(False))
        svc = f"{dev}/service0010"
        char = f"{svc}/char0011"
        objects = [
            (svc, "org.bluez.GattService1",
             {"UUID": dbus.String(service), "Primary": dbus.Boolean(True),
              "Device": dbus.ObjectPath(dev)}, []),
            (char, "org.bluez.GattCharacteristic1",
             {"UUID": dbus.String(characteristic), "Service": dbus.ObjectPath(svc),
              "Flags": dbus.Array(["read"], signature="s"),
              "Value": dbus.Array(b"", signature="y")},
             [("ReadValue", "a{sv}", "ay",
               f"ret = dbus.ByteArray(bytes.fromhex('{value.hex()}'))")]),
        ]
        root = self._mi("/")
        for path, iface, props, methods in objects:
            root.AddObject(path, iface, props, methods)
            root.EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded",
                            "oa{sa{sv}}", [dbus.ObjectPath(path), dbus.Dictionary(
                                {iface: dbus.Dictionary(props, signature="sv")},
                                signature="sa{sv}")])
        return char

    def calls(self, method: str, adapter: str = "hci0") -> list[list[Any]]:
        """Arguments of every call of ``method`` on an adapter object."""
        return [list(c[1]) for c in self._mi(self.adapters[adapter]).GetMethodCalls(method)]

    def powered(self, adapter: str = "hci0") -> bool:
        """The adapter's current ``Powered`` property."""
        props = dbus.Interface(self.conn.get_object("org.bluez", self.adapters[adapter]),
                               "org.freedesktop.DBus.Properties")
        return bool(props.Get("org.bluez.Adapter1", "Powered"))

    def set_powered(self, value: bool, adapter: str = "hci0") -> None:
        """Switch the adapter as rfkill or a user would (emits PropertiesChanged)."""
        self._mi(self.adapters[adapter]).UpdateProperties(
            "org.bluez.Adapter1", {"Powered": dbus.Boolean(value)})

    def log(self) -> str:
        """The mock's log (every method call and property Set, in order)."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session", name="dbus_system")
def dbus_system_fixture() -> Iterator[Any]:
    """A private system bus for the whole session (sets DBUS_SYSTEM_BUS_ADDRESS)."""
    with PrivateDBus(BusType.SYSTEM) as bus:
        yield bus


@pytest.fixture(name="fake_bluez")
def fake_bluez_fixture(dbus_system: Any, tmp_path: Path) -> Iterator[FakeBlueZ]:
    """A fresh mocked bluetoothd per test, with its log in ``tmp_path``."""
    log_path = tmp_path / "bluez-mock.log"
    with log_path.open("w") as out:
        mock = SpawnedMock.spawn_with_template("bluez5", {}, BusType.SYSTEM, stdout=out)
        try:
            yield FakeBlueZ(BusType.SYSTEM.get_connection(), log_path)
        finally:
            mock.terminate()
