"""F0 IDs ⋈ stored sightings and check-ins → exposure windows with their co-presence.

For each case of an F0 input:

1. **Visits.** Every stored sighting of one of the case's IDs whose time overlaps the ID's
   validity window, widened by the case's tolerance (one Bluezone slot for phone clock error,
   ±2 h for EN) and by the record's own clock uncertainty (unbounded when the gateway's clock
   was never synchronised: such visits are kept and flagged). Hits outside the widened window
   are counted, not used: they are a replayed ID or a clock far off. Identity cases use the
   person's check-ins, found by blind tag, which needs the custodians' approval of the days
   (without it the case is reported as waiting for approval).
2. **Windows.** Visits at one venue closer than ``merge_gap_s`` merge into one exposure
   window; dwell is the time covered by its visits, proximity the nearest class seen.
3. **Co-presence.** For each window ± ``margin_s``: the check-ins of other people at that
   venue (close-contact candidates: masked forms only, and their identities opened in memory
   when an approved :class:`~matcher.custody.Opening` covers the window), distinct other
   tracing IDs by kind with the peak per ID slot (≈ phones), and the gateways' own adoption
   counts (phones not running tracing).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from contract.custody import DAY, IdentityKeyError, lookup_tags, open_identity
from matcher.custody import Opening, Window
from matcher.f0 import F0, F0Case
from matcher.rows import AdoptionSummary, CheckinRow, SightingRow, VenueInfo
from matcher.store_read import StoreReads

log = logging.getLogger(__name__)

PROXIMITY_ORDER = {"near": 0, "medium": 1, "far": 2, "unknown": 3}
VN_TIME = timezone(timedelta(hours=7), "ICT")


@dataclass(frozen=True)
class MatchParams:
    """How windows are built and what counts as co-present."""

    margin_s: float = 1800.0
    merge_gap_s: float = 900.0


@dataclass(frozen=True)
class Visit:
    """One piece of evidence that a case was at a venue."""

    kind: str  # bluezone | gaen | checkin
    venue_id: int
    gateway_id: str
    start: float
    end: float
    proximity: str
    rssi_max: int | None
    adverts: int
    uncertainty: float
    synced: bool
    record_id: int
    ident: bytes = b""
    corrected: bool = False


@dataclass(frozen=True)
class CoPresent:
    """A check-in of someone else at the venue during a window.

    ``subject`` and ``fields`` are set only when custodians approved opening this window
    (personal data, in memory and in the approved report only); otherwise ``masked`` is all.
    """

    ts: float
    kind: str
    masked: str
    gateway_id: str
    subject: str | None = None
    fields: dict[str, str] | None = None

    @property
    def opened(self) -> bool:
        """Whether the identity was opened under an approval."""
        return self.subject is not None


@dataclass
class ExposureWindow:
    """A case at one venue for one stretch of time, with who else was there."""

    case: str
    venue: VenueInfo
    start: float
    end: float
    dwell_s: float
    via: list[str]
    proximity: str
    rssi_max: int | None
    sightings: int
    checkins: int
    gateways: list[str]
    clock_uncertainty_s: float
    clock_synced: bool
    clock_corrected: bool = False  # times re-based on a later clock correction
    co_present: list[CoPresent] = field(default_factory=list)
    other_ids: dict[str, int] = field(default_factory=dict)
    peak_phones: dict[str, int] = field(default_factory=dict)
    adoption: AdoptionSummary = field(default_factory=AdoptionSummary)

    def summary(self) -> str:
        """One line without personal data, Vietnam time (``case: venue 10:05-10:40 ...``)."""
        a = datetime.fromtimestamp(self.start, VN_TIME)
        b = datetime.fromtimestamp(self.end, VN_TIME)
        return (f"{self.case}: {self.venue.label} {a:%Y-%m-%d %H:%M}-{b:%H:%M} (UTC+7), "
                f"{self.dwell_s / 60:.0f} min via {'+'.join(self.via)}, {self.proximity}, "
                f"{len(self.co_present)} co-present check-in(s)")


@dataclass
class CaseResult:
    """Everything found for one case."""

    label: str
    kind: str
    n_ids: int
    hits: int = 0
    out_of_window: int = 0
    windows: list[ExposureWindow] = field(default_factory=list)
    needs_approval: bool = False  # an identity case: its check-ins are found only by approval
    since: float | None = None
    until: float | None = None


@dataclass
class MatchResult:
    """The answer to one F0 input."""

    source: str
    format: str
    signer: str
    generated_at: float
    params: MatchParams
    skipped: int = 0
    cases: list[CaseResult] = field(default_factory=list)
    opening: dict[str, Any] | None = None  # the approved request used, and what it opened

    @property
    def sealed_checkins(self) -> int:
        """Co-present check-ins whose identities stay sealed."""
        return sum(1 for w in self.windows for c in w.co_present if not c.opened)

    @property
    def opened_checkins(self) -> int:
        """Co-present check-ins whose identities were opened under an approval."""
        return sum(1 for w in self.windows for c in w.co_present if c.opened)

    def opening_scope(self, margin_s: float | None = None) -> list[Window]:
        """The windows an opening request should name: every exposure window (± margin) at
        its venue, and, for an identity case not yet looked up, every venue over its period."""
        m = self.params.margin_s if margin_s is None else margin_s
        scope = [Window(w.venue.key, w.start - m, w.end + m) for w in self.windows]
        now = self.generated_at
        for c in self.cases:
            if c.needs_approval:
                scope.append(Window("*", c.since if c.since is not None else now - 21 * DAY,
                                    c.until if c.until is not None else now))
        return scope

    @property
    def windows(self) -> list[ExposureWindow]:
        """Every window of every case, by start time."""
        return sorted((w for c in self.cases for w in c.windows), key=lambda w: w.start)

    @property
    def visits(self) -> list[ExposureWindow]:
        """Same as :attr:`windows` (each window is one visit of a case to a venue)."""
        return self.windows


def _sighting_visit(r: SightingRow) -> Visit:
    return Visit(kind="gaen" if r.kind == "gaen" else "bluezone", venue_id=r.venue_id,
                 gateway_id=r.gateway_id, start=r.first_seen, end=r.last_seen,
                 proximity=r.proximity, rssi_max=r.rssi_max, adverts=r.count,
                 uncertainty=r.clock.uncertainty, synced=r.clock.synced, record_id=r.id,
                 ident=r.ident, corrected=r.clock.corrected)


def _checkin_visit(c: CheckinRow) -> Visit:
    return Visit(kind="checkin", venue_id=c.venue_id, gateway_id=c.gateway_id, start=c.ts,
                 end=c.ts, proximity="unknown", rssi_max=None, adverts=1,
                 uncertainty=c.clock.uncertainty, synced=c.clock.synced, record_id=c.id,
                 corrected=c.clock.corrected)


def id_visits(store: StoreReads, cases: list[F0Case],
              results: list[CaseResult]) -> dict[int, list[Visit]]:
    """Visits per case index for every ID case, one join for all of them."""
    id_cases = [(i, c) for i, c in enumerate(cases) if c.block is not None and c.n_ids]
    if not id_cases:
        return {}
    parts: list[tuple[bytes, int]] = []
    offsets, starts, ends, tols = [], [], [], []
    total = 0
    for _i, c in id_cases:
        assert c.block is not None
        offsets.append(total)
        total += c.n_ids
        parts.append((c.block.packed, c.block.width))
        starts.append(c.block.starts)
        ends.append(c.block.ends)
        tols.append(np.full(c.n_ids, c.tolerance_s))
    lo = np.concatenate(starts) - np.concatenate(tols)
    hi = np.concatenate(ends) + np.concatenate(tols)
    owner = np.asarray(offsets)
    out: dict[int, list[Visit]] = defaultdict(list)
    for gidx, row in store.sightings_for_packed(parts):
        case_i = id_cases[int(np.searchsorted(owner, gidx, side="right")) - 1][0]
        unc = row.clock.uncertainty  # inf when the clock was never synchronised
        res = results[case_i]
        res.hits += 1
        if row.last_seen < lo[gidx] - unc or row.first_seen > hi[gidx] + unc:
            res.out_of_window += 1
            continue
        out[case_i].append(_sighting_visit(row))
    return out


def _merge(case: str, venue: VenueInfo, visits: list[Visit], gap: float) -> list[
        ExposureWindow]:
    visits = sorted(visits, key=lambda v: v.start)
    groups: list[list[Visit]] = []
    for v in visits:
        if groups and v.start <= max(x.end for x in groups[-1]) + gap:
            groups[-1].append(v)
        else:
            groups.append([v])
    out = []
    for g in groups:
        start, end = g[0].start, max(v.end for v in g)
        covered, cur_s, cur_e = 0.0, g[0].start, g[0].end
        for v in g[1:]:  # union of the visit intervals
            if v.start > cur_e:
                covered += cur_e - cur_s
                cur_s, cur_e = v.start, v.end
            else:
                cur_e = max(cur_e, v.end)
        covered += cur_e - cur_s
        rssi = [v.rssi_max for v in g if v.rssi_max is not None]
        out.append(ExposureWindow(
            case=case, venue=venue, start=start, end=end, dwell_s=covered,
            via=sorted({v.kind for v in g}),
            proximity=min((v.proximity for v in g), key=lambda p: PROXIMITY_ORDER.get(p, 3)),
            rssi_max=max(rssi) if rssi else None,
            sightings=sum(1 for v in g if v.kind != "checkin"),
            checkins=sum(1 for v in g if v.kind == "checkin"),
            gateways=sorted({v.gateway_id for v in g}),
            clock_uncertainty_s=max(v.uncertainty for v in g),
            clock_synced=all(v.synced for v in g),
            clock_corrected=any(v.corrected for v in g)))
    return out


def _open(c: CheckinRow, venue: str, opening: Opening | None) -> CoPresent:
    sealed = CoPresent(ts=c.ts, kind=c.kind, masked=c.masked, gateway_id=c.gateway_id)
    if (opening is None or c.key_day is None or c.sealed is None
            or not opening.request.covers(venue, c.ts)):
        return sealed
    key = opening.private(c.key_day)
    if key is None:  # its key day is not among the approved days
        return sealed
    try:
        subject, fields = open_identity(key, c.key_day, c.sealed)
    except IdentityKeyError as err:
        log.error("check-in %d at %s does not open: %s", c.id, venue, err)
        return sealed
    opening.opened += 1
    return CoPresent(ts=c.ts, kind=c.kind, masked=c.masked, gateway_id=c.gateway_id,
                     subject=subject, fields=fields)


def _co_presence(w: ExposureWindow, checkins: list[CheckinRow],
                 sightings: list[tuple[str, bytes, int]], adoption: AdoptionSummary,
                 own_checkins: set[int], own_tags: set[bytes],
                 own_idents: set[bytes], opening: Opening | None) -> None:
    for c in checkins:
        if c.id in own_checkins or own_tags.intersection(c.tags):
            continue
        w.co_present.append(_open(c, w.venue.key, opening))
    ids: dict[str, set[bytes]] = defaultdict(set)
    per_slot: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for kind, ident, slot in sightings:
        if ident in own_idents:
            continue
        k = "gaen" if kind == "gaen" else "bluezone"
        ids[k].add(ident)
        per_slot[(k, slot)].add(ident)
    w.other_ids = {k: len(v) for k, v in sorted(ids.items())}
    peaks: dict[str, int] = {}
    for (k, _slot), v in per_slot.items():
        peaks[k] = max(peaks.get(k, 0), len(v))
    w.peak_phones = dict(sorted(peaks.items()))
    w.adoption = adoption


def _identity_rows(store: StoreReads, case: F0Case, opening: Opening) -> tuple[
        list[CheckinRow], set[bytes]]:
    """A case's check-ins, by the blind tags of its identities on the approved days."""
    lo = -math.inf if case.since is None else case.since
    hi = math.inf if case.until is None else case.until
    days = {d: k for d, k in opening.blind.items()
            if d * DAY <= hi and (d + 1) * DAY > lo}
    tags = lookup_tags(days, case.subjects, case.phones)
    rows = [r for r in store.checkins_for_tags(list(tags), case.since, case.until)
            if any(tags.get(t) == r.key_day for t in r.tags)]
    venues = {r.venue_id: store.venue(r.venue_id).key for r in rows}
    return [r for r in rows if opening.request.covers(venues[r.venue_id], r.ts)], set(tags)


