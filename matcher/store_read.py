"""Read side of the store: the queries matching and the dashboard run.

The F0 query joins the F0 IDs' integer keys against the index on
``sightings(ident_key)`` (:func:`matcher.schema.ident_key`). The IDs arrive packed (one
``bytes`` of fixed-width IDs, no Python object per ID); their keys are computed with numpy and
sorted, so consecutive probes land on neighbouring index pages. SQLite fills a temp table
inside one statement from a bound JSON array and is told to drive the join from it;
PostgreSQL takes the keys as one binary ``int8[]`` parameter per probe connection, each
probing a slice of the sorted keys (see ``_pg_join_keys``). Measured in
``bench/bench_matcher.py``.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from typing import Any

from matcher import schema
from matcher.db import Database, PostgresDatabase, Row, StoreError, int8_array
from matcher.rows import AdoptionSummary, CheckinRow, EpochInfo, SightingRow, VenueInfo

_SIGHTING_COLUMNS = (
    "s.id, s.gw_id, s.venue_id, s.seq, s.kind, s.ident, s.slot_start, s.first_seen, "
    "s.last_seen, s.count, s.rssi_max, s.rssi_median, s.proximity")
_EPOCH_COLUMNS = (
    "e.boot_id, e.clock_offset, e.synced, COALESCE(e.eff_source, e.source), "
    "COALESCE(e.eff_uncertainty, e.uncertainty), e.eff_source")
_SIGHTING_SELECT = f"{_SIGHTING_COLUMNS}, {_EPOCH_COLUMNS}"
_CHECKIN_SELECT = (
    "c.id, c.gw_id, c.venue_id, c.seq, c.ts, c.kind, c.masked, c.key_day, c.tag_s, c.tag_p, "
    "c.sealed, " + _EPOCH_COLUMNS)


class StoreReads:
    """Queries over a migrated database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._venues: dict[int, VenueInfo] = {}
        self._gw_names: dict[int, str] = {}

    # -- small lookups -----------------------------------------------------------------------
    def venue(self, venue_id: int) -> VenueInfo:
        """A venue by id (cached)."""
        v = self._venues.get(venue_id)
        if v is None:
            rows = self.db.execute("SELECT id, province, venue, name, district FROM venues "
                                   "WHERE id = ?", (venue_id,))
            if not rows:
                raise StoreError(f"no venue with id {venue_id}")
            i, p, code, name, district = rows[0]
            v = VenueInfo(int(i), p, code, name, district)
            self._venues[venue_id] = v
        return v

    def venues(self) -> list[VenueInfo]:
        """Every venue, by key."""
        rows = self.db.execute("SELECT id FROM venues ORDER BY province, venue")
        return [self.venue(int(r[0])) for r in rows]

    def gateway_name(self, gw_id: int) -> str:
        """The registry id of an internal gateway id (cached)."""
        name = self._gw_names.get(gw_id)
        if name is None:
            name = self.db.scalar("SELECT gateway_id FROM gateways WHERE id = ?", (gw_id,))
            if name is None:
                raise StoreError(f"no gateway with id {gw_id}")
            self._gw_names[gw_id] = name
        return str(name)

    def stat(self, key: str, default: float = 0.0) -> float:
        """A running figure from the ``stats`` table."""
        v = self.db.scalar("SELECT value FROM stats WHERE key = ?", (key,))
        return default if v is None else float(v)

    def row_counts(self) -> dict[str, int]:
        """Rows per data table (for status output and tests)."""
        return {t: int(self.db.scalar(f"SELECT COUNT(*) FROM {t}")) for t in (
            "venues", "gateways", "batches", "clock_epochs", "sightings", "checkins",
            "adoption_counts", "clock_corrections")}

    # -- row builders ------------------------------------------------------------------------
    def _sighting(self, r: Sequence[Any]) -> SightingRow:
        return SightingRow(
            id=int(r[0]), gateway_id=self.gateway_name(int(r[1])), venue_id=int(r[2]),
            seq=int(r[3]), kind=r[4], ident=bytes(r[5]), slot_start=int(r[6]),
            first_seen=float(r[7]), last_seen=float(r[8]), count=int(r[9]), rssi_max=r[10],
            rssi_median=r[11], proximity=r[12],
            clock=EpochInfo(r[13], float(r[14]), bool(r[15]), r[16], float(r[17]),
                            r[18] is not None))

    def _checkin(self, r: Sequence[Any]) -> CheckinRow:
        return CheckinRow(
            id=int(r[0]), gateway_id=self.gateway_name(int(r[1])), venue_id=int(r[2]),
            seq=int(r[3]), ts=float(r[4]), kind=r[5], masked=r[6],
            key_day=None if r[7] is None else int(r[7]),
            tags=tuple(bytes(t) for t in (r[8], r[9]) if t is not None),
            sealed=None if r[10] is None else bytes(r[10]),
            clock=EpochInfo(r[11], float(r[12]), bool(r[13]), r[14], float(r[15]),
                            r[16] is not None))

    # -- F0 queries --------------------------------------------------------------------------
    def sightings_for_idents(self, idents: Sequence[bytes]) -> list[tuple[int, SightingRow]]:
        """Every stored sighting of any of ``idents``, as ``(index into idents, row)``."""
        by_width: dict[int, list[int]] = {}
        for i, x in enumerate(idents):
            by_width.setdefault(len(x), []).append(i)
        parts = [(b"".join(idents[i] for i in pos), w) for w, pos in by_width.items()]
        order = [i for pos in by_width.values() for i in pos]
        return [(order[j], row) for j, row in self.sightings_for_packed(parts)]

    def sightings_for_packed(self, parts: Sequence[tuple[bytes, int]]) -> list[
            tuple[int, SightingRow]]:
        """Sightings of packed IDs: ``parts`` are ``(IDs back to back, width)`` in order.

        Returns ``(index, row)`` where the index counts IDs across all parts (an ID listed
        twice gets the row under each index). The join runs on the IDs' integer keys, sorted
        and deduplicated so the index is walked in order (neighbouring probes share pages);
        each row found is then checked against the whole ID, so IDs sharing a key prefix
        never match each other.
        """
        import numpy as np

        bases, base, keys = [], 0, []
        for packed, width in parts:
            if width <= 0 or len(packed) % width:
                raise StoreError(f"packed IDs of {len(packed)} bytes are not {width}-byte IDs")
            bases.append(base)
            base += len(packed) // width
            keys.append(schema.ident_keys(packed, width))
        if not base:
            return []
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        by_key = all_keys[order]
        # Deduplicated by hand: the array is sorted already, and np.unique sorts again (or
        # hashes, in numpy 2.3: ten times slower than this for a million keys).
        distinct = np.ones(len(by_key), dtype=bool)
        distinct[1:] = by_key[1:] != by_key[:-1]
        probe = by_key[distinct]
        # In slices, so a national EN export (millions of RPIs) does not become one
        # gigabyte-sized parameter or JSON text.
        hits = [h for lo in range(0, len(probe), JOIN_SLICE)
                for h in self._join_keys(probe[lo:lo + JOIN_SLICE])]
        if not hits:
            return []
        found = np.fromiter((h[0] for h in hits), dtype=np.int64, count=len(hits))
        first = np.searchsorted(by_key, found, side="left").tolist()
        last = np.searchsorted(by_key, found, side="right").tolist()
        out: list[tuple[int, SightingRow]] = []
        for h, lo, hi in zip(hits, first, last, strict=True):
            row = self._sighting(h[1:])
            for j in order[lo:hi].tolist():
                k = bisect.bisect_right(bases, j) - 1
                packed, width = parts[k]
                at = (j - bases[k]) * width
                if packed[at:at + width] == row.ident:
                    out.append((j, row))
        return out

    def _join_keys(self, keys: Any) -> list[Row]:
        """Rows ``(ident_key, sighting columns, epoch columns)`` whose key is in ``keys``.

        ``keys`` is a sorted, duplicate-free int64 array.
        """
        db = self.db
        if isinstance(db, PostgresDatabase):
            return _pg_join_keys(db, keys)
        db.execute("CREATE TEMP TABLE IF NOT EXISTS f0_keys (k INTEGER NOT NULL)")
        db.execute("BEGIN")  # deferred: reads plus temp writes take no lock on the store
        try:
            db.execute("DELETE FROM f0_keys")
            # One bound JSON array, expanded inside SQLite: no statement per F0 key.
            db.execute("INSERT INTO f0_keys (k) SELECT value FROM json_each(?)",
                       (json.dumps(keys.tolist()),))
            # CROSS JOIN fixes SQLite's loop order: the F0 keys drive, the index is probed.
            rows = db.execute(
                f"SELECT s.ident_key, {_SIGHTING_SELECT} FROM f0_keys f CROSS JOIN sightings s"
                " ON s.ident_key = f.k JOIN clock_epochs e ON e.id = s.epoch_id")
            db.execute("DELETE FROM f0_keys")
        finally:
            db.execute("COMMIT")
        return rows

    def checkins_for_tags(self, tags: Sequence[bytes], since: float | None = None,
                          until: float | None = None) -> list[CheckinRow]:
        """Check-ins carrying any of the blind ``tags`` (an identity F0, after custodians
        approved its days), oldest first.

        Args:
            tags: blind tags of the person's subject and phone for the approved days.
            since: earliest check-in time, if any.
            until: latest check-in time, if any.
        """
        if not tags:
            return []
        marks = ", ".join("?" for _ in tags)
        rows = self.db.execute(
            f"SELECT {_CHECKIN_SELECT} FROM checkins c JOIN clock_epochs e ON e.id = c.epoch_id"
            f" WHERE (c.tag_s IN ({marks}) OR c.tag_p IN ({marks})) AND c.ts >= ? AND c.ts <= ?"
            " ORDER BY c.ts",
            (*tags, *tags, -1e300 if since is None else since, 1e300 if until is None else until))
        return [self._checkin(r) for r in rows]

    # -- co-presence -------------------------------------------------------------------------
    # Each takes many ``(venue_id, start, end)`` ranges and answers all of them in a few
    # statements: a match asks for every exposure window at once, and one statement per
    # window made the round trips (three per window) most of a large match on PostgreSQL.
    def sightings_at(self, venue_id: int, start: float,
                     end: float) -> list[tuple[str, bytes, int]]:
        """``(kind, ident, slot_start)`` of sightings at a venue overlapping ``[start, end]``."""
        return self.sightings_in([(venue_id, start, end)])[0]

    def sightings_in(self, ranges: Sequence[tuple[int, float, float]]) -> list[
            list[tuple[str, bytes, int]]]:
        """:meth:`sightings_at` for each range, in order."""
        span = self.stat("max_span")
        out: list[list[tuple[str, bytes, int]]] = [[] for _ in ranges]
        for r in self._per_range(
                ranges, "s.kind, s.ident, s.slot_start", "sightings s",
                "s.venue_id = w.venue AND s.first_seen >= w.a - ? AND s.first_seen <= w.b "
                "AND s.last_seen >= w.a", (span,)):
            # both drivers already return (str, bytes, int): no conversion per row (a match
            # can read millions of these)
            out[r[0]].append(r[1:])
        return out

    def checkins_at(self, venue_id: int, start: float, end: float) -> list[CheckinRow]:
        """Check-ins at a venue within ``[start, end]``, oldest first."""
        return self.checkins_in([(venue_id, start, end)])[0]

    def checkins_in(self, ranges: Sequence[tuple[int, float, float]]) -> list[
            list[CheckinRow]]:
        """:meth:`checkins_at` for each range, in order."""
        out: list[list[CheckinRow]] = [[] for _ in ranges]
        for r in self._per_range(
                ranges, _CHECKIN_SELECT,
                "checkins c JOIN clock_epochs e ON e.id = c.epoch_id",
                "c.venue_id = w.venue AND c.ts >= w.a AND c.ts <= w.b", ()):
            out[int(r[0])].append(self._checkin(r[1:]))
        for rows in out:
            rows.sort(key=lambda c: (c.ts, c.id))
        return out

    def adoption_at(self, venue_id: int, start: float, end: float) -> AdoptionSummary:
        """Adoption counts of the counting windows at a venue overlapping ``[start, end]``."""
        return self.adoption_in([(venue_id, start, end)])[0]

    def adoption_in(self, ranges: Sequence[tuple[int, float, float]]) -> list[AdoptionSummary]:
        """:meth:`adoption_at` for each range, in order."""
        longest = self.stat("max_window_len", 3600.0)
        out = [AdoptionSummary() for _ in ranges]
        for i, gw_id, ws, wl, bz, en, other in self._per_range(
                ranges, "a.gw_id, a.window_start, a.window_len, a.bluezone, a.gaen, "
                "a.other_phones", "adoption_counts a",
                "a.venue_id = w.venue AND a.window_start >= w.a - ? AND a.window_start <= w.b",
                (longest,)):
            if ws + wl <= ranges[int(i)][1]:
                continue
            summary = out[int(i)]
            summary.windows += 1
            summary.max_bluezone = max(summary.max_bluezone, int(bz))
            summary.max_gaen = max(summary.max_gaen, int(en))
            summary.max_other_phones = max(summary.max_other_phones, int(other))
            name = self.gateway_name(int(gw_id))
            summary.by_gateway[name] = max(summary.by_gateway.get(name, 0), int(other))
        return out

    def _per_range(self, ranges: Sequence[tuple[int, float, float]], columns: str,
                   source: str, condition: str, params: Sequence[Any]) -> list[Row]:
        """Rows ``(i, columns...)`` of ``source`` meeting ``condition`` for each range, where
        ``w(i, venue, a, b)`` lists the ranges (``i`` their position); a chunk of ranges per
        statement.

        Each range must probe the venue/time index on its own. SQLite keeps the written loop
        order of a ``CROSS JOIN``. PostgreSQL, unable to estimate ranges that come from
        another table, would hash-join every sighting instead (the bench's match of 9,552
        windows took 38 s instead of 6), so it gets a ``LATERAL`` subquery that ``OFFSET 0``
        keeps from being flattened into that join.
        """
        if self.db.dialect == "sqlite":
            row = "(?, ?, ?, ?)"
            body = f"SELECT w.i, {columns} FROM w CROSS JOIN {source} WHERE {condition}"
        else:  # casts: the VALUES columns get one type whatever Python values arrive
            row = "(?::bigint, ?::bigint, ?::double precision, ?::double precision)"
            body = (f"SELECT w.i, x.* FROM w CROSS JOIN LATERAL (SELECT {columns} FROM "
                    f"{source} WHERE {condition} OFFSET 0) x")
        out: list[Row] = []
        for lo in range(0, len(ranges), _RANGES_PER_STATEMENT):
            chunk = ranges[lo:lo + _RANGES_PER_STATEMENT]
            values: list[Any] = []
            for i, (venue, a, b) in enumerate(chunk, lo):
                values += (i, venue, a, b)
            out += self.db.execute(
                f"WITH w (i, venue, a, b) AS (VALUES {', '.join([row] * len(chunk))}) {body}",
                (*values, *params))
        return out

