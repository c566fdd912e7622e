"""The seeded crowd simulator as an advert source."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from ble.config import SimulatorSettings
from ble.ios import IosResolver
from ble.records import Advert, Report
from ble.simulator import Crowd
from ble.sources.base import TimedFeed
from core.clock import Clock


def crowd_from_settings(s: SimulatorSettings, *, now: float) -> Crowd:
    """Build the crowd a ``ble.simulator`` config section describes."""
    crowd = Crowd(seed=s.seed, start=s.start if s.start is not None else now,
                  duration_s=s.duration_s)
    venues = [s.venue]
    crowd.add_bluezone_phones(s.bluezone_phones, venues=venues)
    crowd.add_en_phones(s.en_phones, venues=venues)
    crowd.add_iphones(s.iphones, venues=venues)
    crowd.add_background(s.background, venues=venues)
    return crowd


class SimulatorSource:
    """Adverts a simulated crowd sends at one venue, in time order.

    Args:
        crowd: the crowd.
        venue: where the gateway is.
        clock: advanced to each advert's timestamp when it has ``advance``.
        start: first instant (default: the crowd's start).
        end: last instant, exclusive (default: the crowd's end).
        rate_hz: adverts per second per device.
        realtime: sleep so adverts come out at their own pace (else as fast as possible).
        resolver: reads iOS IDs, typically through ``crowd.gatt_reader(clock)``.
    """

    def __init__(self, crowd: Crowd, venue: str, clock: Clock, *, start: float | None = None,
                 end: float | None = None, rate_hz: float = 1.0, realtime: bool = False,
                 resolver: IosResolver | None = None) -> None:
        self.crowd = crowd
        self.venue = venue
        self._iter: Iterator[Advert] = crowd.adverts(venue, start, end, rate_hz)
        self._span = (start, end, rate_hz)
        self._feed = TimedFeed(clock, speed=1.0 if realtime else None, resolver=resolver)
        self._closed = False

    def __aiter__(self) -> SimulatorSource:
        return self

    async def __anext__(self) -> Advert:
        if self._closed:
            raise StopAsyncIteration
        try:
            adv = next(self._iter)
        except StopIteration:
            raise StopAsyncIteration from None
        return await self._feed.emit(adv)

    @property
    def resolver(self) -> IosResolver | None:
        """The iOS ID resolver, for the consumer of :meth:`batches`."""
        return self._feed.resolver

    async def batches(self) -> AsyncIterator[list[Report]]:
        """The crowd's raw reports in batches (see :meth:`TimedFeed.batches`)."""
        start, end, rate_hz = self._span
        async for batch in self._feed.batches(self.crowd.reports(self.venue, start, end,
                                                                 rate_hz)):
            if self._closed:
                return
            yield batch

    async def close(self) -> None:
        """Stop generating; cancel a simulated GATT read in flight."""
        self._closed = True
        if self._feed.resolver is not None:
            await self._feed.resolver.close()

    def diagnostics(self) -> dict[str, object]:
        """Adverts generated so far."""
        return {"backend": "simulator", "adverts": self._feed.n, "devices": len(self.crowd.devices)}
