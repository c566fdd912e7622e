"""Replay of a capture file as an advert source; the capture's timestamps are the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ble.ios import IosResolver
from ble.records import Advert, Report
from ble.replay import ReplayStats, read_adverts, read_reports
from ble.sources.base import TimedFeed
from core.clock import Clock


class ReplaySource:
    """Adverts of a btsnoop / btmon / pcapng / pcap capture, in capture order.

    Args:
        path: the capture.
        clock: advanced to each advert's timestamp when it has ``advance`` (a
            :class:`~gateway.clock.ReplayClock`), so every stage runs on capture time.
        speed: ``None`` replays as fast as possible; ``N`` paces at N× capture speed.
        resolver: optional iOS ID resolver (only useful with a simulated GATT reader).
    """

    def __init__(self, path: Path | str, clock: Clock, *, speed: float | None = None,
                 resolver: IosResolver | None = None) -> None:
        self.path = Path(path)
        self.stats = ReplayStats()
        self._feed = TimedFeed(clock, speed=speed, resolver=resolver)
        self._iter: Iterator[Advert] | None = None
        self._closed = False

    def __aiter__(self) -> ReplaySource:
        return self

    async def __anext__(self) -> Advert:
        if self._closed:
            raise StopAsyncIteration
        if self._iter is None:
            self._iter = read_adverts(self.path, self.stats)
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
        """The capture's raw reports in batches (see :meth:`TimedFeed.batches`)."""
        if self._closed:
            return
        reps = read_reports(self.path, self.stats)
        self._iter = reps  # type: ignore[assignment]  # closed by close() like the adverts
        async for batch in self._feed.batches(
                (ts, r.address, r.address_type, r.rssi, r.data) for ts, r in reps):
            if self._closed:
                return
            yield batch

    async def close(self) -> None:
        """Close the capture file."""
        self._closed = True
        if self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
        if self._feed.resolver is not None:
            await self._feed.resolver.close()

    def diagnostics(self) -> dict[str, object]:
        """Records, events, reports and truncation of the capture so far."""
        return {"backend": "replay", "adverts": self._feed.n, "records": self.stats.records,
                "truncated": self.stats.truncated, "malformed": self.stats.hci.malformed}
