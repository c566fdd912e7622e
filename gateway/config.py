"""The gateway's config sections: identity, sealing, outbox, status page.

A whole file is read by the shell (``bzgw.config``), which adds the matcher's section.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from ble.config import BleConfig, ProximityThresholds
from contract import names
from core.auth import is_secret_hash
from core.settings import Section, key_error, load_model
from mqtt.config import MqttConfig
from qr.config import QrConfig


class IdentityConfig(Section):
    """Who this gateway is; also its MQTT topic path ``bz/v1/{province}/{venue}/{id}``."""

    id: str = Field(pattern=names.GATEWAY_ID, description="gateway id (cert CN)")
    province: str = Field(pattern=names.PROVINCE, description="province code")
    district: str = Field(default="", description="district, for dashboards")
    venue: str = Field(pattern=names.VENUE, description="venue code")
    venue_name: str = Field(default="", description="human-readable venue name")


class SealingConfig(Section):
    """Keys for sealing batches."""

    matcher_public_key: Path = Field(description="matcher's HPKE public key (raw or PEM)")
    device_key: Path = Field(description="this device's Ed25519 signing key (PEM)")
    suite: Literal["x25519-chacha20", "mlkem768x25519-chacha20"] = Field(
        default="x25519-chacha20", description="HPKE suite")
    identity_keys: Path | None = Field(
        default=None, description="custodians' identity-keys.json: check-in identities are "
                                  "sealed to its key of the day (needed for QR check-ins)")
    blind_key: Path | None = Field(
        default=None, description="this gateway's blind-key file (blind.key), ratcheted "
                                  "daily; tags identities for custodian-approved lookups")

    @model_validator(mode="after")
    def _both_or_neither(self) -> SealingConfig:
        if (self.identity_keys is None) != (self.blind_key is None):
            raise ValueError("identity_keys and blind_key go together (both from `bzgw "
                             "custodian init`)")
        return self


class OutboxConfig(Section):
    """The sealed-batch buffer on the gateway."""

    path: Path = Field(default=Path("/var/lib/bzgw/outbox.db"), description="SQLite file")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024,
                           description="oldest batches are dropped beyond this size")
    max_age_days: float = Field(default=21, gt=0, le=60,
                                description="retention: batches older than this are dropped")
    flush_interval_s: float = Field(default=60, gt=0, le=3600,
                                    description="how often captured records are sealed")


class StatusConfig(Section):
    """The local status page and metrics."""

    enabled: bool = True
    listen: str = Field(default="0.0.0.0", description="address for the status page")
    port: int = Field(default=8080, ge=0, le=65535)
    health_interval_s: float = Field(default=60, gt=0, description="health topic period")
    refresh_s: float = Field(default=5, gt=0, le=300, description="status page refresh period")
    staff_pin_hash: str = Field(
        default="", description="Argon2id hash of the staff PIN (`bzgw config staff-pin`); "
                                "without the PIN the page shows the working state and counts "
                                "only, never the last check-ins")
    staff_session_minutes: float = Field(default=60, gt=0, le=24 * 60,
                                         description="how long an entered PIN lasts")
    metrics_allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"],
        description="networks allowed to read /metrics (default: this Pi only)")

    @field_validator("staff_pin_hash")
    @classmethod
    def _pin_hash(cls, v: str) -> str:
        if v and not is_secret_hash(v):
            raise ValueError("not a PIN hash: put the line `bzgw config staff-pin` prints "
                             "(never the PIN itself)")
        return v

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return v


class GatewayConfig(Section):
    """The gateway's sections of a config file (the shell's ``Config`` adds ``matcher``)."""

    gateway: IdentityConfig | None = None
    ble: BleConfig = Field(default_factory=BleConfig)
    qr: QrConfig = Field(default_factory=QrConfig)
    sealing: SealingConfig | None = None
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    mqtt: MqttConfig | None = None
    status: StatusConfig = Field(default_factory=StatusConfig)

    @model_validator(mode="after")
    def _checkins_need_identity_keys(self) -> GatewayConfig:
        if (self.sealing is not None and self.sealing.identity_keys is None
                and self.qr.capturing):
            raise key_error(("sealing",), "QR check-ins need identity_keys and blind_key (from "
                            "`bzgw custodian init`): an identity is never stored unsealed",
                            None)
        return self


G = TypeVar("G", bound=GatewayConfig)


class CalibrationFile(Section):
    """What ``bzgw ble calibrate`` keeps in ``ble.calibration_file``."""

    proximity: ProximityThresholds
    measured: dict[str, Any] = Field(default_factory=dict, description="how, for the record")


def load_calibration(path: Path) -> CalibrationFile:
    """Read a calibration file written by ``bzgw ble calibrate``.

    Raises:
        ConfigError: unreadable, or not a valid calibration (line and key named).
    """
    return load_model(path, CalibrationFile)


def apply_calibration(cfg: G) -> G:
    """Thresholds measured on this unit win over the provisioned ``ble.proximity``; they live
    in their own file so re-provisioning (which re-renders the config) cannot lose them."""
    calibration = cfg.ble.calibration_file
    if calibration is not None and calibration.exists():
        object.__setattr__(cfg.ble, "proximity", load_calibration(calibration).proximity)
    return cfg