#: F0 keys per join statement (or per set of probe connections on PostgreSQL).
JOIN_SLICE = 2_000_000

#: Ranges per co-presence statement: 4 parameters each, under SQLite's oldest limit of 999.
_RANGES_PER_STATEMENT = 240

#: Fewer F0 keys than this are probed on one connection (more connections only pay off for
#: large joins; bench/bench_matcher.py).
PG_SPLIT_MIN_KEYS = 20_000

# The array arrives through an init plan (``(SELECT ?)``), so the planner neither estimates the
# selectivity of each of a million elements (seconds of planning) nor sees a huge row count
# that would tempt it into a sequential scan: it probes the index once per key, in key order.
# Epochs are looked up afterwards: joined in here, the planner, expecting a handful of rows,
# may put the epochs outside and repeat the whole probe once per epoch.
_PG_KEYS_SQL = (f"SELECT s.ident_key, {_SIGHTING_COLUMNS}, s.epoch_id FROM sightings s "
                "WHERE s.ident_key = ANY((SELECT ?::int8[])::int8[])")


def _pg_join_keys(db: PostgresDatabase, keys: Any) -> list[Row]:
    """The F0 join on PostgreSQL: sorted keys split into contiguous slices, one per probe
    connection (:meth:`PostgresDatabase.probe_connections`), probed at once."""
    import numpy as np

    # Inside an open transaction only this connection sees its own writes: keep to it.
    conns = ([db] if db.in_transaction or len(keys) < PG_SPLIT_MIN_KEYS
             else db.probe_connections())
    if len(conns) == 1:
        hits = db.execute(_PG_KEYS_SQL, (int8_array(keys),))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(conns), thread_name_prefix="f0-probe") as pool:
            hits = [h for part in pool.map(
                lambda c, k: c.execute(_PG_KEYS_SQL, (int8_array(k),)), conns,
                np.array_split(keys, len(conns))) for h in part]
    if not hits:
        return []
    epochs = {int(r[0]): tuple(r[1:]) for r in db.execute(
        f"SELECT e.id, {_EPOCH_COLUMNS} FROM clock_epochs e WHERE e.id = ANY(?)",
        (sorted({int(h[-1]) for h in hits}),))}
    return [(*h[:-1], *epochs[int(h[-1])]) for h in hits]
