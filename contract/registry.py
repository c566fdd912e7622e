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
from typing import Annotated, Any

import msgspec
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from msgspec import Meta

from contract import names
from core.errors import ConfigError
from core.settings import Section, key_error, load_model


class GatewayEntry(Section, kw_only=True):
    """One registered gateway."""

    id: Annotated[str, Meta(pattern=names.GATEWAY_ID)]
    province: Annotated[str, Meta(pattern=names.PROVINCE)]
    district: str = ""
    venue: Annotated[str, Meta(pattern=names.VENUE)]
    venue_name: str = ""
    signing_key: Annotated[str, Meta(description="Ed25519 public key, 32 bytes hex")]

    def check(self) -> None:
        """The signing key is 32 bytes of hex, kept in lower case."""
        try:
            raw = bytes.fromhex(self.signing_key)
        except ValueError:
            raise key_error("signing_key", "must be hex") from None
        if len(raw) != 32:
            raise key_error("signing_key", f"must be 32 bytes (64 hex digits), got {len(raw)}")
        self.signing_key = self.signing_key.lower()

    def public_key(self) -> Ed25519PublicKey:
        """The gateway's signing key."""
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.signing_key))

    @property
    def topic_prefix(self) -> str:
        """``bz/v1/{province}/{venue}/{id}``."""
        return f"bz/v1/{self.province}/{self.venue}/{self.id}"


class RegistryModel(Section, kw_only=True):
    """The whole registry file."""

    gateways: list[GatewayEntry] = msgspec.field(default_factory=list)
    matchers: list[str] = msgspec.field(default_factory=lambda: ["matcher"])


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
        return {"gateways": [msgspec.structs.asdict(g) for g in self.gateways.values()],
                "matchers": self.matchers}

    def save(self, path: Path) -> None:
        """Write as YAML."""
        path.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")


def load_registry(path: Path) -> Registry:
    """Read and validate a registry file; errors are located like config errors."""
    return Registry.from_model(load_model(path, RegistryModel))
