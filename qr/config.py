"""Config section ``qr``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from core.settings import Section, key_error

Seconds = Annotated[float, Meta(gt=0, le=600)]


class QrConfig(Section, kw_only=True):
    """QR check-in capture."""

    enabled: bool = True
    source: Literal["picamera2", "v4l2", "folder", "video", "none"] = "none"
    device: Annotated[str, Meta(description="V4L2 device")] = "/dev/video0"
    folder: Annotated[Path | None, Meta(description="watched image folder")] = None
    video: Annotated[Path | None, Meta(description="video file")] = None
    fps: Annotated[float, Meta(gt=0, le=60)] = 10
    width: Annotated[int, Meta(ge=160, le=4096)] = 640
    height: Annotated[int, Meta(ge=120, le=4096)] = 480
    cooldown_s: Annotated[float, Meta(
        ge=0, description="same code again = same check-in")] = 300
    frame_budget_ms: Annotated[float, Meta(gt=0, description="decode retries stop here")] = 30
    trust_list: Annotated[Path | None, Meta(description="EU DCC signer certificates")] = None
    checkin_key: Annotated[Path | None, Meta(description="public key for bzgw QR codes")] = None
    token_key: Annotated[Path | None, Meta(
        description="key file for hashing opaque tokens (the matcher needs the same key); "
                    "a fixed public key is used when unset")] = None
    zbar: Annotated[bool, Meta(description="use pyzbar as the second opinion if installed")] = True
    camera_fault_s: Annotated[Seconds, Meta(description="no frame for this long = camera fault")
                              ] = 5
    camera_retry_s: Annotated[Seconds, Meta(
        description="wait between attempts to reopen the camera")] = 2
    feedback: Annotated[bool, Meta(description="drive the staff LED and buzzer")] = True
    led_pin: Annotated[str | None, Meta(description="LED pin (gpiozero name)")] = "GPIO17"
    buzzer_pin: Annotated[str | None, Meta(description="buzzer pin (gpiozero name)")] = "GPIO27"

    def check(self) -> None:
        """A folder or video source needs its input."""
        if self.enabled and self.source == "folder" and self.folder is None:
            raise key_error("source", "source: folder needs folder (the image folder to "
                             "watch)")
        if self.enabled and self.source == "video" and self.video is None:
            raise key_error("source", "source: video needs video (the video file to read)")

    @property
    def capturing(self) -> bool:
        """Whether a frame source is configured (the QR stage runs at all). Answered here,
        without importing the frame sources (numpy) that a gateway without a camera never
        needs."""
        return self.enabled and self.source != "none"
