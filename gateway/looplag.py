"""How late the event loop runs: the one number that says whether capture can stall.

Every stage shares one asyncio loop; anything that blocks it (sealing, an fsync, a decode)
delays every advert behind it and can overflow the BLE source's queue. A task sleeps
``interval_s`` again and again and records by how much each wake-up came late. The last
minute gives the health topic's p99 and max; a histogram of the whole run (1 ms buckets up to
2 s, bounded memory) gives the run's p99 for the footprint benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

_BUCKETS = 2000  # 1 ms each; later wake-ups land in the last


class LoopLag:
    """Event-loop lag monitor.

    Args:
        interval_s: sleep between probes (each probe costs a few microseconds).
        window_s: span of the recent figures.
    """

    def __init__(self, interval_s: float = 0.1, window_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._recent: deque[float] = deque(maxlen=max(1, int(window_s / interval_s)))
        self._hist = [0] * _BUCKETS
        self.samples = 0
        self.max_ms = 0.0

    def record(self, lag_ms: float) -> None:
        """Account one probe's lateness in milliseconds."""
        lag_ms = max(lag_ms, 0.0)
        self._recent.append(lag_ms)
        self._hist[min(int(lag_ms), _BUCKETS - 1)] += 1
        self.samples += 1
        if lag_ms > self.max_ms:
            self.max_ms = lag_ms

    def recent(self) -> tuple[float | None, float | None]:
        """(p99, max) in ms over the recent window; ``(None, None)`` before the first probe."""
        if not self._recent:
            return None, None
        xs = sorted(self._recent)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))], xs[-1]

    def run_p99_ms(self) -> float | None:
        """The 99th percentile over the whole run (upper edge of its 1 ms bucket)."""
        if not self.samples:
            return None
        need = 0.99 * self.samples
        seen = 0
        for ms, n in enumerate(self._hist):
            seen += n
            if seen >= need:
                return float(ms + 1)
        return float(_BUCKETS)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set (or the task is cancelled)."""
        clock = time.perf_counter
        while not stop.is_set():
            t0 = clock()
            await asyncio.sleep(self.interval_s)  # a plain sleep: the cheapest probe
            self.record((clock() - t0 - self.interval_s) * 1000.0)
