"""The advert-source protocol, its errors, and a bounded-queue base for radio backends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ble.decoders import advert_of, decode
from ble.records import Advert, Report
from core.clock import Clock
from core.errors import BzgwError

if TYPE_CHECKING:
    from ble.ios import IosResolver

log = logging.getLogger(__name__)


@runtime_checkable
class AdvertSource(Protocol):
    """An async iterator of decoded adverts that must be closed.

    Every backend (bleak, bluepy, replay, simulator) implements it; tests and the demo drive
    the same code path as the Pi.
    """

    def __aiter__(self) -> AsyncIterator[Advert]:
        """The source itself."""
        ...

    def batches(self) -> AsyncIterator[list[Report]]:
        """Raw reports in time-ordered batches: the daemon's fast path (no decoding here:
        the aggregator decodes only payloads it has not seen; ``resolver`` reads iOS IDs)."""
        ...

    @property
    def resolver(self) -> IosResolver | None:
        """The iOS ID resolver the consumer of :meth:`batches` must use, if any."""
        ...

    async def __anext__(self) -> Advert:
        """The next advert (starts the radio on first use)."""
        ...

    async def close(self) -> None:
        """Stop the radio or reader and release everything; safe to call twice."""
        ...

    def diagnostics(self) -> dict[str, object]:
        """Counters for the health topic (no addresses, no IDs)."""
        ...


class SourceError(BzgwError):
    """An advert source cannot run.

    Attributes:
        fix: one line telling the operator what to do.
    """

    def __init__(self, message: str, fix: str) -> None:
        self.fix = fix
        super().__init__(f"{message}: {fix}")


class ScannerStartError(SourceError):
    """The radio did not start scanning (after bounded retries)."""


class QueueSource:
    """Base for radio sources: callbacks push into a bounded queue, the consumer pulls.

    A full queue drops the newest report and counts it (``dropped``): a stalled consumer must
    not grow memory without bound. The queue holds raw :data:`~ble.records.Report` tuples;
    :meth:`batches` hands them over as they are, iteration decodes each into an
    :class:`Advert` (and resolves iOS IDs).
    """

    BATCH_MAX = 1024
    _resolver: IosResolver | None = None

    def __init__(self, queue_size: int = 4096) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self._queue: asyncio.Queue[Report | None] = asyncio.Queue(queue_size)
        self._started = False
        self._closed = False
        self._failure: BaseException | None = None
        self.received = 0
        self.dropped = 0

    @property
    def resolver(self) -> IosResolver | None:
        """The iOS ID resolver (see :meth:`AdvertSource.batches`)."""
        return self._resolver

    def _put(self, report: Report) -> None:
        self.received += 1
        try:
            self._queue.put_nowait(report)
        except asyncio.QueueFull:
            self.dropped += 1

    def _fail(self, err: BaseException) -> None:
        """End the stream with ``err`` (raised to the consumer)."""
        self._failure = err
        self._wake()

    def _wake(self) -> None:
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:  # the consumer will find the flag on its next get
            pass

    async def start(self) -> None:
        """Start the radio; subclasses override."""
        self._started = True

    def __aiter__(self) -> QueueSource:
        return self

    async def __anext__(self) -> Advert:
        rep = await self._next_report()
        ts, address, atype, rssi, data = rep
        adv = advert_of(ts, address, atype, rssi, decode(data))
        return self._resolver.resolve(adv) if self._resolver is not None else adv

    async def _next_report(self) -> Report:
        if not self._started and not self._closed:
            await self.start()
        while True:
            if self._failure is not None:
                err, self._failure = self._failure, None
                raise err
            if self._closed and self._queue.empty():
                raise StopAsyncIteration
            item = await self._queue.get()
            if item is not None:
                return item

    async def batches(self) -> AsyncIterator[list[Report]]:
        """Everything queued, as soon as there is something (at most ``BATCH_MAX``)."""
        get = self._queue.get_nowait
        while True:
            try:
                first = await self._next_report()
            except StopAsyncIteration:
                return
            batch = [first]
            while len(batch) < self.BATCH_MAX:
                try:
                    item = get()
                except asyncio.QueueEmpty:
                    break
                if item is None:  # a wake-up: closed or failed, seen on the next round
                    break
                batch.append(item)
            yield batch

    async def close(self) -> None:
        """Mark closed and wake the consumer; subclasses stop their radio first."""
        self._closed = True
        self._wake()

    def diagnostics(self) -> dict[str, object]:
        """Queue counters."""
        return {"received": self.received, "dropped": self.dropped,
                "queued": self._queue.qsize()}


class TimedFeed:
    """Hands out adverts of a finite, time-stamped stream (a capture, a simulation).

    Advances a replay clock to each advert's time, paces at ``speed``× real time (``None``:
    as fast as possible, yielding to the loop every 256 adverts so live tasks still run), and
    resolves iOS IDs. Shared by the replay and simulator sources.
    """

    YIELD_EVERY = 256
    TICK_S = 0.1  # bench_footprint: 0.05 s cost ~0.6 % of a core more at 1,000 adverts/s

    def __init__(self, clock: Clock, *, speed: float | None,
                 resolver: IosResolver | None) -> None:
        self._advance = getattr(clock, "advance", None)
        self._speed = speed
        self.resolver = resolver
        self.n = 0
        self._t0: tuple[float, float] | None = None  # (stream time, monotonic) of the first

    async def batches(self, reports: Iterable[Any]) -> AsyncIterator[list[Report]]:
        """Raw reports in batches, paced like :meth:`emit` but waking at most every
        ``TICK_S`` (a real-time feed of 1,000 adverts/s then costs 10 wake-ups a second,
        not 1,000); the clock is advanced to each batch's last report before it is handed
        over. ``reports`` yields ``(ts, address, address_type, rssi, data)`` tuples."""
        batch: list[Report] = []
        speed = self._speed
        for rep in reports:
            ts = rep[0]
            if speed is not None:
                if self._t0 is None:
                    self._t0 = (ts, time.monotonic())
                due = self._t0[1] + (ts - self._t0[0]) / speed
                if due > time.monotonic():
                    if batch:
                        yield self._handed(batch)
                        batch = []
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(max(delay, self.TICK_S))
            batch.append(rep)
            if len(batch) >= self.YIELD_EVERY:
                yield self._handed(batch)
                batch = []
                if speed is None:
                    await asyncio.sleep(0)
        if batch:
            yield self._handed(batch)

    def _handed(self, batch: list[Report]) -> list[Report]:
        self.n += len(batch)
        if self._advance is not None:
            self._advance(batch[-1][0])
        return batch

    async def emit(self, adv: Advert) -> Advert:
        """Account for, pace and resolve one advert."""
        if self._advance is not None:
            self._advance(adv.ts)
        self.n += 1
        if self._speed is not None:
            if self._t0 is None:
                self._t0 = (adv.ts, time.monotonic())
            delay = self._t0[1] + (adv.ts - self._t0[0]) / self._speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif self.n % self.YIELD_EVERY == 0:
            await asyncio.sleep(0)
        return self.resolver.resolve(adv) if self.resolver is not None else adv
