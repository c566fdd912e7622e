"""The plaintext unit the sealer encrypts: everything captured in one flush interval."""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.records import AdoptionCount, CheckIn, Sighting
from core.clock import ClockCorrection, ClockEpoch

__all__ = ["Batch", "ClockCorrection"]


@dataclass(slots=True)
class Batch:
    """Everything one gateway captured in one flush: sealed as one unit."""

    sightings: list[Sighting] = field(default_factory=list)
    checkins: list[CheckIn] = field(default_factory=list)
    counts: list[AdoptionCount] = field(default_factory=list)
    corrections: list[ClockCorrection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sightings) + len(self.checkins) + len(self.counts) + len(
            self.corrections)

    def epochs(self) -> list[ClockEpoch]:
        """Distinct clock epochs referenced by the records, in first-use order."""
        seen: dict[ClockEpoch, None] = {}
        for s in self.sightings:
            seen.setdefault(s.clock)
        for c in self.checkins:
            seen.setdefault(c.clock)
        return list(seen)
