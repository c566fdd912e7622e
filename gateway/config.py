"""The gateway's config sections: identity, sealing, outbox, status page.

A whole file is read by the shell (``bzgw.config``), which adds the matcher's section.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from msgspec import Meta, field

from ble.config import BleConfig, ProximityThresholds
from contract import names
from core.auth import is_secret_hash
from core.settings import Section, key_error, load_model
from mqtt.config import MqttConfig
from qr.config import QrConfig


class IdentityConfig(Section, kw_only=True):
    """Who this gateway is; also its MQTT topic path ``bz/v1/{province}/{venue}/{id}``."""

    id: Annotated[str, Meta(pattern=names.GATEWAY_ID, description="gateway id (cert CN)")]
    province: Annotated[str, Meta(pattern=names.PROVINCE, description="province code")]
    district: Annotated[str, Meta(description="district, for dashboards")] = ""
    venue: Annotated[str, Meta(pattern=names.VENUE, description="venue code")]
    venue_name: Annotated[str, Meta(description="human-readable venue name")] = ""


class SealingConfig(Section, kw_only=True):
    """Keys for sealing batches."""

    matcher_public_key: Annotated[Path, Meta(description="matcher's HPKE public key (raw or PEM)")]
    device_key: Annotated[Path, Meta(description="this device's Ed25519 signing key (PEM)")]
    suite: Annotated[Literal["x25519-chacha20", "mlkem768x25519-chacha20"],
                     Meta(description="HPKE suite")] = "x25519-chacha20"
    identity_keys: Annotated[Path | None, Meta(
        description="custodians' identity-keys.json: check-in identities are sealed to its "
                    "key of the day (needed for QR check-ins)")] = None
    blind_key: Annotated[Path | None, Meta(
        description="this gateway's blind-key file (blind.key), ratcheted daily; tags "
                    "identities for custodian-approved lookups")] = None

    def check(self) -> None:
        """Both custody keys or neither."""
        if (self.identity_keys is None) != (self.blind_key is None):
            raise key_error("identity_keys" if self.identity_keys is not None else "blind_key",
                            "identity_keys and blind_key go together (both from `bzgw "
                            "custodian init`)")


class OutboxConfig(Section, kw_only=True):
    """The sealed-batch buffer on the gateway."""

    path: Annotated[Path, Meta(description="SQLite file")] = Path("/var/lib/bzgw/outbox.db")
    max_bytes: Annotated[int, Meta(
        ge=64 * 1024, description="oldest batches are dropped beyond this size")] = \
        256 * 1024 * 1024
    max_age_days: Annotated[float, Meta(
        gt=0, le=60, description="retention: batches older than this are dropped")] = 21
    flush_interval_s: Annotated[float, Meta(
        gt=0, le=3600, description="how often captured records are sealed")] = 60


class StatusConfig(Section, kw_only=True):
    """The local status page and metrics."""

    enabled: bool = True
    listen: Annotated[str, Meta(description="address for the status page")] = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    health_interval_s: Annotated[float, Meta(gt=0, description="health topic period")] = 60
    refresh_s: Annotated[float, Meta(gt=0, le=300, description="status page refresh period")] = 5
    staff_pin_hash: Annotated[str, Meta(
        description="Argon2id hash of the staff PIN (`bzgw config staff-pin`); without the "
                    "PIN the page shows the working state and counts only, never the last "
                    "check-ins")] = ""
    staff_session_minutes: Annotated[float, Meta(
        gt=0, le=24 * 60, description="how long an entered PIN lasts")] = 60
    metrics_allow: Annotated[list[str], Meta(
        description="networks allowed to read /metrics (default: this Pi only)")] = field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    def check(self) -> None:
        """A PIN hash, never a PIN; networks that parse."""
        if self.staff_pin_hash and not is_secret_hash(self.staff_pin_hash):
            raise key_error("staff_pin_hash", "not a PIN hash: put the line `bzgw config "
                            "staff-pin` prints (never the PIN itself)")
        for i, net in enumerate(self.metrics_allow):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as err:  # its message names the bad entry
                raise key_error(("metrics_allow", i), str(err)) from None


class GatewayConfig(Section, kw_only=True):
    """The gateway's sections of a config file (the shell's ``Config`` adds ``matcher``)."""

    gateway: IdentityConfig | None = None
    ble: BleConfig = field(default_factory=BleConfig)
    qr: QrConfig = field(default_factory=QrConfig)
    sealing: SealingConfig | None = None
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig | None = None
    status: StatusConfig = field(default_factory=StatusConfig)

    def check(self) -> None:
        """Check-in identities are sealed at capture, so QR needs the custody keys."""
        if (self.sealing is not None and self.sealing.identity_keys is None
                and self.qr.capturing):
            raise key_error(("sealing",), "QR check-ins need identity_keys and blind_key (from "
                            "`bzgw custodian init`): an identity is never stored unsealed")


G = TypeVar("G", bound=GatewayConfig)


class CalibrationFile(Section, kw_only=True):
    """What ``bzgw ble calibrate`` keeps in ``ble.calibration_file``."""

    proximity: ProximityThresholds
    measured: Annotated[dict[str, Any], Meta(description="how, for the record")] = field(
        default_factory=dict)


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
        cfg.ble.proximity = load_calibration(calibration).proximity
    return cfg
