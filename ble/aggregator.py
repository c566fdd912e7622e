"""Adverts → one sighting per (tracing ID, ID slot) and adoption counts per window.

A phone sends about ten adverts a second and repeats one payload for its whole ID slot, so the
gateway keeps one :class:`~ble.records.Sighting` per (ID, slot): the slot is the ID's own
(15 min from UTC midnight for Bluezone, 10 min for EN), so a sighting can never straddle an ID
change. RSSI statistics use a fixed 128-bin histogram per sighting: bounded memory, exact
median to the dBm.

Adoption (:class:`~ble.records.AdoptionCount`) counts distinct phones per window by kind:
Bluezone IDs, EN RPIs, other phones and other devices by address. MAC addresses are never
kept as data: each is reduced to a keyed digest (SipHash-2-4, 64 bits) under a random key
that lives in memory for one window only; the small per-address cache that makes repeated
adverts cheap is emptied at every window close. Memory is bounded by ``max_ids``; IDs and
devices beyond it are not tracked, and their number is estimated (linear counting) into
``overflow``.

Counting biases, documented rather than hidden:

* EN phones change address and RPI together every 10–20 min, not on window boundaries, so
  one EN phone is usually counted as 1–3 RPIs in a 15-minute window: ``gaen`` over-counts.
* Bluezone IDs change on the same 15-minute UTC grid as the default window: one per phone.
* Devices other than tracing phones are counted by address, which they rotate (~15 min):
  a phone can appear twice in a window; Apple adverts include watches and earbuds.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ble.config import ProximityThresholds
from ble.decoders import BLUEZONE_BEACON, decode
from ble.ids import BLUEZONE_SLOT_S, EN_INTERVAL
from ble.proximity import proximity_of
from ble.records import Advert
from contract.records import PHONE_CLASS, AdoptionCount, IdKind, PhoneClass, Sighting
from core.clock import ClockEpoch

try:
    import cython
except ImportError:  # pure Python, and Cython not installed
    _C_BUILD = False
else:
    _C_BUILD = cython.compiled  # True only in the compiled copy (ble._aggregator_c)

_BINS = 256  # RSSI histogram over every signed-byte value
_RECENT_MAX = 8192  # per-address cache entries (MACs, memory only, emptied every window)
_OVERFLOW_BITS = 1 << 16
# IdKind members as plain names: on Python 3.11 reading an enum member off its class is a
# descriptor call (~150 ns), and the slow path compares a kind several times per advert
_BLUEZONE, _BLUEZONE_IOS, _GAEN, _IBEACON = (IdKind.BLUEZONE, IdKind.BLUEZONE_IOS, IdKind.GAEN,
                                             IdKind.IBEACON)


# Ranks: what an address is counted as in a window is the highest rank it showed.
_R_OTHER, _R_IBEACON, _R_BZ_BEACON, _R_APPLE, _R_PHONE, _R_IOS, _R_ID = range(7)
_RANK = {IdKind.OTHER: _R_OTHER, IdKind.IBEACON: _R_IBEACON, IdKind.APPLE: _R_APPLE,
         IdKind.PHONE: _R_PHONE, IdKind.BLUEZONE_IOS: _R_IOS, IdKind.GAEN: _R_ID,
         IdKind.BLUEZONE: _R_ID}
_RANK_NAMES = {_R_OTHER: "other", _R_IBEACON: "ibeacon", _R_BZ_BEACON: "bluezone_beacon",
               _R_APPLE: "apple", _R_PHONE: "phone", _R_IOS: "bluezone_ios"}
# by_kind names → the shared phone classification; "bluezone_beacon" has none: the Android
# phone sending Bluezone's wake-up iBeacon is already counted by its ID
_CLASS_OF_NAME = {k.value: c for k, c in PHONE_CLASS.items()}
# the same classification as plain ints, for the live count (called on the fast path)
_PHONE_RANK = {k: int(c) for k, c in PHONE_CLASS.items()}


class _Track:
    """A sighting being built. The histogram has a bin for every signed-byte RSSI, indexed
    by ``rssi & 0xFF``, so the hot path is one subscript. The compiled build holds it as a C
    array inside the object (``_aggregator_c.pxd``: 1 KiB, zeroed when the object is
    allocated, one increment per advert, no int objects); pure Python as a list."""

    __slots__ = ("aem", "clock", "first", "hist", "ident", "kind", "last", "no_rssi",
                 "slot_end", "slot_start", "tx_power")

    def __init__(self, kind: IdKind, ident: bytes, slot_start: int, slot_len: int,
                 clock: ClockEpoch) -> None:
        self.kind = kind
        self.ident = ident
        self.slot_start = slot_start
        self.slot_end = float(slot_start + slot_len)
        self.first = math.inf
        self.last = -math.inf
        self.no_rssi = 0
        self.hist: list[int]
        if not _C_BUILD:  # compiled: a C array, already zeroed
            self.hist = _empty_histogram()
        self.tx_power: int | None = None
        self.aem: bytes | None = None
        self.clock = clock

    def note(self, ts: float, rssi: int | None) -> None:
        """Account one advert heard at ``ts`` (:func:`_feed` does the same inline)."""
        if rssi is None:
            self.no_rssi += 1
        else:
            ri = rssi  # compiled: a C long
            self.hist[ri & 0xFF] += 1
        if ts > self.last:
            self.last = ts
        if ts < self.first:
            self.first = ts

    def stats(self) -> tuple[int, int | None, int | None]:
        """``(count, rssi_max, rssi_median)``."""
        h = self.hist
        n = 0
        for i in range(_BINS):
            n += h[i]
        if not n:
            return self.no_rssi, None, None
        half = (n + 1) // 2
        acc = 0
        top = 128  # none yet
        for rssi in range(127, -129, -1):  # strongest first
            c = h[rssi & 0xFF]
            if c:
                if top == 128:
                    top = rssi
                acc += c
                if acc >= half:
                    return n + self.no_rssi, top, rssi
        raise AssertionError("histogram bins do not add up")  # pragma: no cover


def _empty_histogram() -> list[int]:
    # a function, not ``[0] * _BINS`` in __init__: Cython refuses to compile that
    # expression against the compiled build's C array, even in a branch it never takes
    return [0] * _BINS


# _Fast, _Addr and _Live are made with __new__ and their fields set where they are made: the
# compiled build then allocates a C object without a Python-level __init__ call (~30 ns,
# not ~200, on the slow path of every new device).

class _Fast:
    """An address's entry on the fast path of :meth:`WindowAggregator.feed`: the payload it
    repeats, until when a repeat may skip every lookup (``lo <= ts < hi``; ``hi`` is also
    when the watcher is due to hear of it, ``end`` when the window or the ID slot ends), the
    sighting it feeds, its live-count entry, and the entry of its other payload (active
    scanning alternates an advert and its scan response). A C object in the compiled build."""

    __slots__ = ("alt", "data", "end", "hi", "kind", "live", "lo", "track")
    data: bytes
    lo: float
    hi: float
    end: float
    track: _Track | None
    kind: IdKind
    live: _Live | None
    alt: _Fast | None


class _Addr:
    """Per-address state for one window (memory only)."""

    __slots__ = ("digest", "rank", "track")
    digest: int
    rank: int
    track: _Track | None


class _Window:
    __slots__ = ("devices", "end", "ids", "k0", "k1", "refused", "start")

    def __init__(self, start: int, length: int) -> None:
        self.start = start
        self.end = float(start + length)
        self.k0, self.k1 = _random_key()  # per-window digest key, never stored
        self.devices: dict[int, int] = {}  # address digest → rank
        self.ids: dict[bytes, IdKind] = {}  # tracing ID → kind
        self.refused = bytearray(_OVERFLOW_BITS // 8)


class WindowAggregator:
    """Builds sightings and adoption counts from a time-ordered advert stream.

    Args:
        thresholds: calibrated proximity thresholds (``BleConfig.proximity``).
        max_ids: cap on IDs (and on devices) tracked at once; beyond it, counted overflow.
        count_window_s: adoption window length, aligned to the UTC epoch.
        clock: clock epoch used when :meth:`add` is called without one.
        bluezone_slot_s: Bluezone ID lifetime (86400 / ``max``; 900 by default).
        watcher: told ``(ts, address, kind)`` of every address heard (the live phone
            count), at least every ``watch_refresh_s`` per address that keeps sending:
            repeated adverts between two calls cost nothing more (see :meth:`feed`).
        watch_refresh_s: how stale a watcher's last-heard time may get.
        resolve: reads the ID of a ``BLUEZONE_IOS`` advert heard by :meth:`feed`:
            ``(ts, address, address_type) -> ID or None`` (an
            :meth:`~ble.ios.IosResolver.resolve_raw`); until it answers, each advert of
            that address takes the slow path and asks again.
    """

    def __init__(self, thresholds: ProximityThresholds | None = None, *, max_ids: int = 20000,
                 count_window_s: int = 900, clock: ClockEpoch | None = None,
                 bluezone_slot_s: int = BLUEZONE_SLOT_S,
                 watcher: Callable[[float, str, IdKind], None] | None = None,
                 watch_refresh_s: float = 10.0,
                 resolve: Callable[[float, str, int], bytes | None] | None = None) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be positive")
        if count_window_s <= 0 or 86400 % bluezone_slot_s:
            raise ValueError("count_window_s must be positive and the Bluezone slot must "
                             "divide a day")
        self.thresholds = thresholds or ProximityThresholds()
        self.max_ids = max_ids
        self.count_window_s = count_window_s
        self.clock = clock
        self.watcher = watcher
        self.watch_refresh_s = watch_refresh_s
        self.resolve = resolve
        self._slot_len = {IdKind.BLUEZONE: bluezone_slot_s, IdKind.BLUEZONE_IOS: bluezone_slot_s,
                          IdKind.GAEN: EN_INTERVAL}
        self._tracks: dict[tuple[bytes, int], _Track] = {}
        self._ready: list[Sighting] = []
        self._counts: list[AdoptionCount] = []
        self._recent: dict[str, _Addr] = {}
        self._fast: dict[str, _Fast] = {}  # address → its entry: the fast path of feed()
        # address → (kind, ID, AEM, valid from, valid until, sighting): add().
        self._fast_adv: dict[str, tuple[IdKind, bytes | None, bytes | None, float, float,
                                        _Track | None]] = {}
        self._fast_adv_alt: dict[str, tuple[IdKind, bytes | None, bytes | None, float, float,
                                            _Track | None]] = {}
        self._fast_clock: ClockEpoch | None = None
        self._win: _Window | None = None
        self._flushed: dict[tuple[bytes, int], None] = {}  # recent (ID, slot) keys sent
        self.adverts = 0
        self.late = 0  # adverts for an (ID, slot) already flushed: a supplementary sighting

    @property
    def watcher(self) -> Callable[[float, str, IdKind], None] | None:
        """Told ``(ts, address, kind)`` of every address heard (see the class docstring)."""
        return self._watcher

    @watcher.setter
    def watcher(self, fn: Callable[[float, str, IdKind], None] | None) -> None:
        self._watcher = fn
        self._live = _live_phones(fn)  # derived once here, not per batch or per slow path

    # -- input ----------------------------------------------------------------------------

    def add(self, advert: Advert, clock: ClockEpoch | None = None) -> None:
        """Account one decoded advert.

        Args:
            advert: the advert (its ``ts`` is in ``clock``'s epoch).
            clock: the clock epoch the advert was timestamped in (default: the
                constructor's).
        """
        ck = clock or self._need_clock()
        address = advert.address
        st = self._fast_adv.get(address)
        if st is not None and (st[0] is not advert.kind or st[1] != advert.ident):
            st = self._fast_adv_alt.get(address)  # advert / scan response alternation
        if st is not None and ck is self._fast_clock:
            kind, ident, aem, lo, hi, tr = st
            ts = advert.ts
            if lo <= ts < hi and advert.ident == ident and advert.kind is kind \
                    and advert.aem == aem:
                self.adverts += 1
                if tr is not None:
                    tr.note(ts, advert.rssi)
                    if advert.tx_power is not None:
                        tr.tx_power = advert.tx_power
                return
        if ck is not self._fast_clock:
            self._forget()
            self._fast_clock = ck
        self._observe(advert.ts, address, advert.rssi, advert.kind, advert.ident,
                      advert.aem, advert.tx_power, ck, None)

    def add_report(self, ts: float, address: str, rssi: int | None, data: bytes,
                   clock: ClockEpoch | None = None) -> None:
        """Decode and account one raw report, skipping the decode when ``data`` repeats."""
        self.feed(((ts, address, rssi, data),), clock)

    def feed(self, reports: Sequence[Sequence[Any]], clock: ClockEpoch | None = None) -> int:
        """Decode and account a batch of raw reports: the one fast path of every source.

        Each report is ``(ts, address, rssi, data)`` or ``(ts, address, address_type, rssi,
        data)`` (:data:`ble.records.Report`; a simulator's or a capture's report tuple).
        An address repeating its previous payload within the same window and ID slot skips
        decoding and every lookup but one (habluetooth's trick of skipping repeated raw
        payloads per address): only its sighting's statistics move. Grouping repeats with
        C-level ``zip``/``Counter`` was measured and is slower here: building the tuples
        costs more than this loop. The module is compiled with Cython where it can be
        (``ble.compiled``), which makes this loop about 5× faster.

        Returns:
            The number of reports consumed.
        """
        ck = clock or self._need_clock()
        if ck is not self._fast_clock:
            self._forget()
            self._fast_clock = ck
        slow = _feed(reports, self, ck)
        self.adverts += len(reports) - slow  # the slow path counts its own
        return len(reports)

    def _forget(self) -> None:
        """Drop the fast-path caches (they may point at sightings being handed out)."""
        self._fast.clear()
        self._fast_adv.clear()
        self._fast_adv_alt.clear()

    def _need_clock(self) -> ClockEpoch:
        if self.clock is None:
            raise ValueError("pass the advert's ClockEpoch (or give the aggregator a clock)")
        return self.clock

    def _observe(self, ts: float, address: str, rssi: _MaybeInt, kind: IdKind,
                 ident: bytes | None, aem: bytes | None, tx: _MaybeInt,
                 clock: ClockEpoch, data: bytes | None = None) -> None:
        self.adverts += 1
        win = self._win
        if win is None or ts >= win.end:
            win = self._roll(ts)
        st = self._recent.get(address)
        if st is None:
            st = self._new_addr(address, win)
        rank = _RANK[kind]
        if kind is _IBEACON and ident == BLUEZONE_BEACON:
            rank = _R_BZ_BEACON
        elif kind is _BLUEZONE_IOS and ident is not None:
            rank = _R_ID  # resolved by GATT: counted through its ID
        if rank > st.rank:
            st.rank = rank
            cur = win.devices.get(st.digest)
            if cur is None:
                if len(win.devices) < self.max_ids:
                    win.devices[st.digest] = rank
                elif rank != _R_ID:  # ID carriers are counted (or refused) by their ID
                    self._refuse(win, st.digest)
            elif rank > cur:
                win.devices[st.digest] = rank
        tr: _Track | None = None
        if ident is not None and rank == _R_ID:
            tr = st.track
            if tr is None or tr.ident != ident or not tr.slot_start <= ts < tr.slot_end \
                    or tr.clock != clock:
                tr = st.track = self._track_for(win, kind, ident, ts, clock)
            if tr is not None:
                tr.note(ts, rssi)
                if tx is not None:
                    tr.tx_power = tx
                if aem is not None:
                    tr.aem = aem
        live = self._live
        live_entry = None
        if live is not None:  # the watcher is this LivePhones' seen: a direct (C) call
            live.seen(ts, address, kind)
            live_entry = live.entry(address)
        elif self._watcher is not None:
            self._watcher(ts, address, kind)
        if clock is self._fast_clock and not (
                kind is _BLUEZONE_IOS and ident is None and self.resolve is not None):
            # Let repeats take the fast path until the window or the slot ends (or, with a
            # watcher, until it is due to hear of this address again); an iOS phone whose ID
            # is still being read keeps the slow path, which asks the resolver again.
            if tr is None:
                lo, end = float(win.start), win.end
            else:
                lo, end = max(float(win.start), tr.slot_start), min(win.end, tr.slot_end)
            hi = end
            if self._watcher is not None and ts + self.watch_refresh_s < hi:
                hi = ts + self.watch_refresh_s
            if data is not None:
                fe = _Fast.__new__(_Fast)
                fe.data, fe.lo, fe.hi, fe.end, fe.track, fe.kind, fe.live = \
                    data, lo, hi, end, tr, kind, live_entry
                fe.alt = None
                prev = self._fast.get(address)
                if prev is not None:
                    if prev.data != data:
                        fe.alt = prev
                        prev.alt = None  # one alternate payload, no chain
                    else:
                        fe.alt = prev.alt  # the same payload again: it keeps its alternate
                self._fast[address] = fe
            else:
                prev_adv = self._fast_adv.get(address)
                if prev_adv is not None and (prev_adv[0], prev_adv[1]) != (kind, ident):
                    self._fast_adv_alt[address] = prev_adv
                self._fast_adv[address] = (kind, ident, aem, lo, hi, tr)

    def _new_addr(self, address: str, win: _Window) -> _Addr:
        recent = self._recent
        if len(recent) >= _RECENT_MAX:
            old = next(iter(recent))  # oldest first; the window's digests keep the counts
            del recent[old]
            for cache in (self._fast, self._fast_adv, self._fast_adv_alt):
                cache.pop(old, None)
        st = _Addr.__new__(_Addr)
        st.digest = _siphash(win.k0, win.k1, address.encode())
        st.rank = -1
        st.track = None
        recent[address] = st
        return st

    def _track_for(self, win: _Window, kind: IdKind, ident: bytes, ts: float,
                   clock: ClockEpoch) -> _Track | None:
        slot_len = self._slot_len[kind]
        slot = int(ts // slot_len) * slot_len
        key = (ident, slot)
        tr = self._tracks.get(key)
        if tr is not None and tr.clock != clock:
            # The clock epoch changed mid-slot: close this part so each sighting has one epoch.
            self._ready.append(self._sighting(self._tracks.pop(key)))
            self._forget()
            tr = None
        if tr is None:
            if len(self._tracks) >= self.max_ids:
                self._refuse(win, _siphash(win.k0, win.k1, ident))
                return None
            if key in self._flushed:
                self.late += 1
            tr = self._tracks[key] = _Track(_GAEN if kind is _GAEN else _BLUEZONE, ident, slot,
                                            slot_len, clock)
        if ident not in win.ids:
            if len(win.ids) >= self.max_ids:
                self._refuse(win, _siphash(win.k0, win.k1, ident))
            else:
                win.ids[ident] = kind
        return tr

    def _refuse(self, win: _Window, digest: int) -> None:
        """Count an address or ID that cannot be tracked, by its keyed digest."""
        h = digest & (_OVERFLOW_BITS - 1)
        win.refused[h >> 3] |= 1 << (h & 7)

    # -- output ---------------------------------------------------------------------------

    def _roll(self, ts: float) -> _Window:
        if self._win is not None:
            self._close_window(self._win)
        start = int(ts // self.count_window_s) * self.count_window_s
        self._win = _Window(start, self.count_window_s)
        return self._win

    def _close_window(self, win: _Window) -> None:
        self._recent.clear()
        self._forget()
        by: dict[str, int] = {}
        for rank in win.devices.values():
            if rank != _R_ID:
                name = _RANK_NAMES[rank]
                by[name] = by.get(name, 0) + 1
        bz_android = sum(1 for k in win.ids.values() if k is IdKind.BLUEZONE)
        bz_ios = sum(1 for k in win.ids.values() if k is IdKind.BLUEZONE_IOS)
        gaen = sum(1 for k in win.ids.values() if k is IdKind.GAEN)
        if bz_android:
            by["bluezone"] = bz_android
        if bz_ios:
            by["bluezone_ios"] = by.get("bluezone_ios", 0) + bz_ios
        if gaen:
            by["gaen"] = gaen
        zeros = _OVERFLOW_BITS - int.from_bytes(win.refused, "big").bit_count()
        overflow = round(_OVERFLOW_BITS * math.log(_OVERFLOW_BITS / max(zeros, 1))) \
            if zeros < _OVERFLOW_BITS else 0
        fig = [0] * len(PhoneClass)
        for name, n in by.items():
            cls = _CLASS_OF_NAME.get(name)
            if cls is not None:
                fig[cls] += n
        self._counts.append(AdoptionCount(
            window_start=win.start, window_len=self.count_window_s,
            bluezone=fig[PhoneClass.BLUEZONE], gaen=fig[PhoneClass.GAEN],
            other_phones=fig[PhoneClass.OTHER_PHONE], other_devices=fig[PhoneClass.DEVICE],
            overflow=overflow, by_kind=dict(sorted(by.items()))))

    def _sighting(self, tr: _Track) -> Sighting:
        tr.slot_end = -math.inf  # any later advert must find a new track, never this one
        count, top, median = tr.stats()
        return Sighting(kind=tr.kind, ident=tr.ident, slot_start=tr.slot_start,
                        first_seen=tr.first, last_seen=tr.last, count=count,
                        rssi_max=top, rssi_median=median,
                        clock=tr.clock, tx_power=tr.tx_power,
                        proximity=proximity_of(median, self.thresholds), aem=tr.aem)

    def flush(self, now: float, *, final: bool = False
              ) -> tuple[list[Sighting], list[AdoptionCount]]:
        """Sightings whose slot has ended and adoption windows that have closed.

        Args:
            now: current time in the adverts' clock (capture time in a replay).
            final: return everything still open (shutdown, end of a replay).

        Returns:
            ``(sightings, counts)``: sightings by slot end, then first seen (independent of
            arrival order); counts in the order the windows ended.
        """
        out = self._ready
        self._ready = []
        done = [k for k, tr in self._tracks.items() if final or tr.slot_end <= now]
        if out:
            self._forget()  # a clock change closed sightings (already forgotten there)
        elif done:
            self._drop_cached(done)
        done.sort(key=lambda k: (self._tracks[k].slot_end, self._tracks[k].first, k[0]))
        for k in done:
            out.append(self._sighting(self._tracks.pop(k)))
            self._flushed[k] = None
        if len(self._flushed) > 4 * self.max_ids:  # only recent keys can see late adverts
            for k in list(self._flushed)[: len(self._flushed) // 2]:
                del self._flushed[k]
        if self._win is not None and (final or self._win.end <= now):
            self._close_window(self._win)
            self._win = None
        counts = self._counts
        self._counts = []
        return out, counts

    def _drop_cached(self, keys: list[tuple[bytes, int]]) -> None:
        """Forget the fast-path entries that point at the sightings of ``keys``, about to be
        handed out (a later advert must find a new sighting, counted late). Only those: at a
        slot's end every other address keeps its entry, instead of taking the slow path again
        (at a bus station, 1,500 addresses at each 10-minute EN slot)."""
        gone = {id(self._tracks[k]) for k in keys}
        for address, st in list(self._fast.items()):
            if id(st.track) in gone:
                del self._fast[address]
            elif st.alt is not None and id(st.alt.track) in gone:
                st.alt = None
        for adv_cache in (self._fast_adv, self._fast_adv_alt):
            for address in [a for a, sta in adv_cache.items() if id(sta[5]) in gone]:
                del adv_cache[address]

    def diagnostics(self) -> dict[str, int]:
        """Sizes and counters, for the health topic."""
        return {"adverts": self.adverts, "open_sightings": len(self._tracks),
                "cached_addresses": len(self._recent), "late_adverts": self.late,
                "window_devices": len(self._win.devices) if self._win else 0}


def _live_phones(watcher: Callable[[float, str, IdKind], None] | None) -> LivePhones | None:
    """The :class:`LivePhones` whose ``seen`` is ``watcher``, if it is one: :func:`_feed`
    then calls it directly (a C call in the compiled build, not a Python call)."""
    owner = getattr(watcher, "__self__", None)
    if type(owner) is LivePhones and getattr(watcher, "__name__", "") == "seen":
        return owner
    return None


def _feed(reports: Sequence[Sequence[Any]], agg: WindowAggregator, ck: ClockEpoch) -> int:
    """The loop of :meth:`WindowAggregator.feed`; returns how many reports took the slow
    path. A module function so that the compiled build can type its locals (C doubles for
    the times, C objects for the entry, the sighting and the live count:
    ``ble/_aggregator_c.pxd``)."""
    fast = agg._fast
    watcher = agg._watcher
    live = agg._live  # watcher's LivePhones, if it is one
    refresh = agg.watch_refresh_s
    resolve = agg.resolve
    slow = 0
    for r in reports:
        ts = r[0]
        address = r[1]
        rssi = r[-2]
        data = r[-1]
        st = fast.get(address)  # compiled: a C call on the typed dict
        # Active scanning alternates an advert and its scan response: try both payloads.
        if st is not None and st.data != data:
            st = st.alt
            if st is not None and st.data != data:
                st = None
        if st is not None:
            hi = st.hi
            if st.lo <= ts < hi or (watcher is not None and hi <= ts < st.end):
                if ts >= hi and watcher is not None:
                    # The watcher is due to hear of this address again: tell it here, not
                    # through the slow path (nothing else about the address changed).
                    entry = st.live
                    if entry is not None and entry.alive:
                        entry.last = ts  # the live count's entry, still alive: heard now
                    elif live is not None:
                        live.seen(ts, address, st.kind)
                        st.live = live.entry(address)
                    else:
                        watcher(ts, address, st.kind)
                    due = ts + refresh
                    st.hi = due if due < st.end else st.end
                tr = st.track
                if tr is not None:
                    if rssi is None:
                        tr.no_rssi += 1
                    else:
                        ri = rssi  # compiled: a C long, the bin a C array element
                        tr.hist[ri & 0xFF] += 1
                    if ts > tr.last:
                        tr.last = ts
                    elif ts < tr.first:
                        tr.first = ts
                continue
        slow += 1
        kind, ident, aem, tx = decode(data)
        if kind is _BLUEZONE_IOS and ident is None and resolve is not None:
            ident = resolve(ts, address, r[2] if len(r) > 4 else 1)
        agg._observe(ts, address, rssi, kind, ident, aem, tx, ck, data)
    return slow


class _Live:
    """A device in :class:`LivePhones`' table (a C object in the compiled build)."""

    __slots__ = ("alive", "key", "last", "put", "rank")
    last: float  # last heard
    rank: int  # the most specific PhoneClass it showed
    key: int  # its key in the table
    put: float  # last heard when it was put at the table's end
    alive: bool


class LivePhones:
    """Distinct phones heard in the last ``window_s`` seconds, by kind (memory only).

    The status page's "phones now", fed as :class:`WindowAggregator`'s ``watcher`` (it lives
    here to be compiled with the aggregator's fast path: ``gateway.health.PhonesNow``). It
    classifies devices with the same :data:`~contract.records.PHONE_CLASS` as the batch
    counts. As in the aggregator, addresses are reduced to a keyed digest (SipHash-2-4) under
    a random per-process key before they are counted; the small address → digest cache that
    makes repeated adverts cheap is emptied every ``address_cache_s`` (by default the
    aggregator's adoption window, for which the aggregator holds each address anyway: holding
    it here as long exposes nothing more, and digests a present device once per window
    instead of once per ``window_s``). Both tables are bounded; devices beyond the bound are
    counted as ``untracked``. A device counts as the most specific kind
    it showed (an address seen with a Bluezone ID is Bluezone even if it also sent plain
    adverts).

    Args:
        window_s: the sliding window "now" means.
        address_cache_s: how long an address → digest entry may be kept (at least
            ``window_s``).
        max_entries: table bound.
    """

    def __init__(self, window_s: float = 120.0, max_entries: int = 20000, *,
                 address_cache_s: float = 900.0) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("window_s and max_entries must be positive")
        self.window_s = window_s
        self.address_cache_s = max(window_s, address_cache_s)
        self.max_entries = max_entries
        self.untracked = 0
        self._k0, self._k1 = _random_key()
        # digest → its entry, in the order they were put at the end
        self._seen: OrderedDict[int, _Live] = OrderedDict()
        self._digests: dict[str, _Live] = {}  # address → its entry of _seen
        self._cache_until = -math.inf

    def add(self, adv: Advert) -> None:
        """Account one advert."""
        self.seen(adv.ts, adv.address, adv.kind)

    def seen(self, ts: float, address: str, kind: IdKind) -> None:
        """Account an address heard at ``ts`` as ``kind``.

        The daemon passes this as the aggregator's ``watcher``: it is called on the
        aggregator's slow path only (a new payload, or every ``watch_refresh_s`` per address),
        so a device's last-heard time may lag by that much; repeated adverts cost nothing here.
        """
        if ts >= self._cache_until:
            self._digests.clear()  # an address is held address_cache_s at most
            self._cache_until = ts + self.address_cache_s
        rank = _PHONE_RANK.get(kind, 0)  # PhoneClass.DEVICE
        entry = self._digests.get(address)
        if entry is not None and entry.alive:
            # The common case (every watch_refresh_s per device): the entry is updated in
            # place and stays where it is in the table; _expire moves it to the end when it
            # reaches the front still alive, so it moves once per window_s, not per call.
            entry.last = ts
            if rank > entry.rank:
                entry.rank = rank
            return
        seen = self._seen
        if entry is not None:
            digest = entry.key  # expired meanwhile: counted again, under the same digest
        else:
            digest = _siphash(self._k0, self._k1, address.encode())
        old = seen.get(digest)
        if old is not None:
            old.last = ts
            if rank > old.rank:
                old.rank = rank
        else:
            if len(seen) >= self.max_entries:
                self._expire(ts)
                if len(seen) >= self.max_entries:
                    self.untracked += 1
                    return
            old = _Live.__new__(_Live)
            old.last, old.rank, old.key, old.put, old.alive = ts, rank, digest, ts, True
            seen[digest] = old
        if len(self._digests) < self.max_entries:
            self._digests[address] = old

    def entry(self, address: str) -> _Live | None:
        """The table entry of an address just :meth:`seen` (``None``: not tracked).

        :func:`_feed` keeps it with the address's fast-path entry and refreshes a live entry
        by writing its last-heard time, the whole of what :meth:`seen` would do for an
        address it already holds under a kind it already has."""
        return self._digests.get(address)

    def _expire(self, now: float) -> None:
        seen, cutoff = self._seen, now - self.window_s
        while seen:
            first = next(iter(seen.values()))
            if first.put >= cutoff:
                break  # every later entry was put there later still: all alive
            seen.popitem(last=False)
            if first.last >= cutoff:  # heard since it was put there: alive, to the end
                first.put = first.last
                seen[first.key] = first
            else:
                first.alive = False

    def snapshot(self, now: float) -> dict[str, Any]:
        """Counts over ``[now - window_s, now]`` and the Bluezone share of phones."""
        self._expire(now)
        by = [0] * len(PhoneClass)
        for entry in self._seen.values():
            by[entry.rank] += 1
        bz, gaen = by[PhoneClass.BLUEZONE], by[PhoneClass.GAEN]
        other = by[PhoneClass.OTHER_PHONE]
        phones = bz + gaen + other
        return {"window_s": self.window_s, "phones": phones, "bluezone": bz, "gaen": gaen,
                "other_phones": other, "devices": by[PhoneClass.DEVICE],
                "bluezone_share": round(bz / phones, 4) if phones else None}


_MaybeInt = int | None  # (an alias: the compiled build takes its types from the .pxd)
_U64 = int  # a 64-bit unsigned integer (an unsigned long long in the compiled build)
_M64 = 0xFFFFFFFFFFFFFFFF
_IV0, _IV1, _IV2, _IV3 = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261,
                          0x7465646279746573)  # "somepseudorandomlygeneratedbytes"


def _random_key() -> tuple[int, int]:
    """A fresh random 128-bit :func:`_siphash` key, as its two 64-bit halves."""
    key = os.urandom(16)
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


def _siphash(k0: _U64, k1: _U64, data: bytes) -> _U64:
    """SipHash-2-4 of ``data`` under the key ``(k0, k1)`` (Aumasson and Bernstein's keyed PRF
    for short inputs, the reference's test vectors in ``tests/test_ble_aggregator.py``).

    Written here because it runs on the slow path, for every device a window or the live
    count meets: hashlib's keyed BLAKE2b costs ~1 µs a call there (a new object, a key block,
    keyword arguments) and no library offers a keyed hash callable from C; compiled (typed in
    ``_aggregator_c.pxd``, where every ``& _M64`` is a no-op) this is ~50 ns. Pure Python
    runs the same code, slowly (~13 µs), which only the slow path pays."""
    v0 = k0 ^ _IV0
    v1 = k1 ^ _IV1
    v2 = k0 ^ _IV2
    v3 = k1 ^ _IV3
    n = len(data)
    full = n - (n & 7)
    j = 0
    rounds = 2
    while True:
        if j <= full:  # an 8-byte word, little-endian; the last one ends with the length
            b = n & 0xFF  # compiled: unsigned 64 bits, so the shift cannot overflow
            m = 0 if j < full else b << 56
            for k in range(min(8, n - j)):
                b = data[j + k]
                m |= b << (8 * k)
        else:  # finalization
            m = 0
            v2 ^= 0xFF
            rounds = 4
        v3 ^= m
        for _ in range(rounds):  # SipRound
            v0 = (v0 + v1) & _M64
            v1 = ((v1 << 13) | (v1 >> 51)) & _M64
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _M64
            v2 = (v2 + v3) & _M64
            v3 = ((v3 << 16) | (v3 >> 48)) & _M64
            v3 ^= v2
            v0 = (v0 + v3) & _M64
            v3 = ((v3 << 21) | (v3 >> 43)) & _M64
            v3 ^= v0
            v2 = (v2 + v1) & _M64
            v1 = ((v1 << 17) | (v1 >> 47)) & _M64
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _M64
        if j > full:
            return v0 ^ v1 ^ v2 ^ v3
        v0 ^= m
        j += 8


COMPILED = False
"""Whether the Cython-compiled copy of this module is in use (see :mod:`ble.compiled`)."""
if __name__ == "ble.aggregator":
    from ble.compiled import adopt

    adopt(globals(), "ble._aggregator_c")
