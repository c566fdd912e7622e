"""Configuration: one pydantic model per section, parsing kept apart from file handling.

``parse(dict)`` validates plain data (tests use it); ``load(path)`` reads YAML and turns
validation errors into ``file:line: a -> b: message`` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ble.config import BleConfig, ProximityThresholds
from gateway.errors import ConfigError
from gateway.yamlloc import line_of, load_yaml
from matcher.config import MatcherConfig
from mqtt.config import MqttConfig
from qr.config import QrConfig


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class IdentityConfig(Section):
    """Who this gateway is; also its MQTT topic path ``bz/v1/{province}/{venue}/{id}``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="gateway id (cert CN)")
    province: str = Field(pattern=r"^[a-z0-9-]{1,32}$", description="province code")
    district: str = Field(default="", description="district, for dashboards")
    venue: str = Field(pattern=r"^[a-z0-9-]{1,64}$", description="venue code")
    venue_name: str = Field(default="", description="human-readable venue name")


class SealingConfig(Section):
    """Keys for sealing batches."""

    matcher_public_key: Path = Field(description="matcher's HPKE public key (raw or PEM)")
    device_key: Path = Field(description="this device's Ed25519 signing key (PEM)")
    suite: Literal["x25519-chacha20", "mlkem768x25519-chacha20"] = Field(
        default="x25519-chacha20", description="HPKE suite")


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


class Config(Section):
    """A whole config file: gateway sections, matcher section, or both."""

    gateway: IdentityConfig | None = None
    ble: BleConfig = Field(default_factory=BleConfig)
    qr: QrConfig = Field(default_factory=QrConfig)
    sealing: SealingConfig | None = None
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    mqtt: MqttConfig | None = None
    status: StatusConfig = Field(default_factory=StatusConfig)
    matcher: MatcherConfig | None = None


class CalibrationFile(Section):
    """What ``bzgw ble calibrate`` keeps in ``ble.calibration_file``."""

    proximity: ProximityThresholds
    measured: dict[str, Any] = Field(default_factory=dict, description="how, for the record")


def parse(data: dict[str, Any]) -> Config:
    """Validate plain data. Raises pydantic's ``ValidationError``."""
    return Config.model_validate(data)


def format_errors(err: ValidationError, file: str,
                  lines: dict[tuple[str | int, ...], int]) -> list[tuple[str, str]]:
    """One ``(file:line: a -> b, message)`` per pydantic error."""
    out = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and "[" in x))
        line = line_of(lines, loc)
        where = f"{file}:{line}" if line else file
        path = " -> ".join(str(x) for x in loc) or "(top)"
        value = e.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        out.append((f"{where}: {path}", f"{e['msg']}{shown}"))
    return out


def load(path: Path | str) -> Config:
    """Read and validate a YAML config file.

    Relative paths inside the file are resolved against the file's folder.

    Raises:
        ConfigError: with every problem located by line and key path.
    """
    p = Path(path)
    data, lines = load_yaml(p)
    try:
        cfg = parse(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(p), lines)) from err
    cfg = resolve_paths(cfg, p.parent)
    calibration = cfg.ble.calibration_file
    if calibration is not None and calibration.exists():
        # Measured on this unit: wins over the provisioned ble.proximity, and lives in its
        # own file so re-provisioning (which re-renders the config) cannot lose it.
        object.__setattr__(cfg.ble, "proximity", load_calibration(calibration).proximity)
    return cfg


def load_calibration(path: Path) -> CalibrationFile:
    """Read a calibration file written by ``bzgw ble calibrate``.

    Raises:
        ConfigError: unreadable, or not a valid calibration (line and key named).
    """
    data, lines = load_yaml(path)
    try:
        return CalibrationFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), lines)) from err


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Make every relative ``Path`` field absolute against ``base``."""

    def fix(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                object.__setattr__(model, name, (base / value).resolve())
            elif isinstance(value, BaseModel):
                fix(value)
            elif isinstance(value, list) and any(isinstance(v, Path) for v in value):
                object.__setattr__(model, name, [  # e.g. matcher.f0_signers
                    (base / v).resolve() if isinstance(v, Path) and not v.is_absolute()
                    else v for v in value])

    fix(cfg)
    return cfg
