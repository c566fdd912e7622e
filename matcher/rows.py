"""Rows the store hands to matching and to the dashboard (plain, read-only dataclasses)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol


class HeaderLike(Protocol):
    """What the store needs of a batch header (``contract.sealing.BatchHeader`` fits)."""

    @property
    def gateway_id(self) -> str:
        """The sealing gateway."""
        ...

    @property
    def seq(self) -> int:
        """Its sequence number."""
        ...

    @property
    def created_at(self) -> float:
        """When it was sealed (gateway wall clock)."""
        ...


@dataclass(frozen=True, slots=True)
class VenueInfo:
    """A venue as registered (``province/venue`` is its key)."""

    id: int
    province: str
    venue: str
    name: str
    district: str

    @property
    def key(self) -> str:
        """``province/venue``."""
        return f"{self.province}/{self.venue}"

    @property
    def label(self) -> str:
        """The venue's name, or its code when it has none."""
        return self.name or self.venue


@dataclass(frozen=True, slots=True)
class EpochInfo:
    """The clock state a stored record's time rests on."""

    boot_id: str
    offset: float
    synced: bool
    source: str
    uncertainty: float
    corrected: bool = False  # re-timed by a clock correction the gateway sent later

    @property
    def bounded(self) -> bool:
        """Whether the error bound is finite."""
        return math.isfinite(self.uncertainty)


@dataclass(frozen=True, slots=True)
class SightingRow:
    """One stored sighting."""

    id: int
    gateway_id: str
    venue_id: int
    seq: int
    kind: str
    ident: bytes
    slot_start: int
    first_seen: float
    last_seen: float
    count: int
    rssi_max: int | None
    rssi_median: int | None
    proximity: str
    clock: EpochInfo


@dataclass(frozen=True, slots=True)
class CheckinRow:
    """One stored check-in: who it was is sealed (``sealed``, opened only with custodians'
    approval of its ``key_day``); ``tags`` are its blind tags (subject, phone)."""

    id: int
    gateway_id: str
    venue_id: int
    seq: int
    ts: float
    kind: str
    masked: str
    key_day: int | None
    tags: tuple[bytes, ...]
    sealed: bytes | None
    clock: EpochInfo


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What the matcher knows of one gateway (for the dashboard and operators)."""

    gateway_id: str
    venue: VenueInfo
    last_seq: int
    batches: int
    last_batch_at: float | None
    last_created_at: float | None
    status: str | None
    status_at: float | None
    health: dict[str, Any] | None
    health_at: float | None


@dataclass(frozen=True, slots=True)
class Counter:
    """One ingest outcome counter."""

    reason: str
    gateway_id: str
    n: int
    updated_at: float


@dataclass(slots=True)
class AdoptionSummary:
    """Adoption counts of the counting windows overlapping a time range at one venue."""

    windows: int = 0
    max_bluezone: int = 0
    max_gaen: int = 0
    max_other_phones: int = 0
    by_gateway: dict[str, int] = field(default_factory=dict)
