"""Records of the QR stage that stay in memory: decoded codes, rejections, staff feedback.

The sealed :class:`~contract.records.CheckIn` is in :mod:`contract.records`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from contract.records import CheckInKind


class FeedbackState(StrEnum):
    """What staff are told about one event at the door (LED/buzzer pattern, recent list)."""

    ACCEPTED = "accepted"
    ALREADY = "already checked in"
    UNREADABLE = "unreadable"
    CAMERA_FAULT = "camera fault"
    CAMERA_OK = "camera ok"


@dataclass(frozen=True, slots=True)
class DecodedCode:
    """One code found in one frame (in memory only).

    Attributes:
        raw: the payload bytes exactly as encoded.
        text: the payload as text (UTF-8, or per its ECI), for recognizers.
        format: symbology (``QRCode``, ``MicroQRCode``...).
        decoder: which decoder produced it (``zxing``, ``zbar``).
        content: what the payload is: ``text``, ``binary`` or ``mixed`` (text with binary
            parts), from the decoder's own content analysis and ECI.
    """

    raw: bytes
    text: str
    format: str
    decoder: str
    content: str = "text"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A code that was read but not accepted, with a clear reason (never holds the payload)."""

    ts: float
    kind: CheckInKind | None
    reason: str
