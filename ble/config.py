"""Config section ``ble``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.settings import key_error


class ProximityThresholds(BaseModel):
    """Per-receiver RSSI thresholds written by ``bzgw ble calibrate``."""

    model_config = ConfigDict(extra="forbid")
    near_dbm: int = Field(default=-65, ge=-127, le=20, description="RSSI ≥ this: near (<2 m)")
    medium_dbm: int = Field(default=-80, ge=-127, le=20, description="RSSI ≥ this: medium")
    calibrated: bool = Field(default=False, description="true once measured on this unit")

    @model_validator(mode="after")
    def _ordered(self) -> ProximityThresholds:
        if self.near_dbm <= self.medium_dbm:
            raise key_error("near_dbm", f"near_dbm ({self.near_dbm}) must be above medium_dbm "
                             f"({self.medium_dbm}): a nearer phone is heard louder",
                             self.near_dbm)
        return self


class SimulatorSettings(BaseModel):
    """The crowd ``source: simulator`` generates (tests, demos, load tests)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(default=7, description="every random choice derives from it")
    venue: str = Field(default="sim-venue", description="venue code the crowd visits")
    start: float | None = Field(default=None, description="epoch seconds; default: now")
    duration_s: float = Field(default=3600, gt=0, description="simulated period")
    bluezone_phones: int = Field(default=30, ge=0)
    en_phones: int = Field(default=10, ge=0)
    iphones: int = Field(default=5, ge=0)
    background: int = Field(default=20, ge=0, description="devices that are not phones")
    rate_hz: float = Field(default=1.0, gt=0, le=50, description="adverts/s per device")
    realtime: bool = Field(default=True, description="pace adverts at their own timestamps")


class BeaconConfig(BaseModel):
    """The iBeacon a gateway may send so sleeping iOS Bluezone apps wake up and advertise.

    Off by default: it makes the gateway a transmitter. Sent in bursts of ``on_s`` every
    ``every_s``: iOS wakes an app when a beacon region is *entered*, i.e. after it has been
    silent for a while, so a steady beacon would wake each phone once, while a burst every
    few minutes wakes it again without keeping the radio busy.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="send the iBeacon")
    adapter: str | None = Field(default=None, description="e.g. hci0; default: ble.adapter")
    uuid: str = Field(default="c7afef7b-1788-4f4a-a87d-691d53bf21c4",
                      pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                              r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$",
                      description="proximity UUID (default: the one Bluezone apps monitor)")
    major: int = Field(default=20, ge=0, le=65535)
    minor: int = Field(default=20, ge=0, le=65535)
    measured_power: int = Field(default=-59, ge=-127, le=20,
                                description="RSSI at 1 m the beacon claims, dBm")
    interval_ms: int = Field(default=1000, ge=100, le=10240,
                             description="advertising interval while on (BLE allows 20 ms+;"
                                         " 100 ms is the least this gateway will use)")
    on_s: float = Field(default=10, ge=1, le=600, description="length of one burst")
    every_s: float = Field(default=300, ge=30, le=86400,
                           description="one burst per this many seconds (≥ 30: rate limit)")

    @model_validator(mode="after")
    def _burst_fits(self) -> BeaconConfig:
        if self.on_s >= self.every_s:
            raise ValueError(f"on_s ({self.on_s:g}) must be shorter than every_s "
                             f"({self.every_s:g}): the beacon must go quiet between bursts")
        return self


class BleConfig(BaseModel):
    """BLE capture."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    source: Literal["bleak", "bluepy", "replay", "simulator"] = Field(
        default="bleak", description="where adverts come from")
    adapter: str | None = Field(default=None, description="e.g. hci0; default adapter if unset")
    scanning_mode: Literal["passive", "active"] = "passive"
    watchdog_s: float = Field(default=90, gt=0, description="restart scanning after this quiet")
    watchdog_restarts_before_reset: int = Field(
        default=2, ge=0, le=100,
        description="fruitless scanner restarts before the adapter is power-cycled")
    replay_file: Path | None = Field(default=None, description="capture for source=replay")
    replay_speed: float | None = Field(
        default=None, gt=0, description="replay at N× capture speed; unset: as fast as possible")
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    ios_gatt_read: bool = Field(default=False, description="read iOS Bluezone IDs over GATT")
    gatt_reads_per_minute: int = Field(default=6, ge=0, le=120)
    max_ids_per_window: int = Field(default=20000, ge=10, description="cap, overflow counted")
    count_window_s: int = Field(default=900, ge=60, le=3600, description="adoption window")
    proximity: ProximityThresholds = Field(default_factory=ProximityThresholds)
    beacon: BeaconConfig = Field(default_factory=BeaconConfig)
    calibration_file: Path | None = Field(
        default=None,
        description="file where bzgw ble calibrate keeps this unit's thresholds, outside the "
                    "provisioned config; when it exists its proximity overrides ble.proximity")

    @model_validator(mode="after")
    def _source_has_input(self) -> BleConfig:
        if self.enabled and self.source == "replay" and self.replay_file is None:
            raise key_error("source", "source: replay needs replay_file (the capture to "
                             "replay)", self.source)
        return self
