"""Day partitions of sightings and check-ins on PostgreSQL: migration, partitions created
ahead, retention by whole days. Run against the real server (skipped without one, failing
under CI)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bzgw.labrecords import (
    LAB,
    Header,
    checkin,
    drop_schema,
    entry,
    sighting,
    temp_store,
    unique_schema,
)
from contract.batch import Batch, ClockCorrection
from contract.custody import day_of, lookup_tags
from core.clock import ClockEpoch, ClockSource
from matcher import partitions, schema
from matcher.store import Store, open_store

DAY = 86400.0
# Noon (UTC) of the real today: the store creates today's partitions when it opens.
NOW = (time.time() // DAY) * DAY + DAY / 2


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[Store]:
    with temp_store("postgres", tmp_path, pg_url) as store:
        yield store


def _day_batch(t: float, n: int = 3, subject: str = "001099012345") -> Batch:
    return Batch(sightings=[sighting(os.urandom(12), t + 600 * i) for i in range(n)],
                 checkins=[checkin(subject, t + 5)])


def _fill(store: Store, days: range, gw: str = "gw-a") -> None:
    e = entry(gw)
    for seq, d in enumerate(days, 1):
        t = NOW - d * DAY
        store.add_batch(e, Header(gw, seq, t), _day_batch(t), received_at=t)


def _rows(store: Store, table: str, col: str) -> dict[int, tuple[float, int, str]]:
    """id → (time, xmin, partition): xmin changes if a row is rewritten in place or moved."""
    return {int(i): (float(t), int(x), str(p)) for i, t, x, p in store.db.execute(
        f"SELECT id, {col}, xmin::text::bigint, tableoid::regclass::text FROM {table}")}


@pytest.mark.postgres
def test_new_postgres_store_has_day_partitions_ahead_and_a_default(pg_store: Store) -> None:
    assert partitions.is_partitioned(pg_store.db, "sightings")
    assert partitions.is_partitioned(pg_store.db, "checkins")
    today = int(time.time() // DAY)
    for table, _ in partitions.TABLES:
        parts = partitions.partitions(pg_store.db, table)
        days = {int(p.lo // DAY) for p in parts if p.lo is not None}
        assert set(range(today, today + partitions.AHEAD_DAYS + 1)) <= days
        assert parts[-1].name == f"{table}_default" and parts[-1].lo is None
        # every index of the parent exists on every partition
        n_idx = pg_store.db.scalar(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND "
            "tablename = ?", (parts[0].name,))
        n_parent = pg_store.db.scalar(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND "
            "tablename = ?", (table,))
        assert n_idx == n_parent >= 3


@pytest.mark.postgres
def test_partition_rows_of_a_missing_day_wait_in_default_then_move_to_their_day(
        pg_store: Store) -> None:
    later = NOW + 10 * DAY  # beyond the partitions created ahead
    pg_store.add_batch(entry("gw-a"), Header("gw-a", 1, later), _day_batch(later))
    before = _rows(pg_store, "sightings", "first_seen")
    assert {p for _, _, p in before.values()} == {"sightings_default"}
    created = partitions.ensure(pg_store.db, later)
    assert f"sightings@{int(later // DAY)}" in created
    after = _rows(pg_store, "sightings", "first_seen")
    assert after.keys() == before.keys()
    day = time.strftime("%Y%m%d", time.gmtime(later))
    assert {p for _, _, p in after.values()} == {f"sightings_p{day}"}
    assert pg_store.db.scalar("SELECT count(*) FROM checkins_default") == 0
    # still found through the join key index
    ident = pg_store.db.execute("SELECT ident FROM sightings LIMIT 1")[0][0]
    assert len(pg_store.sightings_for_idents([bytes(ident)])) == 1
    assert partitions.ensure(pg_store.db, later) == []  # idempotent


@pytest.mark.postgres
def test_retention_drops_expired_day_partitions_and_touches_nothing_younger(
        pg_store: Store) -> None:
    partitions.ensure(pg_store.db, NOW, behind_days=30)
    _fill(pg_store, range(0, 26))
    # a far-off clock: no partition for that day, the default one holds it
    old = NOW - 400 * DAY
    pg_store.add_batch(entry("gw-a"), Header("gw-a", 100, old), _day_batch(old, 2),
                       received_at=old)
    cutoff = NOW - 21 * DAY
    # right at the edge: half a second before the cutoff goes, the cutoff itself stays
    pg_store.add_batch(entry("gw-a"), Header("gw-a", 101, cutoff), Batch(sightings=[
        sighting(os.urandom(12), cutoff - 0.5), sighting(os.urandom(12), cutoff)]))
    sight, chk = _rows(pg_store, "sightings", "first_seen"), _rows(pg_store, "checkins", "ts")
    parts_before = partitions.partitions(pg_store.db, "sightings")

    deleted = pg_store.purge(NOW, 21)

    expired = {i for i, (t, _, _) in sight.items() if t < cutoff}
    assert deleted["sightings"] == len(expired) > 0
    assert deleted["checkins"] == sum(1 for t, _, _ in chk.values() if t < cutoff)
    left = _rows(pg_store, "sightings", "first_seen")
    # younger rows: same ids, never rewritten (xmin) nor moved (partition)
    assert left == {i: v for i, v in sight.items() if i not in expired}
    assert _rows(pg_store, "checkins", "ts") == {i: v for i, v in chk.items() if v[0] >= cutoff}
    # expired days are gone as tables; the day holding the cutoff and younger ones remain
    names = {p.name for p in partitions.partitions(pg_store.db, "sightings")}
    for p in parts_before:
        if p.hi is not None and p.hi <= cutoff:
            assert p.name not in names
        else:
            assert p.name in names
    assert pg_store.db.scalar("SELECT min(first_seen) FROM sightings") >= cutoff
    # a second run finds nothing more to do
    assert pg_store.purge(NOW, 21)["sightings"] == 0


@pytest.mark.postgres
def test_retention_with_partitions_keeps_replays_refused(pg_store: Store) -> None:
    partitions.ensure(pg_store.db, NOW, behind_days=30)
    gw = entry("gw-a")
    t = NOW - 25 * DAY
    pg_store.add_batch(gw, Header("gw-a", 1, t), _day_batch(t), received_at=t, digest=b"1")
    pg_store.purge(NOW, 21)
    assert pg_store.row_counts()["sightings"] == 0
    assert pg_store.add_batch(gw, Header("gw-a", 1, t), _day_batch(t), digest=b"1") == "replay"


@pytest.mark.postgres
def test_partition_a_schema_5_store_is_migrated_with_rows_ids_and_indexes(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_schema()
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:5])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 5)
    try:
        with open_store(pg_url, schema_name=name) as store:
            assert not partitions.is_partitioned(store.db)
            _fill(store, range(0, 5))
            odd = 1_000_000.0  # 1970: an unsynchronised clock, lands in the default partition
            store.add_batch(entry("gw-a"), Header("gw-a", 50, odd), _day_batch(odd, 1))
            idx_before = {r[0] for r in store.db.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND "
                "tablename IN ('sightings', 'checkins')")}
            sight = {i: t for i, (t, _, _) in _rows(store, "sightings", "first_seen").items()}
            chk = {i: t for i, (t, _, _) in _rows(store, "checkins", "ts").items()}
            idents = [bytes(r[0]) for r in store.db.execute("SELECT ident FROM sightings")]
        monkeypatch.undo()
        with open_store(pg_url, schema_name=name) as store:
            db = store.db
            assert partitions.is_partitioned(db, "sightings")
            assert partitions.is_partitioned(db, "checkins")
            assert {i: t for i, (t, _, _) in _rows(store, "sightings", "first_seen").items()
                    } == sight
            assert {i: t for i, (t, _, _) in _rows(store, "checkins", "ts").items()} == chk
            assert db.scalar("SELECT count(*) FROM sightings_default") == 1
            assert db.scalar("SELECT count(*) FROM checkins_default") == 1
            idx_after = {r[0] for r in db.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND "
                "tablename IN ('sightings', 'checkins')")}
            assert idx_after == {n for n in idx_before if not n.endswith("_pkey")} | {
                "sightings_pkey", "checkins_pkey"}
            assert not db.execute("SELECT 1 FROM pg_class WHERE relname LIKE "
                                  "'%_unpartitioned' AND relnamespace = "
                                  "current_schema()::regnamespace")
            # the F0 join (schema 4's ident_key index) finds every migrated row
            assert len(store.sightings_for_idents(idents)) == len(idents)
            tags = lookup_tags({d: LAB.day(d)[1] for d in {day_of(x) for x in chk.values()}},
                               ["001099012345"], [])
            assert len(store.checkins_for_tags(list(tags))) == len(chk)
            # ids continue after the migrated ones
            _fill(store, range(0, 1), gw="gw-b")
            assert min(i for i in _rows(store, "sightings", "first_seen") if i not in sight
                       ) > max(sight)
    finally:
        drop_schema(pg_url, name)


@pytest.mark.postgres
def test_partition_rows_move_to_their_new_day_when_a_clock_correction_retimes_them(
        pg_store: Store) -> None:
    partitions.ensure(pg_store.db, NOW, behind_days=3)
    boot = ClockEpoch(boot_id="boot-x", offset=0.0, synced=False, source=ClockSource.NONE,
                      uncertainty=3600.0)
    t = NOW - 2 * DAY
    gw = entry("gw-a")
    pg_store.add_batch(gw, Header("gw-a", 1, t), Batch(
        sightings=[sighting(os.urandom(12), t, clock=boot)], checkins=[checkin("0123", t,
                                                                             clock=boot)]))
    pg_store.add_batch(gw, Header("gw-a", 2, t), Batch(
        corrections=[ClockCorrection("boot-x", 0.0, DAY, 0.5, "ntp")]))
    day = time.strftime("%Y%m%d", time.gmtime(t + DAY))
    assert pg_store.db.execute("SELECT tableoid::regclass::text, first_seen FROM sightings"
                               ) == [(f"sightings_p{day}", t + DAY)]
    assert pg_store.db.execute("SELECT tableoid::regclass::text FROM checkins"
                               ) == [(f"checkins_p{day}",)]


def test_retention_on_sqlite_still_deletes_rows(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'm.db'}") as store:
        assert not partitions.is_partitioned(store.db)
        assert partitions.ensure(store.db, NOW) == []
        _fill(store, range(0, 26))
        deleted = store.purge(NOW, 21)
        assert deleted["sightings"] == 3 * 4 and deleted["checkins"] == 4
        assert store.db.scalar("SELECT min(first_seen) FROM sightings") >= NOW - 21 * DAY
