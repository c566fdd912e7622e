"""Records of the QR stage that stay in memory: decoded codes, scanned check-ins, rejections,
staff feedback.

A :class:`ScannedCheckIn` holds a person's identity in the clear and never leaves the
gateway's memory: the pipeline seals it for the custodians at once into the
:class:`~contract.records.CheckIn` that goes into a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from contract.records import CheckInKind
from core.clock import ClockEpoch


class FeedbackState(StrEnum):
    """What staff are told about one event at the door (LED/buzzer pattern, recent list)."""

    ACCEPTED = "accepted"
    ALREADY = "already checked in"
    UNREADABLE = "unreadable"
    CAMERA_FAULT = "camera fault"
    CAMERA_OK = "camera ok"
    NOT_SAVED = "not saved"  # read and valid, but the gateway could not store it: show again


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
class ScannedCheckIn:
    """A person checked in at this venue, as read at the door (memory only).

    Attributes:
        ts: wall-clock estimate of the check-in.
        clock: clock epoch ``ts`` was computed in.
        kind: what the code was.
        subject: the identity tracing matches on (CCCD number, phone, certificate id, or a
            hash of an opaque token).
        fields: the few other fields tracing needs (name, birth date, phone), never logged.
        masked: a form safe to log and show (``NGUY*** V** A**, ***1234``).
    """

    ts: float
    clock: ClockEpoch
    kind: CheckInKind
    subject: str
    masked: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A code that was read but not accepted, with a clear reason (never holds the payload)."""

    ts: float
    kind: CheckInKind | None
    reason: str
