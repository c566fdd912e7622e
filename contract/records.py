"""The records a gateway seals and the matcher stores: what both sides agree a sighting,
a check-in and an adoption count are.

Capture-only records (an advert, which holds a MAC; a decoded QR code) stay in ``ble`` and
``qr``: they never leave the device's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from core.clock import ClockEpoch


class IdKind(StrEnum):
    """What an advert was recognised as."""

    BLUEZONE = "bluezone"  # Android Bluezone: 12-byte ID in manufacturer data 0x22B5
    BLUEZONE_IOS = "bluezone_ios"  # iOS Bluezone: ID only by GATT read
    GAEN = "gaen"  # Exposure Notification 0xFD6F: 16-byte RPI + 4-byte AEM
    IBEACON = "ibeacon"
    APPLE = "apple"  # other Apple continuity adverts (a phone, not tracing)
    PHONE = "phone"  # other adverts that look like a phone (Google, Samsung, Microsoft)
    OTHER = "other"  # everything else


class Proximity(StrEnum):
    """Coarse proximity class; RSSI cannot honestly give more."""

    NEAR = "near"  # within the calibrated "< 2 m" threshold
    MEDIUM = "medium"
    FAR = "far"
    UNKNOWN = "unknown"  # no calibration or no RSSI


class PhoneClass(IntEnum):
    """What a device counts as in adoption figures; a device that showed several kinds in one
    window counts as the highest (an address seen with a Bluezone ID is a Bluezone phone)."""

    DEVICE = 0  # not a phone (beacons, headphones, everything else)
    OTHER_PHONE = 1  # a phone not running a tracing app we can see
    GAEN = 2  # Exposure Notification
    BLUEZONE = 3  # Bluezone, Android or iOS


PHONE_CLASS: dict[IdKind, PhoneClass] = {
    IdKind.OTHER: PhoneClass.DEVICE, IdKind.IBEACON: PhoneClass.DEVICE,
    IdKind.APPLE: PhoneClass.OTHER_PHONE, IdKind.PHONE: PhoneClass.OTHER_PHONE,
    IdKind.GAEN: PhoneClass.GAEN,
    IdKind.BLUEZONE_IOS: PhoneClass.BLUEZONE, IdKind.BLUEZONE: PhoneClass.BLUEZONE,
}
"""The one classification behind the batch counts (aggregator), the status page's
"phones now" (health) and calibration's choice of phones."""


@dataclass(slots=True)
class Sighting:
    """One tracing ID seen during one ID slot at this gateway.

    Attributes:
        kind: ``BLUEZONE`` (also iOS after a GATT read) or ``GAEN``.
        ident: the ID bytes (12 for Bluezone, 16 for an RPI).
        slot_start: start of the ID's own slot (epoch seconds, 15 min Bluezone / 10 min EN).
        first_seen: wall-clock estimate of the first advert.
        last_seen: wall-clock estimate of the last advert.
        count: adverts aggregated.
        rssi_max: strongest RSSI (dBm) or ``None``.
        rssi_median: median RSSI (dBm) or ``None``.
        tx_power: advertised TX power if any.
        proximity: coarse class from per-receiver calibrated thresholds.
        aem: the EN metadata (last seen) for the matcher to decrypt once the TEK is known.
        clock: the clock epoch ``first_seen``/``last_seen`` were computed in.
    """

    kind: IdKind
    ident: bytes
    slot_start: int
    first_seen: float
    last_seen: float
    count: int
    rssi_max: int | None
    rssi_median: int | None
    clock: ClockEpoch
    tx_power: int | None = None
    proximity: Proximity = Proximity.UNKNOWN
    aem: bytes | None = None

    @property
    def dwell(self) -> float:
        """Seconds between first and last advert."""
        return self.last_seen - self.first_seen


@dataclass(slots=True)
class AdoptionCount:
    """Distinct phones seen in one counting window, by kind: the adoption figure.

    Attributes:
        window_start: epoch seconds.
        window_len: seconds.
        bluezone: distinct Bluezone IDs (Android and iOS).
        gaen: distinct EN RPIs.
        other_phones: distinct addresses of other phone-like adverts.
        other_devices: distinct addresses of everything else.
        overflow: IDs not tracked because the per-window cap was reached.
    """

    window_start: int
    window_len: int
    bluezone: int = 0
    gaen: int = 0
    other_phones: int = 0
    other_devices: int = 0
    overflow: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def phones(self) -> int:
        """All phones seen (tracing or not)."""
        return self.bluezone + self.gaen + self.other_phones

    @property
    def bluezone_share(self) -> float | None:
        """Share of phones running Bluezone, ``None`` when no phone was seen."""
        return self.bluezone / self.phones if self.phones else None


class CheckInKind(StrEnum):
    """What a QR payload was recognised as."""

    CCCD = "cccd"  # chip ID card
    BHYT = "bhyt"  # health-insurance card
    DCC = "dcc"  # EU digital COVID certificate (HC1:)
    BZGW = "bzgw"  # this product's own signed venue/personal check-in QR
    URL = "url"
    OPAQUE = "opaque"  # e.g. the national app's personal QR, format not public


@dataclass(frozen=True, slots=True)
class CheckIn:
    """A person checked in at this venue, as sealed into a batch and stored by the matcher.

    Who it was is not readable here: ``sealed`` is the subject and fields sealed to the
    identity key of ``key_day`` (opened only with k custodians' approval), ``tags`` are blind
    tags of the subject and then of the phone, if any (:mod:`contract.custody`).

    Attributes:
        ts: wall-clock estimate of the check-in.
        clock: clock epoch ``ts`` was computed in.
        kind: what the code was.
        masked: a form safe to log and show (``NGUY*** V** A**, ***1234``).
        key_day: the UTC day whose keys sealed and tagged it.
        tags: blind tags, subject first (none when the gateway could no longer tag that day).
        sealed: the sealed identity.
    """

    ts: float
    clock: ClockEpoch
    kind: CheckInKind
    masked: str
    key_day: int
    tags: tuple[bytes, ...]
    sealed: bytes
