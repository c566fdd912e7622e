"""The matcher's store: one schema on SQLite (default, zero set-up) and PostgreSQL (a province).

Writes come from ingest (:meth:`Store.add_batch`, one transaction per batch, idempotent on
``(gateway, seq)``), gateway status and health, and ingest counters. Reads serve matching
(:mod:`matcher.match`) and the dashboard. :meth:`Store.purge` enforces retention.

Times are stored as the gateway's wall-clock estimate; each record also points at the clock
epoch (boot id, offset, sync state, source, uncertainty) it was computed in, so a later clock
correction can re-time it and matching can widen windows by the uncertainty.

Example::

    store = open_store("sqlite:///var/lib/bzgw-matcher/matcher.db")
    store.add_batch(entry, header, batch)
    store.purge(time.time(), 21)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Literal

from contract.batch import Batch
from contract.records import Sighting
from contract.registry import GatewayEntry
from core.clock import ClockEpoch
from matcher import partitions, retime, schema
from matcher.db import MIGRATION_LOCK, Database, StoreError, connect
from matcher.rows import Counter, EpochInfo, GatewayState, HeaderLike
from matcher.store_read import StoreReads

AddResult = Literal["stored", "duplicate", "replay"]
DAY = 86400.0
_SIGHTING_COLS = ("gw_id", "venue_id", "seq", "epoch_id", "kind", "ident", "ident_key",
                  "slot_start", "first_seen", "last_seen", "count", "rssi_max", "rssi_median",
                  "tx_power", "proximity", "aem")
_CHECKIN_COLS = ("gw_id", "venue_id", "seq", "epoch_id", "ts", "kind", "masked", "key_day",
                 "tag_s", "tag_p", "sealed")
_COUNT_COLS = ("gw_id", "venue_id", "seq", "window_start", "window_len", "bluezone", "gaen",
               "other_phones", "other_devices", "overflow", "by_kind")


class Store(StoreReads):
    """A migrated database plus small caches of venue, gateway and epoch ids."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._gw_ids: dict[str, tuple[int, int]] = {}  # gateway id -> (gw_id, venue_id)
        self._epoch_ids: dict[tuple[int, ClockEpoch], int] = {}
        self._stat_floor: dict[str, float] = {}  # values the stats table holds at least
        self._pending_counts: dict[tuple[str, str], int] = {}  # written at transaction end
        self._pending_stats: dict[str, float] = {}
        self._tx_depth = 0
        self.migrate()
        partitions.ensure(db)

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""
        db = self.db
        done: list[int] = []
        with db.transaction():
            if db.dialect == "postgres":  # concurrent matchers starting together
                db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY "
                       "KEY, name TEXT NOT NULL, applied_at "
                       + schema.render("{real}", db.dialect) + " NOT NULL)")
            applied = {int(r[0]) for r in db.execute("SELECT version FROM schema_migrations")}
            if applied and max(applied) > schema.SCHEMA_VERSION:
                raise StoreError(f"database schema version {max(applied)} is newer than this "
                                 f"matcher ({schema.SCHEMA_VERSION}): upgrade bzgw")
            for m in schema.pending(applied):
                for stmt in m.statements if m.dialect in (None, db.dialect) else ():
                    db.execute(schema.render(stmt, db.dialect))
                db.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                           "VALUES (?, ?, ?)", (m.version, m.name, time.time()))
                done.append(m.version)
        return done

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- registry -> ids ---------------------------------------------------------------------
    def ensure_gateway(self, entry: GatewayEntry) -> tuple[int, int]:
        """``(gw_id, venue_id)`` for a registry entry, creating or moving it as registered."""
        cached = self._gw_ids.get(entry.id)
        db = self.db
        if cached is None or self._venue_changed(cached[1], entry):
            db.execute("INSERT INTO venues (province, venue, name, district) VALUES (?,?,?,?) "
                       "ON CONFLICT (province, venue) DO UPDATE SET name = excluded.name, "
                       "district = excluded.district",
                       (entry.province, entry.venue, entry.venue_name, entry.district))
            venue_id = int(db.scalar("SELECT id FROM venues WHERE province = ? AND venue = ?",
                                     (entry.province, entry.venue)))
            db.execute("INSERT INTO gateways (gateway_id, venue_id) VALUES (?, ?) ON CONFLICT "
                       "(gateway_id) DO UPDATE SET venue_id = excluded.venue_id",
                       (entry.id, venue_id))
            gw_id = int(db.scalar("SELECT id FROM gateways WHERE gateway_id = ?", (entry.id,)))
            cached = (gw_id, venue_id)
            self._gw_ids[entry.id] = cached
            self._venues.pop(venue_id, None)
            self._gw_names[gw_id] = entry.id
        return cached

    def _venue_changed(self, venue_id: int, entry: GatewayEntry) -> bool:
        v = self.venue(venue_id)
        return (v.province, v.venue, v.name, v.district) != (
            entry.province, entry.venue, entry.venue_name, entry.district)

    def _epoch_id(self, gw_id: int, e: ClockEpoch) -> int:
        key = (gw_id, e)
        got = self._epoch_ids.get(key)
        if got is not None:
            return got
        params = (gw_id, e.boot_id, e.offset, int(e.synced), str(e.source), e.uncertainty)
        self.db.execute(
            "INSERT INTO clock_epochs (gw_id, boot_id, clock_offset, synced, source, "
            "uncertainty, applied_offset) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (*params, e.offset))
        got = int(self.db.scalar(
            "SELECT id FROM clock_epochs WHERE gw_id = ? AND boot_id = ? AND clock_offset = ? "
            "AND synced = ? AND source = ? AND uncertainty = ?", params))
        self._epoch_ids[key] = got
        return got

    # -- ingest ------------------------------------------------------------------------------
    def add_batch(self, entry: GatewayEntry, header: HeaderLike, batch: Batch, *,
                  digest: bytes = b"", size: int = 0,
                  received_at: float | None = None) -> AddResult:
        """Store one opened batch, once.

        Args:
            entry: the registry entry of the gateway that signed it.
            header: its header (gateway id, sequence number, created-at).
            batch: the opened records.
            digest: a hash of the sealed bytes; a known ``seq`` arriving with another digest
                is a replay (a different batch reusing a sequence number).
            size: sealed size in bytes (for statistics).
            received_at: when it arrived (default now).

        Returns:
            ``"stored"``, ``"duplicate"`` (already stored: nothing written) or ``"replay"``
            (sequence number reused or already purged: nothing written).
        """
        if header.gateway_id != entry.id:
            raise StoreError(f"header gateway {header.gateway_id!r} is not {entry.id!r}")
        now = time.time() if received_at is None else received_at
        try:
            with self.transaction():
                gw_id, venue_id = self.ensure_gateway(entry)
                verdict = self._seq_verdict(gw_id, header.seq, digest)
                if verdict is not None:
                    return verdict
                self._insert_batch(gw_id, venue_id, header, batch, digest, size, now)
        except self.db.integrity_errors:
            return "duplicate"  # another matcher process stored this (gateway, seq) first
        return "stored"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (a savepoint when nested) that forgets cached ids if it fails.

        Use this rather than ``db.transaction()`` around store calls: ids and figures cached
        inside a rolled-back transaction may not exist.

        Counter and running-figure updates made inside are written at the end of the
        outermost level, sorted, after every per-gateway row: two matcher processes storing
        groups of batches on PostgreSQL then take row locks in one order (gateway rows by
        venue and gateway, then counters, then figures) and cannot deadlock.
        """
        outer = self._tx_depth == 0
        # a failed savepoint takes back only what was queued inside it
        saved = ({}, {}) if outer else (dict(self._pending_counts), dict(self._pending_stats))
        self._tx_depth += 1
        try:
            with self.db.transaction():
                yield
                if outer:
                    self._flush_pending()
        except BaseException:
            self._gw_ids.clear()
            self._epoch_ids.clear()
            self._stat_floor.clear()
            self._pending_counts, self._pending_stats = saved
            raise
        finally:
            self._tx_depth -= 1

    def _flush_pending(self) -> None:
        counts, stats = self._pending_counts, self._pending_stats
        self._pending_counts, self._pending_stats = {}, {}
        now = time.time()
        for (reason, gw), n in sorted(counts.items()):
            self.db.execute(
                "INSERT INTO ingest_counters (reason, gateway_id, n, updated_at) VALUES "
                "(?,?,?,?) ON CONFLICT (reason, gateway_id) DO UPDATE SET n = "
                "ingest_counters.n + excluded.n, updated_at = excluded.updated_at",
                (reason, gw, n, now))
        for key, value in sorted(stats.items()):
            # stats only grow: a value not above what this store last wrote needs no statement
            if value <= self._stat_floor.get(key, float("-inf")):
                continue
            self._stat_floor[key] = value
            self.db.execute(
                "INSERT INTO stats (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN excluded.value > stats.value THEN excluded.value ELSE "
                "stats.value END", (key, value))

    def _seq_verdict(self, gw_id: int, seq: int, digest: bytes) -> AddResult | None:
        row = self.db.execute("SELECT digest FROM batches WHERE gw_id = ? AND seq = ?",
                              (gw_id, seq))
        if row:
            known = bytes(row[0][0])
            return "duplicate" if (not digest or not known or known == digest) else "replay"
        purged = self.db.scalar("SELECT purged_seq FROM gateways WHERE id = ?", (gw_id,))
        if purged is not None and seq <= int(purged):
            return "replay"
        return None

    def _insert_batch(self, gw_id: int, venue_id: int, header: HeaderLike, batch: Batch,
                      digest: bytes, size: int, now: float) -> None:
        db = self.db
        seq = header.seq
        # The gateway's row first: it is the per-gateway lock. Two matcher processes storing
        # the same redelivered batch then queue on it, never on the batch key in the
        # opposite order (a PostgreSQL deadlock; SQLite locks the whole database anyway).
        db.execute(
            "UPDATE gateways SET last_seq = CASE WHEN last_seq < ? THEN ? ELSE last_seq END, "
            "batches = batches + 1, last_batch_at = ?, last_created_at = ? WHERE id = ?",
            (seq, seq, now, header.created_at, gw_id))
        times = [s.last_seen for s in batch.sightings] + [c.ts for c in batch.checkins]
        db.execute(
            "INSERT INTO batches (gw_id, seq, digest, created_at, received_at, size, t_max, "
            "n_sightings, n_checkins, n_counts, n_corrections) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (gw_id, header.seq, digest, header.created_at, now, size,
             max(times) if times else None, len(batch.sightings), len(batch.checkins),
             len(batch.counts), len(batch.corrections)))
        epoch_of = _EpochMemo(self, gw_id)
        db.insert_rows("sightings", _SIGHTING_COLS, [
            (gw_id, venue_id, seq, epoch_of(s.clock), str(s.kind), bytes(s.ident),
             schema.ident_key(s.ident), int(s.slot_start), float(s.first_seen),
             float(s.last_seen), int(s.count), s.rssi_max, s.rssi_median, s.tx_power,
             str(s.proximity), s.aem)
            for s in batch.sightings])
        db.insert_rows("checkins", _CHECKIN_COLS, [
            (gw_id, venue_id, seq, epoch_of(c.clock), float(c.ts), str(c.kind), c.masked,
             int(c.key_day), c.tags[0] if c.tags else None,
             c.tags[1] if len(c.tags) > 1 else None, bytes(c.sealed))
            for c in batch.checkins])
        db.insert_rows("adoption_counts", _COUNT_COLS, [
            (gw_id, venue_id, seq, int(a.window_start), int(a.window_len), a.bluezone, a.gaen,
             a.other_phones, a.other_devices, a.overflow, json.dumps(a.by_kind, sort_keys=True))
            for a in batch.counts])
        db.insert_rows("clock_corrections", (
            "gw_id", "seq", "boot_id", "old_offset", "new_offset", "uncertainty", "source",
            "received_at"), [(gw_id, seq, k.boot_id, k.old_offset, k.new_offset, k.uncertainty,
                              k.source, now) for k in batch.corrections])
        retime.after_insert(db, gw_id, seq, bool(batch.corrections))
        span = _max_span(batch.sightings)
        if span > 0:
            self._raise_stat("max_span", span)
        if batch.counts:
            self._raise_stat("max_window_len", max(a.window_len for a in batch.counts))

    def _raise_stat(self, key: str, value: float) -> None:
        if value > self._pending_stats.get(key, float("-inf")):
            self._pending_stats[key] = value

    def count(self, reason: str, gateway_id: str = "", n: int = 1) -> None:
        """Add ``n`` to the ingest counter ``(reason, gateway_id)``.

        ``gateway_id`` comes from a topic and is not trusted: it is cut to 64 characters.
        Inside :meth:`transaction` the update is written when the transaction ends.
        """
        key = (reason[:64], gateway_id[:64])
        self._pending_counts[key] = self._pending_counts.get(key, 0) + n
        if not self._tx_depth:
            with self.transaction():
                pass

    def counters(self) -> list[Counter]:
        """Every ingest counter, by reason then gateway."""
        return [Counter(r, g, int(n), float(u)) for r, g, n, u in self.db.execute(
            "SELECT reason, gateway_id, n, updated_at FROM ingest_counters "
            "ORDER BY reason, gateway_id")]

    def counter_totals(self) -> dict[str, int]:
        """Ingest outcomes summed over gateways: ``{"stored": 12, "bad_signature": 1}``."""
        return {r: int(n) for r, n in self.db.execute(
            "SELECT reason, SUM(n) FROM ingest_counters GROUP BY reason ORDER BY reason")}

    # -- status and health (for the dashboard) ------------------------------------------------
    def set_status(self, entry: GatewayEntry, status: str, at: float | None = None) -> None:
        """Remember a gateway's last retained status (``online``/``offline``...)."""
        with self.transaction():
            gw_id, _ = self.ensure_gateway(entry)
            self.db.execute("UPDATE gateways SET status = ?, status_at = ? WHERE id = ?",
                            (status[:200], time.time() if at is None else at, gw_id))

    def set_health(self, entry: GatewayEntry, health: dict[str, Any],
                   at: float | None = None) -> None:
        """Remember a gateway's last health report (stored as JSON)."""
        with self.transaction():
            gw_id, _ = self.ensure_gateway(entry)
            self.db.execute("UPDATE gateways SET health = ?, health_at = ? WHERE id = ?",
                            (json.dumps(health, ensure_ascii=False, sort_keys=True),
                             time.time() if at is None else at, gw_id))

    def gateways(self) -> list[GatewayState]:
        """Every gateway the matcher has heard of, with its last status and health."""
        out = []
        for (gid, venue_id, last_seq, batches, last_at, last_created, status, status_at,
             health, health_at) in self.db.execute(
                "SELECT gateway_id, venue_id, last_seq, batches, last_batch_at, "
                "last_created_at, status, status_at, health, health_at FROM gateways "
                "ORDER BY gateway_id"):
            out.append(GatewayState(
                gateway_id=gid, venue=self.venue(int(venue_id)), last_seq=int(last_seq),
                batches=int(batches), last_batch_at=last_at, last_created_at=last_created,
                status=status, status_at=status_at,
                health=json.loads(health) if health else None, health_at=health_at))
        return out

    # -- retention ---------------------------------------------------------------------------
    def purge(self, now: float, retention_days: float) -> dict[str, int]:
        """Delete every record older than the window; return rows deleted per table.

        Records go by their own time; batch rows go by receipt time, and each gateway keeps
        the highest purged sequence number so a replay of a purged batch is still refused.
        Day-partitioned tables (PostgreSQL) lose whole expired days as ``DROP TABLE`` and only
        the rows before the cutoff in the day it falls in are deleted; partitions for the
        coming days are created in the same run. Elsewhere rows are deleted venue by venue
        (through the venue+time indexes).
        """
        if retention_days <= 0:
            raise StoreError("retention must be positive")
        cutoff = now - retention_days * DAY
        db = self.db
        out = {"sightings": 0, "checkins": 0, "adoption_counts": 0, "batches": 0,
               "clock_corrections": 0}
        by_venue = [("sightings", "first_seen"), ("checkins", "ts"),
                    ("adoption_counts", "window_start")]
        if partitions.is_partitioned(db):
            partitions.ensure(db, now)
            dropped = partitions.drop_expired(db, cutoff)
            out.update(dropped)
            by_venue = [t for t in by_venue if t[0] not in dropped]
        venue_ids = [int(r[0]) for r in db.execute("SELECT id FROM venues")]
        for vid in venue_ids:
            with db.transaction():
                for table, col in by_venue:
                    out[table] += self._delete(
                        f"DELETE FROM {table} WHERE venue_id = ? AND {col} < ?", (vid, cutoff))
        with db.transaction():
            db.execute("UPDATE gateways SET purged_seq = (SELECT MAX(b.seq) FROM batches b "
                       "WHERE b.gw_id = gateways.id AND b.received_at < ?) WHERE EXISTS ("
                       "SELECT 1 FROM batches b WHERE b.gw_id = gateways.id AND "
                       "b.received_at < ? AND b.seq > gateways.purged_seq)", (cutoff, cutoff))
            out["batches"] = self._delete("DELETE FROM batches WHERE received_at < ?", (cutoff,))
            out["clock_corrections"] = self._delete(
                "DELETE FROM clock_corrections WHERE received_at < ?", (cutoff,))
        return out

    def _delete(self, sql: str, params: Sequence[Any]) -> int:
        return self.db.modify(sql, params)


class _EpochMemo:
    """Epoch ids for one batch's records; decoded records share their epoch objects, so an
    identity check spares hashing the epoch for every row (a tenth of the insert time)."""

    __slots__ = ("_gw_id", "_id", "_last", "_store")

    def __init__(self, store: Store, gw_id: int) -> None:
        self._store, self._gw_id = store, gw_id
        self._last: ClockEpoch | None = None
        self._id = 0

    def __call__(self, e: ClockEpoch) -> int:
        if e is not self._last:
            self._id = self._store._epoch_id(self._gw_id, e)
            self._last = e
        return self._id


def _max_span(sightings: list[Sighting]) -> float:
    return max((s.last_seen - s.first_seen for s in sightings), default=0.0)


def open_store(url: str, *, schema_name: str | None = None) -> Store:
    """Open (and migrate) the store a URL names: ``sqlite:///path`` or ``postgresql://...``.

    Raises:
        StoreError: unsupported URL, unreachable server, or a newer schema.
    """
    return Store(connect(url, schema=schema_name))


__all__ = ["AddResult", "EpochInfo", "Store", "StoreError", "open_store"]
