"""Config section ``ble``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, field

from core.settings import Section, key_error

Dbm = Annotated[int, Meta(ge=-127, le=20)]


class ProximityThresholds(Section, kw_only=True):
    """Per-receiver RSSI thresholds written by ``bzgw ble calibrate``."""

    near_dbm: Annotated[Dbm, Meta(description="RSSI ≥ this: near (<2 m)")] = -65
    medium_dbm: Annotated[Dbm, Meta(description="RSSI ≥ this: medium")] = -80
    calibrated: Annotated[bool, Meta(description="true once measured on this unit")] = False

    def check(self) -> None:
        """A nearer phone is heard louder."""
        if self.near_dbm <= self.medium_dbm:
            raise key_error("near_dbm", f"near_dbm ({self.near_dbm}) must be above medium_dbm "
                             f"({self.medium_dbm}): a nearer phone is heard louder")


class SimulatorSettings(Section, kw_only=True):
    """The crowd ``source: simulator`` generates (tests, demos, load tests)."""

    seed: Annotated[int, Meta(description="every random choice derives from it")] = 7
    venue: Annotated[str, Meta(description="venue code the crowd visits")] = "sim-venue"
    start: Annotated[float | None, Meta(description="epoch seconds; default: now")] = None
    duration_s: Annotated[float, Meta(gt=0, description="simulated period")] = 3600
    bluezone_phones: Annotated[int, Meta(ge=0)] = 30
    en_phones: Annotated[int, Meta(ge=0)] = 10
    iphones: Annotated[int, Meta(ge=0)] = 5
    background: Annotated[int, Meta(ge=0, description="devices that are not phones")] = 20
    rate_hz: Annotated[float, Meta(gt=0, le=50, description="adverts/s per device")] = 1.0
    realtime: Annotated[bool, Meta(description="pace adverts at their own timestamps")] = True


class BeaconConfig(Section, kw_only=True):
    """The iBeacon a gateway may send so sleeping iOS Bluezone apps wake up and advertise.

    Off by default: it makes the gateway a transmitter. Sent in bursts of ``on_s`` every
    ``every_s``: iOS wakes an app when a beacon region is *entered*, i.e. after it has been
    silent for a while, so a steady beacon would wake each phone once, while a burst every
    few minutes wakes it again without keeping the radio busy.
    """

    enabled: Annotated[bool, Meta(description="send the iBeacon")] = False
    adapter: Annotated[str | None, Meta(description="e.g. hci0; default: ble.adapter")] = None
    uuid: Annotated[str, Meta(
        pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                r"[0-9a-fA-F]{12}$",
        description="proximity UUID (default: the one Bluezone apps monitor)",
    )] = "c7afef7b-1788-4f4a-a87d-691d53bf21c4"
    major: Annotated[int, Meta(ge=0, le=65535)] = 20
    minor: Annotated[int, Meta(ge=0, le=65535)] = 20
    measured_power: Annotated[Dbm, Meta(description="RSSI at 1 m the beacon claims, dBm")] = -59
    interval_ms: Annotated[int, Meta(
        ge=100, le=10240, description="advertising interval while on (BLE allows 20 ms+; "
                                      "100 ms is the least this gateway will use)")] = 1000
    on_s: Annotated[float, Meta(ge=1, le=600, description="length of one burst")] = 10
    every_s: Annotated[float, Meta(
        ge=30, le=86400, description="one burst per this many seconds (≥ 30: rate limit)")] = 300

    def check(self) -> None:
        """The beacon must go quiet between bursts."""
        if self.on_s >= self.every_s:
            raise key_error("on_s", f"on_s ({self.on_s:g}) must be shorter than every_s "
                             f"({self.every_s:g}): the beacon must go quiet between bursts")


class BleConfig(Section, kw_only=True):
    """BLE capture."""

    enabled: bool = True
    source: Annotated[Literal["bleak", "bluepy", "replay", "simulator"],
                      Meta(description="where adverts come from")] = "bleak"
    adapter: Annotated[str | None,
                       Meta(description="e.g. hci0; default adapter if unset")] = None
    scanning_mode: Literal["passive", "active"] = "passive"
    watchdog_s: Annotated[float, Meta(gt=0, description="restart scanning after this quiet")] = 90
    watchdog_restarts_before_reset: Annotated[int, Meta(
        ge=0, le=100,
        description="fruitless scanner restarts before the adapter is power-cycled")] = 2
    replay_file: Annotated[Path | None, Meta(description="capture for source=replay")] = None
    replay_speed: Annotated[float, Meta(
        gt=0, description="replay at N× capture speed; unset: as fast as possible")] | None = None
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    ios_gatt_read: Annotated[bool, Meta(description="read iOS Bluezone IDs over GATT")] = False
    gatt_reads_per_minute: Annotated[int, Meta(ge=0, le=120)] = 6
    max_ids_per_window: Annotated[int, Meta(ge=10, description="cap, overflow counted")] = 20000
    count_window_s: Annotated[int, Meta(ge=60, le=3600, description="adoption window")] = 900
    proximity: ProximityThresholds = field(default_factory=ProximityThresholds)
    beacon: BeaconConfig = field(default_factory=BeaconConfig)
    calibration_file: Annotated[Path | None, Meta(
        description="file where bzgw ble calibrate keeps this unit's thresholds, outside the "
                    "provisioned config; when it exists its proximity overrides "
                    "ble.proximity")] = None

    def check(self) -> None:
        """A replay needs its capture."""
        if self.enabled and self.source == "replay" and self.replay_file is None:
            raise key_error("source", "source: replay needs replay_file (the capture to "
                             "replay)")
