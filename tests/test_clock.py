"""The gateway's tracked clock: sync state, jumps, ack time hints, corrections, restarts.

Time is faked at the lowest layer only: the wall clock, the monotonic clock and the kernel's
sync flag are plain functions the test controls.
"""

from __future__ import annotations

import math
from pathlib import Path

from core.clock import ClockSource
from gateway.clock import TrackedClock, kernel_clock_synced

REAL = 1_700_000_000.0


class FakeTime:
    """A machine's clocks: monotonic since boot, a wall clock with its own offset."""

    def __init__(self, wall_offset: float, synced: bool = False) -> None:
        self.mono_t = 50.0
        self.wall_offset = wall_offset
        self.synced_flag = synced

    def mono(self) -> float:
        return self.mono_t

    def wall(self) -> float:
        return self.mono_t + self.wall_offset

    def synced(self) -> bool:
        return self.synced_flag

    def clock(self, state: Path | None = None) -> TrackedClock:
        return TrackedClock(wall=self.wall, mono=self.mono, synced=self.synced,
                            boot_id="boot-1", state_path=state)


def test_boot_at_1970_then_ntp_after_ten_minutes() -> None:
    t = FakeTime(wall_offset=0.0)  # RTC-less Pi: wall clock starts at the epoch
    clock = t.clock()
    first = clock.epoch()
    assert (first.synced, first.source, first.uncertainty) == (False, ClockSource.NONE, math.inf)
    assert clock.now() < 100
    t.mono_t += 600
    assert clock.poll() is False  # nothing changed yet
    real_offset = REAL - t.mono_t
    t.wall_offset, t.synced_flag = real_offset, True
    assert clock.poll() is True
    assert clock.epoch().source is ClockSource.NTP and clock.epoch().synced
    assert clock.now() == REAL
    (c,) = clock.take_corrections()
    assert (c.boot_id, c.old_offset, c.new_offset, c.source) == ("boot-1", 0.0, real_offset,
                                                                  "ntp")
    assert clock.take_corrections() == []


def test_jumps_forward_and_back_make_new_epochs_corrected_at_sync() -> None:
    t = FakeTime(wall_offset=REAL - 1200)  # 20 minutes slow, not synchronised
    clock = t.clock()
    t.mono_t += 100
    t.wall_offset += 3600  # someone sets it an hour ahead
    assert clock.poll() is True
    assert clock.epoch().offset == REAL + 2400
    t.mono_t += 100
    t.wall_offset -= 3600  # and back
    assert clock.poll() is True
    t.mono_t += 1  # small drift is not a jump
    t.wall_offset += 0.5
    assert clock.poll() is False
    assert clock.take_corrections() == []  # nothing better is known yet
    t.wall_offset, t.synced_flag = REAL, True
    assert clock.poll() is True
    fixes = {c.old_offset: c.new_offset for c in clock.take_corrections()}
    assert fixes == {REAL - 1200: REAL, REAL + 2400: REAL}


def test_never_synced_but_ack_times_bound_the_offset() -> None:
    t = FakeTime(wall_offset=REAL - 1200)
    clock = t.clock()
    t.mono_t = 1000.0
    # A batch sent at mono 1000.0, acked at 1000.4; the matcher stamped its true time.
    clock.on_ack_time(REAL + 1000.2, sent_mono=1000.0, recv_mono=1000.4)
    assert clock.poll() is True
    e = clock.epoch()
    assert e.source is ClockSource.ACK and not e.synced
    assert abs(e.offset - REAL) < 0.2 + 1e-6 and abs(e.uncertainty - 0.2) < 1e-6
    (c,) = clock.take_corrections()
    assert c.old_offset == REAL - 1200 and c.source == "ack" and c.uncertainty == e.uncertainty
    # A tighter bound narrows the estimate; an equally loose one does not start an epoch.
    clock.on_ack_time(REAL + 2000.05, sent_mono=2000.0, recv_mono=2000.1)
    assert clock.poll() is True and clock.epoch().uncertainty < 0.06
    clock.on_ack_time(REAL + 2100.2, sent_mono=2100.0, recv_mono=2100.4)
    assert clock.poll() is False


def test_ack_hint_does_not_override_ntp() -> None:
    t = FakeTime(wall_offset=REAL, synced=True)
    clock = t.clock()
    clock.on_ack_time(REAL + 500.0, sent_mono=40.0, recv_mono=60.0)
    assert clock.poll() is False
    assert clock.epoch().source is ClockSource.NTP


def test_restart_in_same_boot_still_corrects_earlier_epochs(tmp_path: Path) -> None:
    state = tmp_path / "clock.json"
    t = FakeTime(wall_offset=0.0)
    t.clock(state)  # the daemon starts with a 1970 clock, seals, then is restarted
    t.mono_t += 300
    again = t.clock(state)
    t.wall_offset, t.synced_flag = REAL, True
    assert again.poll() is True
    assert [c.old_offset for c in again.take_corrections()] == [0.0]


def test_another_boot_forgets_the_previous_boots_epochs(tmp_path: Path) -> None:
    state = tmp_path / "clock.json"
    FakeTime(wall_offset=0.0).clock(state)
    t = FakeTime(wall_offset=REAL, synced=True)
    other = TrackedClock(wall=t.wall, mono=t.mono, synced=t.synced, boot_id="boot-2",
                         state_path=state)
    assert other.take_corrections() == []
    assert all(e.boot_id == "boot-2" for e in other.history)


def test_kernel_sync_state_is_readable() -> None:
    assert kernel_clock_synced() in (True, False)