def match_f0(store: StoreReads, f0: F0, params: MatchParams | None = None,
             opening: Opening | None = None) -> MatchResult:
    """Match one verified F0 input against the store.

    Without ``opening``, co-present check-ins are masked and identity cases wait for the
    custodians' approval; with it, the approved windows' identities are opened in memory.
    """
    p = params or MatchParams()
    result = MatchResult(source=f0.source, format=f0.format, signer=f0.signer,
                         generated_at=time.time(), params=p, skipped=f0.skipped)
    result.cases = [CaseResult(label=c.label, kind=c.kind, n_ids=c.n_ids, since=c.since,
                               until=c.until) for c in f0.cases]
    visits = id_visits(store, f0.cases, result.cases)
    own_tags: dict[int, set[bytes]] = {}
    for i, c in enumerate(f0.cases):
        if c.kind != "identity":
            continue
        if opening is None or not opening.request.lookup:
            result.cases[i].needs_approval = True
            continue
        rows, own_tags[i] = _identity_rows(store, c, opening)
        result.cases[i].hits = len(rows)
        visits[i] = [_checkin_visit(r) for r in rows]
    todo: list[tuple[ExposureWindow, set[int], set[bytes], set[bytes]]] = []
    for i, c in enumerate(f0.cases):
        vs = visits.get(i, [])
        by_venue: dict[int, list[Visit]] = defaultdict(list)
        for v in vs:
            by_venue[v.venue_id].append(v)
        own_checkins = {v.record_id for v in vs if v.kind == "checkin"}
        own_idents = {v.ident for v in vs if v.ident}
        windows: list[ExposureWindow] = []
        for vid, group in by_venue.items():
            windows += _merge(c.label, store.venue(vid), group, p.merge_gap_s)
        todo += [(w, own_checkins, own_tags.get(i, set()), own_idents) for w in windows]
        result.cases[i].windows = sorted(windows, key=lambda w: (w.start, w.venue.key))
    # co-presence of every window of every case at once (a few statements, not a few each)
    ranges = [(w.venue.id, w.start - p.margin_s, w.end + p.margin_s) for w, *_ in todo]
    for (w, own_checkins, tags, own_idents), checkins, sightings, adoption in zip(
            todo, store.checkins_in(ranges), store.sightings_in(ranges),
            store.adoption_in(ranges), strict=True):
        _co_presence(w, checkins, sightings, adoption, own_checkins, tags, own_idents,
                     opening)
    if opening is not None:
        result.opening = {"request": opening.request.id, "case": opening.request.case,
                          "custodians": opening.custodians, "opened": opening.opened,
                          "sealed": result.sealed_checkins}
    return result
