"""The bluepy source: bluepy's real Scanner/ScanEntry code with its helper binary faked.

This machine has no kernel Bluetooth, so the lowest layer (``bluepy-helper``, which talks to
the management socket) is replaced by a script speaking the helper's line protocol.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ble.config import BleConfig
from ble.records import Advert
from ble.sources import ScannerStartError, SourceError, open_source
from ble.sources.bluepy_source import BluepySource
from contract.records import IdKind
from core.clock import SystemClock

btle = pytest.importorskip("bluepy.btle", reason="bluepy is not installed")

FAKE = Path(__file__).parent / "fixtures" / "fake_bluepy_helper.py"
BZ_ID = "b9a665d754fe65e665d76a45"
BZ_ANDROID = "020106" + "0303564e" + "0fffb522" + BZ_ID
# beacontools' real Android EN advert (AD part of its HCI event)
EN_ANDROID = "03036ffd17166ffd2cfb0de02b33d20c5c27611238e2d10742b56ee5"
APPLE_NEARBY = "02011a020a0c0bff4c0010061f1a67f237cc"


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point bluepy at the fake helper; returns a function that sets its script and mode."""
    exe = tmp_path / "bluepy-helper"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(btle, "helperExe", str(exe))

    def configure(reports: list[dict[str, object]], mode: str = "ok") -> None:
        script = tmp_path / "reports.json"
        script.write_text(json.dumps(reports))
        monkeypatch.setenv("FAKE_BLUEPY_SCRIPT", str(script))
        monkeypatch.setenv("FAKE_BLUEPY_MODE", mode)

    return configure


async def _take(src: BluepySource, n: int) -> list[Advert]:
    got: list[Advert] = []
    async with asyncio.timeout(10):
        async for adv in src:
            got.append(adv)
            if len(got) == n:
                break
    return got


def test_adverts_decoded_through_bluepy_scanentry(helper: Callable[..., None]) -> None:
    helper([
        {"addr": "c0:00:00:00:00:01", "type": 2, "rssi": -61, "data": BZ_ANDROID},
        {"addr": "79:86:2b:b5:7e:bb", "type": 2, "rssi": -72, "data": EN_ANDROID},
        {"addr": "00:11:22:33:44:55", "type": 1, "rssi": -80, "data": APPLE_NEARBY},
        {"addr": "c0:00:00:00:00:01", "type": 2, "rssi": -59, "data": BZ_ANDROID},
    ])
    src = open_source(BleConfig(source="bluepy"), SystemClock())
    assert isinstance(src, BluepySource)

    async def scenario() -> list[Advert]:
        try:
            return await _take(src, 4)
        finally:
            await src.close()

    got = asyncio.run(scenario())
    assert [(a.address, a.address_type, a.rssi, a.kind) for a in got] == [
        ("C0:00:00:00:00:01", 1, -61, IdKind.BLUEZONE),
        ("79:86:2B:B5:7E:BB", 1, -72, IdKind.GAEN),
        ("00:11:22:33:44:55", 0, -80, IdKind.APPLE),
        ("C0:00:00:00:00:01", 1, -59, IdKind.BLUEZONE),
    ]
    assert got[0].ident == bytes.fromhex(BZ_ID)
    assert got[1].ident == bytes.fromhex("2cfb0de02b33d20c5c27611238e2d107")
    assert got[1].aem == bytes.fromhex("42b56ee5")


def test_no_management_interface_is_a_clear_error(helper: Callable[..., None]) -> None:
    helper([], mode="nomgmt")
    src = BluepySource(BleConfig(source="bluepy"), SystemClock())

    async def scenario() -> None:
        try:
            await src.start()
        finally:
            await src.close()

    with pytest.raises(ScannerStartError) as err:
        asyncio.run(scenario())
    assert "CAP_NET_ADMIN" in err.value.fix


def test_helper_dying_ends_the_stream_with_an_error(helper: Callable[..., None]) -> None:
    helper([{"addr": "c0:00:00:00:00:02", "type": 2, "rssi": -50, "data": BZ_ANDROID}],
           mode="die")
    src = BluepySource(BleConfig(source="bluepy"), SystemClock())

    async def scenario() -> list[Advert]:
        got: list[Advert] = []
        try:
            async with asyncio.timeout(10):
                async for adv in src:
                    got.append(adv)
        finally:
            await src.close()
        return got

    with pytest.raises(SourceError, match="bluepy scanning stopped"):
        asyncio.run(scenario())


@pytest.mark.skipif(os.path.exists("/sys/class/bluetooth"), reason="host has Bluetooth")
def test_real_helper_without_kernel_bluetooth_is_a_clear_error() -> None:
    """The real bluepy-helper on a host without AF_BLUETOOTH: no fake at all."""
    src = BluepySource(BleConfig(source="bluepy"), SystemClock())

    async def scenario() -> None:
        try:
            await src.start()
        finally:
            await src.close()

    with pytest.raises(ScannerStartError) as err:
        asyncio.run(scenario())
    assert "hci0" in str(err.value)


def test_adapter_name_must_be_hci_n() -> None:
    with pytest.raises(ScannerStartError, match="hciN"):
        BluepySource(BleConfig(source="bluepy", adapter="usb-dongle"), SystemClock())
