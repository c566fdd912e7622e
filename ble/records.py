"""Records that flow out of the BLE stage: adverts (in memory only) and sightings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway.clock import ClockEpoch


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


@dataclass(frozen=True, slots=True)
class Advert:
    """One received advertising report, decoded. Never written to disk (it holds a MAC).

    Attributes:
        ts: wall-clock receive time (epoch seconds) from the stage's clock.
        address: the advertiser's address, ``AA:BB:..``; in memory only.
        address_type: 0 public, 1 random, 2/3 resolved identities, 255 anonymous.
        rssi: dBm, ``None`` when the controller did not report it.
        kind: what the payload was recognised as.
        ident: the tracing ID (12-byte Bluezone ID, 16-byte RPI), or ``None``.
        aem: the 4-byte Associated Encrypted Metadata of an EN advert.
        tx_power: advertised TX power in dBm, if present.
    """

    ts: float
    address: str
    address_type: int
    rssi: int | None
    kind: IdKind
    ident: bytes | None = None
    aem: bytes | None = None
    tx_power: int | None = None


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
