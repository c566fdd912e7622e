"""The gateway registry: which gateways exist, where they are, and their signing keys.

One YAML file, shared by the broker config generator (topics and ACLs), the matcher
(signature verification) and ansible (rendered from the inventory)::

    gateways:
      - id: gw-hn-0001
        province: hn
        district: hoan-kiem
        venue: cho-dong-xuan
        venue_name: Chợ Đồng Xuân
        signing_key: 3b6a27bc...   # Ed25519 public key, 32 bytes hex
    matchers: [matcher-1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract import names
from core.errors import ConfigError


class GatewayEntry(BaseModel):
    """One registered gateway."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=names.GATEWAY_ID)
    province: str = Field(pattern=names.PROVINCE)
    district: str = ""
    venue: str = Field(pattern=names.VENUE)
    venue_name: str = ""
    signing_key: str = Field(description="Ed25519 public key, 32 bytes hex")

    @field_validator("signing_key")
    @classmethod
    def _key_is_hex32(cls, v: str) -> str:
        try:
            raw = bytes.fromhex(v)
        except ValueError as err:
            raise ValueError("must be hex") from err
        if len(raw) != 32:
            raise ValueError(f"must be 32 bytes (64 hex digits), got {len(raw)}")
        return v.lower()

    def public_key(self) -> Ed25519PublicKey:
        """The gateway's signing key."""
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.signing_key))

    @property
    def topic_prefix(self) -> str:
        """``bz/v1/{province}/{venue}/{id}``."""
        return f"bz/v1/{self.province}/{self.venue}/{self.id}"


class RegistryModel(BaseModel):
    """The whole registry file."""

    model_config = ConfigDict(extra="forbid")
    gateways: list[GatewayEntry] = Field(default_factory=list)
    matchers: list[str] = Field(default_factory=lambda: ["matcher"])


@dataclass
class Registry:
    """Lookup by gateway id."""

    gateways: dict[str, GatewayEntry] = field(default_factory=dict)
    matchers: list[str] = field(default_factory=list)

    @classmethod
    def from_model(cls, model: RegistryModel) -> Registry:
        """Index a validated registry, refusing duplicate ids."""
        out = cls(matchers=list(model.matchers))
        for g in model.gateways:
            if g.id in out.gateways:
                raise ConfigError([("", f"gateway id {g.id!r} is registered twice")])
            out.gateways[g.id] = g
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for writing back to YAML."""
        return {"gateways": [g.model_dump() for g in self.gateways.values()],
                "matchers": self.matchers}

    def save(self, path: Path) -> None:
        """Write as YAML."""
        path.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")


def load_registry(path: Path) -> Registry:
    """Read and validate a registry file; errors are located like config errors."""
    from core.settings import format_errors
    from core.yamlloc import load_yaml

    data, lines = load_yaml(path)
    try:
        model = RegistryModel.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), lines)) from err
    return Registry.from_model(model)
