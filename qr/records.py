"""Records that flow out of the QR stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.clock import ClockEpoch


class CheckInKind(StrEnum):
    """What a QR payload was recognised as."""

    CCCD = "cccd"  # chip ID card
    BHYT = "bhyt"  # health-insurance card
    DCC = "dcc"  # EU digital COVID certificate (HC1:)
    BZGW = "bzgw"  # this product's own signed venue/personal check-in QR
    URL = "url"
    OPAQUE = "opaque"  # e.g. the national app's personal QR, format not public


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
class CheckIn:
    """A person checked in at this venue. Sealed at once; only ``masked`` is ever shown.

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
