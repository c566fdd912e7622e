"""The daemon's clock: kernel sync state, wall-clock jumps, ack time hints, corrections.

The clock *types* (:class:`ClockEpoch`, :class:`Clock`, :class:`ClockCorrection`) live in
:mod:`core.clock`; this module is what only the gateway runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from core.clock import ClockCorrection, ClockEpoch, ClockSource, read_boot_id

log = logging.getLogger(__name__)

TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised
STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields are read, the padding keeps
    # the kernel's writes inside our buffer.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long),
                ("freq", ctypes.c_long), ("maxerror", ctypes.c_long),
                ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("pad", ctypes.c_long * 40)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Looked up once: find_library runs ldconfig, far too slow for a once-a-second poll.
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def kernel_clock_synced() -> bool | None:
    """Whether the kernel believes its clock is synchronised (NTP, chrony, timesyncd).

    Reads ``adjtimex(2)`` with no modes set (read-only, no privilege needed): the same state
    ``timedatectl`` shows as "System clock synchronized". ``None`` where it cannot be read.
    """
    libc = _libc()
    if libc is None:
        return None
    t = _Timex()
    try:
        rc = libc.adjtimex(ctypes.byref(t))
    except AttributeError:
        return None
    if rc < 0:
        return None
    return rc != TIME_ERROR and not t.status & STA_UNSYNC


class TrackedClock:
    """The gateway's clock: wall = monotonic + offset, with the offset's provenance.

    It polls the kernel's sync state and the wall clock (``poll()``, once a second from the
    daemon). A new :class:`ClockEpoch` starts when the sync state changes, the wall clock
    jumps, or matcher ack times give a much better estimate than a free-running clock.
    Earlier epochs of the same boot that were not synchronised get a :class:`ClockCorrection`
    when a better offset arrives; epochs are remembered in ``state_path`` so a restarted
    daemon can still correct what it sealed before the restart. A previous boot's epochs
    can never be corrected (the monotonic clock restarted), so they stay flagged.

    Args:
        wall: the system wall clock.
        mono: the monotonic clock (``CLOCK_MONOTONIC``; it stops in suspend, as capture does).
        synced: the kernel's sync state (``None`` = unknown, treated as not synchronised).
        boot_id: this boot's id.
        state_path: where epochs of this boot are kept across daemon restarts.
        jump_s: a wall-clock change beyond this (relative to monotonic) is a jump.
    """

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 synced: Callable[[], bool | None] = kernel_clock_synced,
                 boot_id: str | None = None, state_path: Path | None = None,
                 jump_s: float = 2.0) -> None:
        self._wall, self._mono, self._synced_fn = wall, mono, synced
        self.boot_id = boot_id or read_boot_id()
        self.state_path = state_path
        self.jump_s = jump_s
        self.history: list[ClockEpoch] = self._load()
        self._ack_lo = -math.inf  # bounds on offset from matcher ack times
        self._ack_hi = math.inf
        self._pending: list[ClockCorrection] = []
        self._epoch = self._observe()
        self._remember(self._epoch)

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> list[ClockEpoch]:
        if self.state_path is None:
            return []
        try:
            doc = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(doc, dict) or doc.get("boot_id") != self.boot_id:
            return []  # another boot: its epochs can no longer be corrected
        out = []
        for e in doc.get("epochs", []):
            try:
                unc = e["uncertainty"]
                out.append(ClockEpoch(self.boot_id, float(e["offset"]), bool(e["synced"]),
                                      ClockSource(e["source"]),
                                      math.inf if unc is None else float(unc)))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def _remember(self, epoch: ClockEpoch) -> None:
        if epoch not in self.history:
            self.history.append(epoch)
            self.history = self.history[-64:]  # bounded: a flapping clock must not grow this
        if self.state_path is None:
            return
        doc = {"boot_id": self.boot_id, "epochs": [
            {"offset": e.offset, "synced": e.synced, "source": str(e.source),
             "uncertainty": e.uncertainty if math.isfinite(e.uncertainty) else None}
            for e in self.history]}
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.state_path)
        except OSError as err:  # a full disk must not stop capture; corrections may be lost
            log.warning("cannot save clock state %s: %s", self.state_path, err)

    # -- reading ------------------------------------------------------------------------------
    def _observe(self) -> ClockEpoch:
        offset = self._wall() - self._mono()
        if self._synced_fn():
            return ClockEpoch(self.boot_id, offset, True, ClockSource.NTP, 0.0)
        if math.isfinite(self._ack_lo) and math.isfinite(self._ack_hi):
            mid = (self._ack_lo + self._ack_hi) / 2
            return ClockEpoch(self.boot_id, mid, False, ClockSource.ACK,
                              (self._ack_hi - self._ack_lo) / 2)
        return ClockEpoch(self.boot_id, offset, False, ClockSource.NONE, math.inf)

    def now(self) -> float:
        """Best wall-clock estimate."""
        return self._mono() + self._epoch.offset

    def epoch(self) -> ClockEpoch:
        """The epoch ``now()`` is computed in."""
        return self._epoch

    # -- updating ------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Look at the system clock again; ``True`` when a new epoch started."""
        seen = self._observe()
        cur = self._epoch
        changed = (seen.source != cur.source or seen.synced != cur.synced
                   or abs(seen.offset - cur.offset) > max(self.jump_s, seen.uncertainty / 2
                                                          if seen.source is ClockSource.ACK
                                                          else 0))
        if seen.source is ClockSource.ACK and cur.source is ClockSource.ACK:
            # a tighter ack bound is worth an epoch only when it halves the uncertainty
            changed = changed or seen.uncertainty < cur.uncertainty / 2
        if not changed:
            return False
        if seen.source is ClockSource.NONE and cur.source is not ClockSource.NONE:
            log.warning("wall clock jumped by %.1f s without synchronisation",
                        seen.offset - cur.offset)
        self._epoch = seen
        self._remember(seen)
        if seen.source is not ClockSource.NONE:
            self._correct_earlier(seen)
        return True

    def _correct_earlier(self, better: ClockEpoch) -> None:
        done: set[float] = set()
        for old in self.history:
            if old == better or old.synced or old.offset in done:
                continue
            done.add(old.offset)
            if old.uncertainty <= better.uncertainty:
                continue
            self._pending.append(ClockCorrection(self.boot_id, old.offset, better.offset,
                                            better.uncertainty, str(better.source)))

    def on_ack_time(self, matcher_time: float, sent_mono: float, recv_mono: float) -> None:
        """A matcher ack: its wall time lies between our send and receive instants."""
        if not (recv_mono >= sent_mono and math.isfinite(matcher_time)):
            return
        lo, hi = matcher_time - recv_mono, matcher_time - sent_mono
        nlo, nhi = max(self._ack_lo, lo), min(self._ack_hi, hi)
        if nlo > nhi:  # inconsistent with earlier bounds (matcher clock stepped): restart
            nlo, nhi = lo, hi
        self._ack_lo, self._ack_hi = nlo, nhi

    def take_corrections(self) -> list[ClockCorrection]:
        """Corrections not yet handed to the pipeline."""
        out, self._pending = self._pending, []
        return out
