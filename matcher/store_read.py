"""Read side of the store: the queries matching and the dashboard run.

The F0 query is a join of a temporary table of F0 IDs against the index on
``sightings(ident)``. The IDs arrive packed (one ``bytes`` of fixed-width IDs, no Python object
per ID) and are sorted first, so consecutive probes land on neighbouring index pages. SQLite
fills the temp table inside one statement from the bound blob (a recursive CTE slicing it) and
is told to drive the join from it (``CROSS JOIN`` fixes SQLite's loop order); PostgreSQL gets
the IDs by binary ``COPY`` and is kept to index probes (see ``_join_sorted``). Measured in
``bench/bench_matcher.py``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from matcher.db import Database, PostgresDatabase, StoreError, pg_binary
from matcher.rows import AdoptionSummary, CheckinRow, EpochInfo, SightingRow, VenueInfo

_SIGHTING_COLUMNS = (
    "s.id, s.gw_id, s.venue_id, s.seq, s.kind, s.ident, s.slot_start, s.first_seen, "
    "s.last_seen, s.count, s.rssi_max, s.rssi_median, s.proximity")
_EPOCH_COLUMNS = (
    "e.boot_id, e.clock_offset, e.synced, COALESCE(e.eff_source, e.source), "
    "COALESCE(e.eff_uncertainty, e.uncertainty), e.eff_source")
_SIGHTING_SELECT = f"{_SIGHTING_COLUMNS}, {_EPOCH_COLUMNS}"
_CHECKIN_SELECT = (
    "c.id, c.gw_id, c.venue_id, c.seq, c.ts, c.kind, c.subject, c.masked, c.fields, "
    + _EPOCH_COLUMNS)


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
            seq=int(r[3]), ts=float(r[4]), kind=r[5], subject=r[6], masked=r[7],
            fields=json.loads(r[8]) if r[8] else {},
            clock=EpochInfo(r[9], float(r[10]), bool(r[11]), r[12], float(r[13]),
                            r[14] is not None))

    # -- F0 queries --------------------------------------------------------------------------
    def sightings_for_idents(self, idents: Sequence[bytes]) -> list[tuple[int, SightingRow]]:
        """Every stored sighting of any of ``idents``, as ``(index into idents, row)``."""
        if not idents:
            return []
        widths = set(map(len, idents))
        if len(widths) == 1:
            return self.sightings_for_packed([(b"".join(idents), widths.pop())])
        out: list[tuple[int, SightingRow]] = []
        for w in widths:
            pos = [i for i, x in enumerate(idents) if len(x) == w]
            got = self.sightings_for_packed([(b"".join(idents[i] for i in pos), w)])
            out += [(pos[i], row) for i, row in got]
        return out

    def sightings_for_packed(self, parts: Sequence[tuple[bytes, int]]) -> list[
            tuple[int, SightingRow]]:
        """Sightings of packed IDs: ``parts`` are ``(IDs back to back, width)`` in order.

        Returns ``(index, row)`` where the index counts IDs across all parts. The IDs are
        sorted before the join so the index is walked in order (neighbouring probes share
        pages), then mapped back.
        """
        import numpy as np

        by_width: dict[int, list[tuple[bytes, int]]] = {}
        base = 0
        for packed, width in parts:
            if width <= 0 or len(packed) % width:
                raise StoreError(f"packed IDs of {len(packed)} bytes are not {width}-byte IDs")
            by_width.setdefault(width, []).append((packed, base))
            base += len(packed) // width
        out: list[tuple[int, SightingRow]] = []
        for width, items in by_width.items():
            packed = b"".join(p for p, _ in items)
            if not packed:
                continue
            gidx = np.concatenate([np.arange(b, b + len(p) // width) for p, b in items])
            order = np.argsort(np.frombuffer(packed, dtype=f"S{width}"), kind="stable")
            ordered = np.frombuffer(packed, dtype=f"V{width}")[order].tobytes()
            back = gidx[order]
            for pos, row in self._join_sorted(ordered, width):
                out.append((int(back[pos]), row))
        return out

    def _join_sorted(self, packed: bytes, width: int) -> list[tuple[int, SightingRow]]:
        db = self.db
        n = len(packed) // width
        if isinstance(db, PostgresDatabase):
            import numpy as np

            table = f"f0_ids_{secrets.token_hex(8)}"
            with db.transaction():
                # The planner expects every F0 ID to match a row and picks a hash join over a
                # sequential scan of all sightings; almost none match, and probing the ident
                # index in sorted order is several times faster (bench/bench_matcher.py).
                for setting in ("enable_hashjoin", "enable_mergejoin", "jit"):
                    db.execute(f"SET LOCAL {setting} = off")
                # An unlogged table, not a temp table: parallel workers cannot read temp
                # tables, and splitting the probes over workers halves the join on 2 cores.
                # Created and dropped in this transaction, so a crash leaves nothing behind.
                for setting in ("parallel_setup_cost", "parallel_tuple_cost"):
                    db.execute(f"SET LOCAL {setting} = 0")
                db.execute(f"CREATE UNLOGGED TABLE {table} (ident BYTEA NOT NULL, "
                           "idx INTEGER NOT NULL)")
                db.copy_binary(table, ("ident", "idx"), pg_binary([
                    ("bytea", np.frombuffer(packed, dtype=f"S{width}")),
                    ("int4", np.arange(n, dtype=np.int32))]))
                db.execute(f"ANALYZE {table}")
                # Epochs are looked up afterwards: joined in here, with hash joins off, the
                # planner may loop over every epoch around the parallel probe.
                hits = db.execute(f"SELECT f.idx, {_SIGHTING_COLUMNS}, s.epoch_id FROM {table} "
                                  "f JOIN sightings s ON s.ident = f.ident")
                db.execute(f"DROP TABLE {table}")
                epochs = {int(r[0]): tuple(r[1:]) for r in db.execute(
                    f"SELECT e.id, {_EPOCH_COLUMNS} FROM clock_epochs e WHERE e.id = ANY(?)",
                    (sorted({int(h[-1]) for h in hits}),))} if hits else {}
                rows = [(*h[:-1], *epochs[int(h[-1])]) for h in hits]
        else:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS f0_ids (ident BLOB NOT NULL, "
                       "idx INTEGER NOT NULL)")
            db.execute("BEGIN")  # deferred: reads plus temp writes take no lock on the store
            try:
                db.execute("DELETE FROM f0_ids")
                # Filled inside SQLite from one bound blob: no Python object per F0 ID.
                db.execute("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                           "WHERE i < ?) INSERT INTO f0_ids (ident, idx) "
                           "SELECT substr(?, i * ? + 1, ?), i FROM n", (n - 1, packed, width,
                                                                          width))
                rows = db.execute(
                    f"SELECT f.idx, {_SIGHTING_SELECT} FROM f0_ids f CROSS JOIN sightings s "
                    "ON s.ident = f.ident JOIN clock_epochs e ON e.id = s.epoch_id")
                db.execute("DELETE FROM f0_ids")
            finally:
                db.execute("COMMIT")
        return [(int(r[0]), self._sighting(r[1:])) for r in rows]

    def checkins_for_identity(self, subjects: Sequence[str], phones: Sequence[str] = (),
                              since: float | None = None,
                              until: float | None = None) -> list[CheckinRow]:
        """Check-ins of one person (an identity F0), oldest first.

        Args:
            subjects: exact subjects (CCCD number, certificate id...).
            phones: normalised phones (:func:`matcher.identity.normalize_phone`).
            since: earliest check-in time, if any.
            until: latest check-in time, if any.
        """
        conds, params = [], []
        if subjects:
            conds.append(f"c.subject IN ({', '.join('?' for _ in subjects)})")
            params += list(subjects)
        if phones:
            conds.append(f"c.phone IN ({', '.join('?' for _ in phones)})")
            params += list(phones)
        if not conds:
            return []
        rows = self.db.execute(
            f"SELECT {_CHECKIN_SELECT} FROM checkins c JOIN clock_epochs e ON e.id = c.epoch_id"
            f" WHERE ({' OR '.join(conds)}) AND c.ts >= ? AND c.ts <= ? ORDER BY c.ts",
            (*params, -1e300 if since is None else since, 1e300 if until is None else until))
        return [self._checkin(r) for r in rows]

    # -- co-presence -------------------------------------------------------------------------
    def sightings_at(self, venue_id: int, start: float,
                     end: float) -> list[tuple[str, bytes, int]]:
        """``(kind, ident, slot_start)`` of sightings at a venue overlapping ``[start, end]``."""
        span = self.stat("max_span")
        rows = self.db.execute(
            "SELECT kind, ident, slot_start FROM sightings WHERE venue_id = ? AND "
            "first_seen >= ? AND first_seen <= ? AND last_seen >= ?",
            (venue_id, start - span, end, start))
        return [(k, bytes(i), int(s)) for k, i, s in rows]

    def checkins_at(self, venue_id: int, start: float, end: float) -> list[CheckinRow]:
        """Check-ins at a venue within ``[start, end]``, oldest first."""
        rows = self.db.execute(
            f"SELECT {_CHECKIN_SELECT} FROM checkins c JOIN clock_epochs e ON e.id = c.epoch_id"
            " WHERE c.venue_id = ? AND c.ts >= ? AND c.ts <= ? ORDER BY c.ts",
            (venue_id, start, end))
        return [self._checkin(r) for r in rows]

    def adoption_at(self, venue_id: int, start: float, end: float) -> AdoptionSummary:
        """Adoption counts of the counting windows at a venue overlapping ``[start, end]``."""
        longest = self.stat("max_window_len", 3600.0)
        rows = self.db.execute(
            "SELECT gw_id, window_start, window_len, bluezone, gaen, other_phones FROM "
            "adoption_counts WHERE venue_id = ? AND window_start >= ? AND window_start <= ?",
            (venue_id, start - longest, end))
        out = AdoptionSummary()
        for gw_id, ws, wl, bz, en, other in rows:
            if ws + wl <= start:
                continue
            out.windows += 1
            out.max_bluezone = max(out.max_bluezone, int(bz))
            out.max_gaen = max(out.max_gaen, int(en))
            out.max_other_phones = max(out.max_other_phones, int(other))
            name = self.gateway_name(int(gw_id))
            out.by_gateway[name] = max(out.by_gateway.get(name, 0), int(other))
        return out

