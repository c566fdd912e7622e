"""Config section ``mqtt``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.settings import key_error


class MqttConfig(BaseModel):
    """Connection to the provincial broker (TLS with a client certificate)."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="broker host name")
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path = Field(description="CA certificate that signed the broker's certificate")
    cert_file: Path = Field(description="this client's certificate (CN = client id)")
    key_file: Path = Field(description="this client's private key")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    backoff_min_s: float = Field(default=1, gt=0)
    backoff_max_s: float = Field(default=300, gt=0)
    inflight: int = Field(default=8, ge=1, le=1000, description="batches awaiting an ack")

    @model_validator(mode="after")
    def _backoff_ordered(self) -> MqttConfig:
        if self.backoff_min_s > self.backoff_max_s:
            raise key_error("backoff_min_s", f"backoff_min_s ({self.backoff_min_s:g}) is above "
                             f"backoff_max_s ({self.backoff_max_s:g})", self.backoff_min_s)
        return self
