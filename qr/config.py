"""Config section ``qr``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.settings import key_error


class QrConfig(BaseModel):
    """QR check-in capture."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    source: Literal["picamera2", "v4l2", "folder", "video", "none"] = "none"
    device: str = Field(default="/dev/video0", description="V4L2 device")
    folder: Path | None = Field(default=None, description="watched image folder")
    video: Path | None = Field(default=None, description="video file")
    fps: float = Field(default=10, gt=0, le=60)
    width: int = Field(default=640, ge=160, le=4096)
    height: int = Field(default=480, ge=120, le=4096)
    cooldown_s: float = Field(default=300, ge=0, description="same code again = same check-in")
    frame_budget_ms: float = Field(default=30, gt=0, description="decode retries stop here")
    trust_list: Path | None = Field(default=None, description="EU DCC signer certificates")
    checkin_key: Path | None = Field(default=None, description="public key for bzgw QR codes")
    token_key: Path | None = Field(
        default=None,
        description="key file for hashing opaque tokens (the matcher needs the same key); "
                    "a fixed public key is used when unset")
    zbar: bool = Field(default=True, description="use pyzbar as the second opinion if installed")
    camera_fault_s: float = Field(default=5, gt=0, le=600,
                                  description="no frame for this long = camera fault")
    camera_retry_s: float = Field(default=2, gt=0, le=600,
                                  description="wait between attempts to reopen the camera")
    feedback: bool = Field(default=True, description="drive the staff LED and buzzer")
    led_pin: str | None = Field(default="GPIO17", description="LED pin (gpiozero name)")
    buzzer_pin: str | None = Field(default="GPIO27", description="buzzer pin (gpiozero name)")

    @model_validator(mode="after")
    def _source_has_input(self) -> QrConfig:
        if self.enabled and self.source == "folder" and self.folder is None:
            raise key_error("source", "source: folder needs folder (the image folder to "
                             "watch)", self.source)
        if self.enabled and self.source == "video" and self.video is None:
            raise key_error("source", "source: video needs video (the video file to read)",
                             self.source)
        return self

    @property
    def capturing(self) -> bool:
        """Whether a frame source is configured (the QR stage runs at all). Answered here,
        without importing the frame sources (numpy) that a gateway without a camera never
        needs."""
        return self.enabled and self.source != "none"
