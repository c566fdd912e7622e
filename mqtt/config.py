"""Config section ``mqtt``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from msgspec import Meta

from core.settings import Section, key_error

Port = Annotated[int, Meta(ge=1, le=65535)]


class MqttConfig(Section, kw_only=True):
    """Connection to the provincial broker (TLS with a client certificate)."""

    host: Annotated[str, Meta(description="broker host name")]
    port: Port = 8883
    ca_file: Annotated[Path, Meta(
        description="CA certificate that signed the broker's certificate")]
    cert_file: Annotated[Path, Meta(description="this client's certificate (CN = client id)")]
    key_file: Annotated[Path, Meta(description="this client's private key")]
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 60
    backoff_min_s: Annotated[float, Meta(gt=0)] = 1
    backoff_max_s: Annotated[float, Meta(gt=0)] = 300
    inflight: Annotated[int, Meta(ge=1, le=1000, description="batches awaiting an ack")] = 8

    def check(self) -> None:
        """Backoff grows from its minimum to its maximum."""
        if self.backoff_min_s > self.backoff_max_s:
            raise key_error("backoff_min_s", f"backoff_min_s ({self.backoff_min_s:g}) is above "
                             f"backoff_max_s ({self.backoff_max_s:g})")
