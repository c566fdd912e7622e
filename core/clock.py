"""Clock types every stage shares: what a wall-clock time rests on, and clocks to read it.

A Raspberry Pi has no RTC: after a power cut it boots with a stale wall clock. Every record
therefore carries a :class:`ClockEpoch`, the (boot id, wall-minus-monotonic offset, sync state)
its wall time was computed from, so the matcher can re-time it when a correction arrives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class ClockSource(StrEnum):
    """What a wall-clock estimate rests on."""

    NTP = "ntp"  # kernel reports synchronised (NTP / chrony / timesyncd)
    ACK = "ack"  # matcher ack times with round-trip bounds
    NONE = "none"  # free-running, never synchronised this boot
    REPLAY = "replay"  # the capture file's own timestamps


@dataclass(frozen=True, slots=True)
class ClockEpoch:
    """A stretch of one boot during which ``wall = monotonic + offset`` held.

    Attributes:
        boot_id: the kernel's per-boot id (``/proc/sys/kernel/random/boot_id``).
        offset: wall-clock seconds minus monotonic seconds during this epoch.
        synced: whether the wall clock was known good when the epoch began.
        source: what the offset rests on.
        uncertainty: half-width of the error bound on ``offset`` in seconds (0 when NTP
            synchronised; round-trip bound for ack time; ``inf`` when unknown).
    """

    boot_id: str
    offset: float
    synced: bool
    source: ClockSource
    uncertainty: float = 0.0

    def mono(self, wall: float) -> float:
        """Monotonic time of a wall-clock reading taken in this epoch."""
        return wall - self.offset


class Clock(Protocol):
    """Source of time for every stage (the system clock live, the capture's clock in replay)."""

    def now(self) -> float:
        """Best wall-clock estimate, epoch seconds."""
        ...

    def epoch(self) -> ClockEpoch:
        """The epoch ``now()`` is computed in."""
        ...


def read_boot_id() -> str:
    """The kernel's boot id, or a per-process stand-in where /proc does not have it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"proc-{id(time):x}"


class ReplayClock:
    """Clock driven by the timestamps of a capture: ``advance()`` is called per record."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._epoch = ClockEpoch(boot_id="replay", offset=0.0, synced=True,
                                 source=ClockSource.REPLAY)

    def advance(self, t: float) -> None:
        """Move time forward to ``t`` (never backwards)."""
        if t > self._now:
            self._now = t

    def now(self) -> float:
        """Current replay time."""
        return self._now

    def epoch(self) -> ClockEpoch:
        """Replay time is exact by definition."""
        return self._epoch


class SystemClock:
    """Wall clock of this machine, with a fixed epoch (deepened by the clock-sync work)."""

    def __init__(self, *, synced: bool = True) -> None:
        self._boot_id = read_boot_id()
        self._synced = synced

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    def epoch(self) -> ClockEpoch:
        """The current offset between wall and monotonic clocks."""
        return ClockEpoch(
            boot_id=self._boot_id,
            offset=time.time() - time.monotonic(),
            synced=self._synced,
            source=ClockSource.NTP if self._synced else ClockSource.NONE,
            uncertainty=0.0 if self._synced else float("inf"),
        )


@dataclass(frozen=True, slots=True)
class ClockCorrection:
    """A later, better offset for an earlier clock epoch of the same boot.

    Sealed (so signed by the device) into the next batch; the matcher re-times every record
    captured in ``boot_id`` with ``old_offset`` by ``new_offset - old_offset``.
    """

    boot_id: str
    old_offset: float
    new_offset: float
    uncertainty: float
    source: str
