"""The event-loop lag probe: recent p99/max and the whole run's p99 from recorded lateness."""

from __future__ import annotations

import asyncio

from gateway.looplag import LoopLag


def test_recent_and_run_percentiles_come_from_the_recorded_lateness() -> None:
    lag = LoopLag(interval_s=0.1, window_s=10.0)  # the recent window holds 100 probes
    assert lag.recent() == (None, None) and lag.run_p99_ms() is None
    for i in range(300):
        lag.record(250.0 if i == 5 else 30.0 if i % 100 == 99 else 1.5)
    p99, worst = lag.recent()
    # the last 100 probes: 99 at 1.5 ms and one at 30 ms (the 250 ms stall has left)
    assert worst == 30.0 and p99 == 30.0
    assert lag.max_ms == 250.0 and lag.samples == 300
    # 3 of 300 at 30 ms, 1 at 250: the 99th lies in the 30-31 ms bucket, reported by its top
    assert lag.run_p99_ms() == 31.0
    lag.record(-0.2)  # a probe woken early counts as on time
    assert lag.samples == 301


def test_the_probe_records_while_the_loop_runs() -> None:
    lag = LoopLag(interval_s=0.001)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(lag.run(stop))
        while lag.samples < 5:  # noqa: ASYNC110 - polling a counter, not awaiting an event
            await asyncio.sleep(0.005)
        stop.set()
        await task

    asyncio.run(main())
    assert lag.samples >= 5 and lag.run_p99_ms() is not None
