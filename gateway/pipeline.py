"""The capture core: adverts and check-ins in, sealed batches in the outbox out.

Synchronous and free of I/O other than the outbox insert, so the daemon (live sources), the
demo and replay (capture timestamps as the clock) all drive the very same code. Nothing
readable leaves this object except sealed bytes: sightings wait in the aggregator's memory
until their ID slot ends, check-ins are sealed the moment they are accepted.

With ``background=True`` (the daemon) sealing (zstd, HPKE, Ed25519) and the fsync'd outbox
commit run in one worker thread, in submission order, so the event loop that receives adverts
never waits for them; the batch's clock epoch and created-at are taken on the caller's thread
when it is cut, so the result is the same as sealing inline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ble.aggregator import WindowAggregator
from ble.records import Advert, Report
from contract.batch import Batch, ClockCorrection
from contract.custody import IdentityKeyError, IdentitySealer
from contract.records import CheckIn
from contract.sealing import Sealer
from core.clock import Clock, ClockEpoch
from core.errors import BzgwError, OutboxFullError
from gateway.clock import TrackedClock
from gateway.outbox import Outbox, OutboxError
from qr.records import ScannedCheckIn

log = logging.getLogger(__name__)


class NotStoredError(BzgwError):
    """A record could not be stored (outbox full or failing); it was counted as lost."""


@dataclass
class PipelineStats:
    """Counters for health and metrics."""

    adverts: int = 0
    checkins: int = 0
    batches: int = 0
    sightings_sealed: int = 0
    lost_records: int = 0  # records that could not be stored (outbox full), counted not hidden
    identity_unsealed: int = 0  # check-ins refused: no identity key for their day
    checkins_not_stored: int = 0  # check-ins staff were told could not be saved
    last_advert_at: float | None = None
    last_batch_at: float | None = None
    outbox_full: bool = False
    by_kind: dict[str, int] = field(default_factory=dict)  # decoded adverts (on_advert)


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
        background: seal and commit in a worker thread (see the module docstring).
    """

    def __init__(self, *, aggregator: WindowAggregator, sealer: Sealer, outbox: Outbox,
                 clock: Clock, flush_interval_s: float = 60.0,
                 identities: IdentitySealer | None = None,
                 background: bool = False) -> None:
        self.aggregator = aggregator
        self.identities = identities
        self.sealer = sealer
        self.outbox = outbox
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self.stats = PipelineStats()
        self._next_flush: float | None = None
        self._corrections: list[ClockCorrection] = []
        self._worker = (ThreadPoolExecutor(1, thread_name_prefix="bzgw-seal")
                        if background else None)
        self._inflight: deque[Future[int | None]] = deque()
        self._stats_lock = threading.Lock()  # stats move on the worker and the loop alike

    def on_advert(self, adv: Advert) -> None:
        """Feed one decoded advert; flushes when the interval has passed."""
        self.stats.adverts += 1
        self.stats.by_kind[adv.kind] = self.stats.by_kind.get(adv.kind, 0) + 1
        self.stats.last_advert_at = adv.ts
        self.aggregator.add(adv, self.clock.epoch())
        self.tick(adv.ts)

    def on_reports(self, reports: Sequence[Report]) -> None:
        """Feed a batch of raw reports, in time order: the daemon's one fast path.

        Every source hands its reports here (see :meth:`WindowAggregator.feed`); counters
        move once per batch, not per advert. Flushes when the interval has passed.
        """
        if not reports:
            return
        last = reports[-1][0]
        self.stats.adverts += len(reports)
        self.stats.last_advert_at = last
        self.aggregator.feed(reports, self.clock.epoch())
        self.tick(last)

    def on_checkin(self, scan: ScannedCheckIn) -> int:
        """Seal an accepted check-in at once; returns its batch sequence number.

        The identity is sealed for the custodians and blind-tagged first, in memory; the batch
        then seals the rest for the matcher. Blocks until the check-in is committed (with
        ``background``, call it off the event loop: the QR stage does), so staff are told the
        truth.

        Raises:
            NotStoredError: no identity key for its day (counted in ``identity_unsealed``) or
                the outbox could not take it (``lost_records``, ``checkins_not_stored``);
                staff must be told it was not saved.
        """
        try:
            if self.identities is None:
                raise IdentityKeyError("no identity keys configured (sealing.identity_keys)")
            sealed = self.identities.seal(scan.ts, scan.subject, scan.fields)
        except IdentityKeyError as err:
            with self._stats_lock:
                self.stats.identity_unsealed += 1
                self.stats.checkins_not_stored += 1
            log.error("check-in refused: %s", err)
            raise NotStoredError(f"the check-in could not be sealed: {err}") from err
        checkin = CheckIn(ts=scan.ts, clock=scan.clock, kind=scan.kind, masked=scan.masked,
                          key_day=sealed.key_day, tags=sealed.tags, sealed=sealed.sealed)
        # not tracked in the in-flight list: that list belongs to the loop's thread
        seq = self._submit(Batch(checkins=[checkin]), track=False).result()
        if seq is None:
            with self._stats_lock:
                self.stats.checkins_not_stored += 1
            raise NotStoredError("the outbox could not store the check-in")
        with self._stats_lock:
            self.stats.checkins += 1
        return seq

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
            if self._worker is not None:
                self._worker.submit(self._retime, c)
            else:
                self._retime(c)
        return changed

    def _retime(self, correction: ClockCorrection) -> None:
        try:
            self.outbox.retime(correction)
        except OutboxError as err:  # bookkeeping only: the correction itself still goes out
            log.warning("%s", err)

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
        fut = self._submit(batch)
        if self._worker is not None:
            return None  # sealed later, in order; see drain()
        return fut.result()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every batch cut so far is sealed and committed."""
        for fut in list(self._inflight):
            fut.result(timeout)
        self.queued  # noqa: B018 - forgets the finished futures

    def close(self) -> None:
        """Seal what is queued and stop the worker (safe to call twice)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._inflight.clear()

    @property
    def queued(self) -> int:
        """Batches cut but not yet committed."""
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft()
        return len(self._inflight)

    def _submit(self, batch: Batch, *, track: bool = True) -> Future[int | None]:
        # The epoch and created-at are read here, on the thread that cut the batch.
        epoch = self.clock.epoch()
        created = self.clock.now()
        if self._worker is None:
            fut: Future[int | None] = Future()
            fut.set_result(self._store(batch, created, epoch))
            return fut
        fut = self._worker.submit(self._store, batch, created, epoch)
        if track:
            self.queued  # noqa: B018 - drops finished futures so the deque stays short
            self._inflight.append(fut)
        return fut

    def _store(self, batch: Batch, created: float, epoch: ClockEpoch) -> int | None:
        try:
            seq = self.outbox.append(
                lambda s: self.sealer.seal(batch, seq=s, created_at=created, clock=epoch),
                created_at=created, epoch=epoch)
        except (OutboxFullError, OutboxError) as err:
            # Degrade, never crash: the records are counted as lost and the health flag set.
            with self._stats_lock:
                self.stats.outbox_full = isinstance(err, OutboxFullError)
                self.stats.lost_records += len(batch)
            log.error("outbox could not store %d records (lost): %s", len(batch), err)
            return None
        with self._stats_lock:
            self.stats.outbox_full = False
            self.stats.batches += 1
            self.stats.sightings_sealed += len(batch.sightings)
            self.stats.last_batch_at = created
        return seq
