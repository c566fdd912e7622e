"""The capture core: adverts and check-ins in, sealed batches in the outbox out.

Synchronous and free of I/O other than the outbox insert, so the daemon (live sources), the
demo and replay (capture timestamps as the clock) all drive the very same code. Nothing
readable leaves this object except sealed bytes: sightings wait in the aggregator's memory
until their ID slot ends, check-ins are sealed the moment they are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ble.aggregator import WindowAggregator
from ble.records import Advert
from contract.batch import Batch, ClockCorrection
from contract.custody import IdentityKeyError, IdentitySealer
from contract.records import CheckIn
from contract.sealing import Sealer
from core.clock import Clock
from core.errors import OutboxFullError
from gateway.clock import TrackedClock
from gateway.outbox import Outbox
from qr.records import ScannedCheckIn

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters for health and metrics."""

    adverts: int = 0
    checkins: int = 0
    batches: int = 0
    sightings_sealed: int = 0
    lost_records: int = 0  # records that could not be stored (outbox full), counted not hidden
    identity_unsealed: int = 0  # check-ins refused: no identity key for their day
    last_advert_at: float | None = None
    last_batch_at: float | None = None
    outbox_full: bool = False
    by_kind: dict[str, int] = field(default_factory=dict)


class CapturePipeline:
    """Aggregate, seal and store.

    Args:
        aggregator: the BLE window aggregator.
        sealer: seals a :class:`Batch` for the matcher.
        identities: seals check-ins' identities for the custodians (without it, check-ins
            are refused: a person's identity is never stored unsealed).
        outbox: the sealed-batch store.
        clock: the time every stage uses (system clock live, capture clock in replay).
        flush_interval_s: how often finished sightings and counts are sealed.
    """

    def __init__(self, *, aggregator: WindowAggregator, sealer: Sealer, outbox: Outbox,
                 clock: Clock, flush_interval_s: float = 60.0,
                 identities: IdentitySealer | None = None) -> None:
        self.aggregator = aggregator
        self.identities = identities
        self.sealer = sealer
        self.outbox = outbox
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self.stats = PipelineStats()
        self._next_flush: float | None = None
        self._corrections: list[ClockCorrection] = []

    def on_advert(self, adv: Advert) -> None:
        """Feed one decoded advert; flushes when the interval has passed."""
        self.stats.adverts += 1
        self.stats.by_kind[adv.kind] = self.stats.by_kind.get(adv.kind, 0) + 1
        self.stats.last_advert_at = adv.ts
        self.aggregator.add(adv, self.clock.epoch())
        self.tick(adv.ts)

    def on_checkin(self, scan: ScannedCheckIn) -> int | None:
        """Seal an accepted check-in at once; returns its batch sequence number.

        The identity is sealed for the custodians and blind-tagged first, in memory; the batch
        then seals the rest for the matcher. ``None`` when it could not be stored: no
        identity key for its day (counted in ``identity_unsealed``) or a full outbox.
        """
        self.stats.checkins += 1
        if self.identities is None:
            self.stats.identity_unsealed += 1
            log.error("check-in refused: no identity keys configured (sealing.identity_keys)")
            return None
        try:
            sealed = self.identities.seal(scan.ts, scan.subject, scan.fields)
        except IdentityKeyError as err:
            self.stats.identity_unsealed += 1
            log.error("check-in refused: %s", err)
            return None
        checkin = CheckIn(ts=scan.ts, clock=scan.clock, kind=scan.kind, masked=scan.masked,
                          key_day=sealed.key_day, tags=sealed.tags, sealed=sealed.sealed)
        return self._store(Batch(checkins=[checkin]))

    def poll_clock(self) -> bool:
        """Let a :class:`TrackedClock` look at the system clock; ``True`` on a new epoch.

        On a new epoch everything captured so far is sealed (no sighting may straddle two
        epochs) and the clock's corrections for earlier epochs are queued for the next batch.
        """
        if not isinstance(self.clock, TrackedClock):
            return False
        changed = self.clock.poll()
        if changed:
            self.flush(final=True)
        for c in self.clock.take_corrections():
            self.add_correction(c)
        return changed

    def add_correction(self, correction: ClockCorrection) -> None:
        """Queue a clock correction to go out with the next batch."""
        self._corrections.append(correction)

    def tick(self, now: float) -> None:
        """Flush if the flush interval has elapsed at ``now``."""
        if self._next_flush is None:
            self._next_flush = now + self.flush_interval_s
        elif now >= self._next_flush:
            self.flush(now)
            self._next_flush = now + self.flush_interval_s

    def flush(self, now: float | None = None, *, final: bool = False) -> int | None:
        """Seal whatever is finished (everything when ``final``); returns the batch seq."""
        t = self.clock.now() if now is None else now
        sightings, counts = self.aggregator.flush(t, final=final)
        batch = Batch(sightings=sightings, counts=counts, corrections=self._corrections)
        if not len(batch):
            return None
        self._corrections = []
        seq = self._store(batch)
        if seq is not None:
            self.stats.sightings_sealed += len(sightings)
        return seq

    def _store(self, batch: Batch) -> int | None:
        epoch = self.clock.epoch()
        created = self.clock.now()
        try:
            seq = self.outbox.append(
                lambda s: self.sealer.seal(batch, seq=s, created_at=created, clock=epoch))
        except OutboxFullError as err:
            # Degrade, never crash: the records are counted as lost and the health flag set.
            self.stats.outbox_full = True
            self.stats.lost_records += len(batch)
            log.error("outbox full, %d records lost: %s", len(batch), err)
            return None
        self.stats.outbox_full = False
        self.stats.batches += 1
        self.stats.last_batch_at = created
        return seq
