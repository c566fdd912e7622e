"""The matcher store: one test suite run against SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bzgw.labrecords import LAB, Header, checkin, entry, sighting, temp_store
from contract.batch import Batch, ClockCorrection
from contract.custody import day_of, lookup_tags, open_identity
from contract.records import AdoptionCount
from core.clock import ClockEpoch, ClockSource
from matcher import schema
from matcher.db import PostgresDatabase, StoreError, split_options, sqlite_path
from matcher.rows import CheckinRow
from matcher.store import Store, open_store

T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with temp_store(request.param, tmp_path, url) as s:
        yield s


def _batch(n: int = 3, t: float = T0, *, clock: ClockEpoch | None = None) -> Batch:
    kw = {"clock": clock} if clock else {}
    return Batch(sightings=[sighting(os.urandom(12), t + 60 * i, **kw) for i in range(n)],
                 checkins=[checkin("001099012345", t + 5, fields={"name": "Nguyễn Văn A"})],
                 counts=[AdoptionCount(window_start=int(t), window_len=900, bluezone=n,
                                       other_phones=7)])


def test_batch_is_stored_once_and_redelivery_is_a_duplicate(store: Store) -> None:
    gw = entry("gw-a", venue_name="Chợ A")
    b = _batch(3)
    assert store.add_batch(gw, Header("gw-a", 1, T0), b, digest=b"d1") == "stored"
    assert store.add_batch(gw, Header("gw-a", 1, T0), b, digest=b"d1") == "duplicate"
    counts = store.row_counts()
    assert (counts["batches"], counts["sightings"], counts["checkins"],
            counts["adoption_counts"]) == (1, 3, 1, 1)
    [g] = store.gateways()
    assert (g.gateway_id, g.last_seq, g.batches, g.venue.name) == ("gw-a", 1, 1, "Chợ A")


def test_sequence_reused_with_other_content_is_a_replay(store: Store) -> None:
    gw = entry("gw-a")
    assert store.add_batch(gw, Header("gw-a", 7, T0), _batch(2), digest=b"one") == "stored"
    assert store.add_batch(gw, Header("gw-a", 7, T0), _batch(2), digest=b"two") == "replay"
    assert store.row_counts()["sightings"] == 2


def test_header_of_another_gateway_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="gw-b"):
        store.add_batch(entry("gw-a"), Header("gw-b", 1, T0), _batch(1))


def test_lost_race_on_unique_key_reports_duplicate(store: Store, monkeypatch:
                                                   pytest.MonkeyPatch) -> None:
    gw = entry("gw-a")
    assert store.add_batch(gw, Header("gw-a", 3, T0), _batch(1), digest=b"x") == "stored"
    # A second matcher that checked before the first committed: only the unique key saves it.
    monkeypatch.setattr(store, "_seq_verdict", lambda *a: None)
    assert store.add_batch(gw, Header("gw-a", 3, T0), _batch(4), digest=b"x") == "duplicate"
    assert store.row_counts()["sightings"] == 1
    monkeypatch.undo()
    assert store.add_batch(gw, Header("gw-a", 4, T0), _batch(2)) == "stored"
    assert store.row_counts()["sightings"] == 3


def test_clock_epoch_is_kept_per_record(store: Store) -> None:
    free = ClockEpoch(boot_id="b-free", offset=123.5, synced=False, source=ClockSource.NONE,
                      uncertainty=math.inf)
    ident = os.urandom(12)
    b = Batch(sightings=[sighting(ident, T0, clock=free)])
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), b)
    [(idx, row)] = store.sightings_for_idents([os.urandom(12), ident])
    assert idx == 1
    assert row.clock.boot_id == "b-free"
    assert row.clock.offset == 123.5
    assert row.clock.synced is False
    assert row.clock.source == "none"
    assert math.isinf(row.clock.uncertainty)
    assert (row.first_seen, row.last_seen, row.gateway_id) == (T0, T0 + 60, "gw-a")


def test_ident_lookup_mixes_widths(store: Store) -> None:
    bz, en = os.urandom(12), os.urandom(16)
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0),
                    Batch(sightings=[sighting(bz, T0), sighting(en, T0 + 10)]))
    got = store.sightings_for_idents([en, os.urandom(16), bz])
    assert sorted((i, r.kind) for i, r in got) == [(0, "gaen"), (2, "bluezone")]
    assert store.sightings_for_idents([]) == []


def test_identity_lookup_by_blind_tags_only_with_the_days_key(store: Store) -> None:
    b = Batch(checkins=[checkin("001099012345", T0), checkin("P-77", T0 + 100,
                                                             fields={"phone": "+84 912 345 678"}),
                        checkin("0987654321", T0 + 200)])
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), b)
    d = day_of(T0)
    sk, bk = LAB.day(d)

    def find(subjects: list[str], phones: tuple[str, ...] | list[str] = (), key: bytes = bk,
             **kw: float) -> list[CheckinRow]:
        return store.checkins_for_tags(list(lookup_tags({d: key}, subjects, phones)), **kw)

    assert [c.ts for c in find(["001099012345"])] == [T0]
    assert [c.masked for c in find([], ["0912345678"])] == ["***-77"]
    assert [c.masked for c in find([], ["0987654321"])] == ["***321"]
    assert find(["001099012345"], since=T0 + 1) == []
    # a guess under any other key (the matcher holds none of the day's) finds nothing
    assert find(["001099012345"], key=os.urandom(32)) == []
    [row] = find(["001099012345"])
    assert row.key_day == d and row.sealed is not None
    assert open_identity(sk, d, row.sealed) == ("001099012345", {})


def test_co_presence_queries_respect_venue_and_overlap(store: Store) -> None:
    a, b = entry("gw-a", venue="cho-a"), entry("gw-b", venue="ben-xe-b")
    inside, before, other_venue = os.urandom(12), os.urandom(12), os.urandom(12)
    store.add_batch(a, Header("gw-a", 1, T0), Batch(
        sightings=[sighting(inside, T0 + 500, dwell=300), sighting(before, T0 - 2000)],
        checkins=[checkin("001099000001", T0 + 600), checkin("001099000002", T0 + 5000)]))
    store.add_batch(b, Header("gw-b", 1, T0), Batch(sightings=[sighting(other_venue, T0 + 600)]))
    vid = store.ensure_gateway(a)[1]
    assert store.sightings_at(vid, T0 + 700, T0 + 1000) == [
        ("bluezone", inside, int((T0 + 500) // 900 * 900))]
    assert [c.masked for c in store.checkins_at(vid, T0, T0 + 1000)] == ["***001"]
    adoption = store.adoption_at(vid, T0, T0 + 1000)
    assert adoption.windows == 0


def test_many_co_presence_ranges_at_once_match_a_scan_of_what_was_stored(
        store: Store) -> None:
    # A match asks for every window at once, several statements' worth of ranges.
    import random

    rng = random.Random(5)
    gws = [entry("gw-a", venue="cho-a"), entry("gw-b", venue="ben-xe-b")]
    stored: list[tuple[int, bytes, float, float, str, float]] = []  # venue, id, first, last...
    for n, gw in enumerate(gws):
        sightings, checkins = [], []
        for k in range(40):
            t, dwell = T0 + rng.uniform(0, 20000), rng.uniform(10, 900)
            sightings.append(sighting(os.urandom(12), t, dwell=dwell))
            checkins.append(checkin(f"0010990{n}{k:04d}", T0 + rng.uniform(0, 20000)))
        counts = [AdoptionCount(window_start=int(T0 + 900 * k), window_len=900, bluezone=k,
                                other_phones=n) for k in range(20)]
        store.add_batch(gw, Header(gw.id, 1, T0), Batch(sightings=sightings, checkins=checkins,
                                                        counts=counts))
        vid = store.ensure_gateway(gw)[1]
        stored += [(vid, x.ident, x.first_seen, x.last_seen, "", 0.0) for x in sightings]
        stored += [(vid, b"", 0.0, 0.0, c.masked, c.ts) for c in checkins]
    venues = sorted({v for v, *_ in stored})
    ranges = [(rng.choice(venues), a, a + rng.uniform(0, 3000))
              for a in (T0 + rng.uniform(-1000, 21000) for _ in range(500))]
    seen = store.sightings_in(ranges)
    ins = store.checkins_in(ranges)
    adoption = store.adoption_in(ranges)
    assert len(seen) == len(ins) == len(adoption) == len(ranges)
    for (v, a, b), got_s, got_c, got_a in zip(ranges, seen, ins, adoption, strict=True):
        assert sorted(x[1] for x in got_s) == sorted(
            i for vv, i, f, last, _, _ in stored if i and vv == v and f <= b and last >= a)
        assert [c.masked for c in got_c] == [sub for _, sub in sorted(
            (ts, sub) for vv, _, _, _, sub, ts in stored if sub and vv == v and a <= ts <= b)]
        overlapping = [k for k in range(20) if T0 + 900 * k < b + 1e-9 and T0 + 900 * (k + 1) > a]
        assert got_a.windows == len(overlapping)
        assert got_a.max_bluezone == max(overlapping, default=0)
    assert any(seen) and any(ins)  # the ranges do hit something


def test_adoption_windows_overlapping_a_range(store: Store) -> None:
    gw = entry("gw-a")
    store.add_batch(gw, Header("gw-a", 1, T0), Batch(counts=[
        AdoptionCount(window_start=int(T0), window_len=900, bluezone=3, other_phones=10),
        AdoptionCount(window_start=int(T0 + 900), window_len=900, bluezone=5, other_phones=4),
        AdoptionCount(window_start=int(T0 + 5000), window_len=900, bluezone=50)]))
    got = store.adoption_at(store.ensure_gateway(gw)[1], T0 + 800, T0 + 1000)
    assert (got.windows, got.max_bluezone, got.max_other_phones) == (2, 5, 10)
    assert got.by_gateway == {"gw-a": 10}


def test_purge_deletes_past_the_window_and_remembers_purged_sequence(store: Store) -> None:
    gw = entry("gw-a")
    old, new = T0 - 30 * DAY, T0 - DAY
    store.add_batch(gw, Header("gw-a", 1, old), _batch(2, old), received_at=old, digest=b"1")
    store.add_batch(gw, Header("gw-a", 2, new), Batch(
        sightings=[sighting(os.urandom(12), new)],
        corrections=[ClockCorrection("b", 1.0, 2.0, 0.1, "ntp")]), received_at=new)
    deleted = store.purge(T0, 21)
    assert deleted["sightings"] == 2 and deleted["checkins"] == 1
    assert deleted["adoption_counts"] == 1 and deleted["batches"] == 1
    left = store.row_counts()
    assert (left["sightings"], left["checkins"], left["batches"],
            left["clock_corrections"]) == (1, 0, 1, 1)
    # The purged batch delivered again must not come back.
    assert store.add_batch(gw, Header("gw-a", 1, old), _batch(2, old), digest=b"1") == "replay"
    assert store.purge(T0 + 30 * DAY, 21)["clock_corrections"] == 1
    with pytest.raises(StoreError):
        store.purge(T0, 0)


def test_counters_status_and_health(store: Store) -> None:
    gw = entry("gw-a")
    store.count("stored", "gw-a")
    store.count("stored", "gw-a", 2)
    store.count("bad_signature", "x" * 500)
    assert store.counter_totals() == {"bad_signature": 1, "stored": 3}
    assert {(c.reason, c.gateway_id[:3], c.n) for c in store.counters()} == {
        ("bad_signature", "xxx", 1), ("stored", "gw-", 3)}
    assert max(len(c.gateway_id) for c in store.counters()) == 64
    store.set_status(gw, "online", at=T0)
    store.set_health(gw, {"outbox_depth": 4, "camera": "ok"}, at=T0 + 1)
    [g] = store.gateways()
    assert (g.status, g.status_at, g.health, g.health_at) == (
        "online", T0, {"camera": "ok", "outbox_depth": 4}, T0 + 1)


def test_gateway_moved_to_another_venue_follows_registry(store: Store) -> None:
    store.add_batch(entry("gw-a", venue="cho-a"), Header("gw-a", 1, T0), _batch(1))
    moved = entry("gw-a", venue="cho-moi", venue_name="Chợ Mới")
    store.add_batch(moved, Header("gw-a", 2, T0), _batch(1))
    [g] = store.gateways()
    assert (g.venue.venue, g.venue.name) == ("cho-moi", "Chợ Mới")
    assert {v.venue for v in store.venues()} == {"cho-a", "cho-moi"}


def test_counters_survive_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with open_store(url) as s:
        s.count("oversize", "gw-a")
        assert s.migrate() == []  # already at the current version
    with open_store(url) as s:
        assert s.counter_totals() == {"oversize": 1}


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with open_store(url) as s:
        s.db.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)",
                      (schema.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        open_store(url)


def test_urls() -> None:
    assert sqlite_path("sqlite:///var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    assert sqlite_path("sqlite://") == ":memory:"
    assert sqlite_path("plain/file.db") == "plain/file.db"
    assert split_options("postgresql://u@h/db?schema=s1&sslmode=disable&probes=4") == (
        "postgresql://u@h/db?sslmode=disable", {"schema": "s1", "probes": "4"})
    assert split_options("postgresql://u@h/db?schema=") == ("postgresql://u@h/db", {})
    with pytest.raises(StoreError, match="unsupported"):
        open_store("mysql://x/y")
    for bad in ("0", "many", "65"):
        with pytest.raises(StoreError, match=f"probes={bad!r}.*1 to 64"):
            open_store(f"postgresql://u@127.0.0.1:1/db?probes={bad}")


def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot connect") as err:
        open_store("postgresql://nobody:secret@127.0.0.1:1/nodb")
    assert "secret" not in str(err.value)


def test_packed_lookup_keeps_indices_across_parts_and_trailing_zero_bytes(store: Store) -> None:
    zero, tail0 = bytes(12), b"\x07" + bytes(11)
    en = os.urandom(15) + b"\x00"
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), Batch(
        sightings=[sighting(zero, T0), sighting(tail0, T0 + 1), sighting(en, T0 + 2)]))
    parts = [(os.urandom(12) + tail0, 12), (os.urandom(16) + en, 16), (zero, 12)]
    got = sorted((i, r.ident) for i, r in store.sightings_for_packed(parts))
    assert got == [(1, tail0), (3, en), (4, zero)]
    with pytest.raises(StoreError, match="not 12-byte"):
        store.sightings_for_packed([(b"x" * 13, 12)])


def test_ids_sharing_a_join_key_are_told_apart_and_repeats_keep_their_index(
        store: Store) -> None:
    # The join probes the first 8 bytes (an integer key); the whole ID decides.
    a, b, c = b"\x11" * 8 + b"AAAA", b"\x11" * 8 + b"BBBB", b"\x11" * 8 + b"C" * 8
    assert schema.ident_key(a) == schema.ident_key(b) == schema.ident_key(c)
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0),
                    Batch(sightings=[sighting(a, T0), sighting(c, T0 + 1)]))
    got = store.sightings_for_idents([b, a, c, a])
    assert sorted((i, r.ident) for i, r in got) == [(1, a), (2, c), (3, a)]
    assert store.sightings_for_idents([b]) == []


def test_a_join_in_many_slices_finds_what_one_join_finds(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from matcher import store_read

    idents = [os.urandom(12) for _ in range(60)]
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), Batch(
        sightings=[sighting(x, T0 + i) for i, x in enumerate(idents[::4])]))
    whole = sorted((i, r.id) for i, r in store.sightings_for_idents(idents))
    monkeypatch.setattr(store_read, "JOIN_SLICE", 7)
    assert sorted((i, r.id) for i, r in store.sightings_for_idents(idents)) == whole
    assert [i for i, _ in whole] == list(range(0, 60, 4))


def test_join_keys_agree_between_python_numpy_and_the_database(store: Store) -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    for width in (1, 7, 8, 12, 16):
        packed = rng.bytes(width * 50) + b"\x80" + bytes(width - 1) + b"\x7f" * width
        expect = [schema.ident_key(packed[i:i + width]) for i in range(0, len(packed), width)]
        assert schema.ident_keys(packed, width).tolist() == expect
    # the backfill expression each dialect runs over stored rows
    probe = [b"\x80" + bytes(11), b"\xff" * 9, b"\x01\x02", bytes(8), b"\x7f" + b"\xee" * 15]
    expr = schema.render("{ident_key}", store.db.dialect)
    got = [store.db.scalar(f"SELECT {expr} FROM (SELECT ? AS ident) t", (x,)) for x in probe]
    assert got == [schema.ident_key(x) for x in probe]


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[tuple[Store, PostgresDatabase]]:
    """A PostgreSQL store and its database object."""
    with temp_store("postgres", tmp_path, pg_url) as store:
        assert isinstance(store.db, PostgresDatabase)
        yield store, store.db


@pytest.mark.postgres
def test_large_postgres_joins_split_over_probe_connections(
        pg_store: tuple[Store, PostgresDatabase], monkeypatch: pytest.MonkeyPatch) -> None:
    from matcher import store_read

    store, db = pg_store
    db.probes = 3
    idents = [os.urandom(12) for _ in range(300)]
    store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), Batch(
        sightings=[sighting(x, T0 + i) for i, x in enumerate(idents[::3])]))
    want = [(3 * i, T0 + i) for i in range(100)]
    assert sorted((i, r.first_seen) for i, r in store.sightings_for_idents(idents)) == want
    assert len(db.probe_connections()) == 3  # opened only now, on request
    probed: list[int] = []
    real = store_read.int8_array
    monkeypatch.setattr(store_read, "int8_array", lambda k: probed.append(len(k)) or real(k))
    monkeypatch.setattr(store_read, "PG_SPLIT_MIN_KEYS", 10)
    got = store.sightings_for_idents(idents)
    assert sorted(probed) == [100, 100, 100]  # three slices, each on its own connection
    assert sorted((i, r.first_seen, r.clock.boot_id) for i, r in got) == [
        (i, t, "boot-synced") for i, t in want]
    # inside a transaction the rows written there are only visible on its connection
    probed.clear()
    late = os.urandom(12)
    with store.transaction():
        store.add_batch(entry("gw-a"), Header("gw-a", 2, T0), Batch(
            sightings=[sighting(late, T0 + 500)]))
        got = store.sightings_for_idents([*idents, late])
    assert probed == [301] and (300, late) in {(i, r.ident) for i, r in got}
    siblings = db.probe_connections()[1:]
    store.close()
    assert all(s.conn.closed for s in siblings)


@pytest.mark.postgres
def test_probe_connections_that_cannot_be_opened_leave_fewer_not_an_error(
        pg_store: tuple[Store, PostgresDatabase], caplog: pytest.LogCaptureFixture) -> None:
    _, db = pg_store
    db.probes, db._url = 4, "postgresql://nobody@127.0.0.1:1/none"  # refused
    with caplog.at_level("WARNING"):
        assert db.probe_connections() == [db]
    assert db.probes == 1 and "no more could be opened" in caplog.text


def _old_gateway(db: Any) -> None:
    """Venue 1, gateway 1 and clock epoch 1, written as an older schema's code did."""
    db.execute("INSERT INTO venues (id, province, venue) VALUES (1, 'hn', 'old')")
    db.execute("INSERT INTO gateways (id, gateway_id, venue_id) VALUES (1, 'gw-old', 1)")
    db.execute("INSERT INTO clock_epochs (id, gw_id, boot_id, clock_offset, synced, source,"
               " uncertainty, applied_offset) VALUES (1, 1, 'b', 0, 1, 'ntp', 0.5, 0)")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sightings_stored_before_the_join_key_are_found_after_migrating(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:3])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 3)
    with temp_store(kind, tmp_path, url) as store:
        db = store.db
        _old_gateway(db)
        idents = [b"\x80" + bytes(11), b"\x7f" + b"\xff" * 15, b"\x01\x02", os.urandom(12)]
        for i, x in enumerate(idents):
            db.execute("INSERT INTO sightings (gw_id, venue_id, seq, epoch_id, kind, ident, "
                       "slot_start, first_seen, last_seen, count, proximity) VALUES "
                       "(1, 1, 1, 1, 'bluezone', ?, 0, ?, ?, 1, 'near')", (x, T0 + i, T0 + i + 60))
        monkeypatch.undo()
        assert store.migrate() == [4, 5, 6]
        got = store.sightings_for_idents([*idents, os.urandom(12)])
        assert sorted((i, r.first_seen) for i, r in got) == [(i, T0 + i) for i in range(4)]
        assert [r[0] for r in db.execute("SELECT ident_key FROM sightings ORDER BY id")] == [
            schema.ident_key(x) for x in idents]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_plaintext_identities_are_dropped_by_the_custodian_migration(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 4)
    with temp_store(kind, tmp_path, url) as store:
        db = store.db
        _old_gateway(db)
        db.execute("INSERT INTO checkins (gw_id, venue_id, seq, epoch_id, ts, kind, subject, "
                   "masked, fields, phone) VALUES (1, 1, 1, 1, ?, 'cccd', '079185001234', "
                   "'***234', '{\"name\": \"Phạm Thị Dung\"}', NULL)", (T0,))
        monkeypatch.undo()
        assert store.migrate() == [5, 6]
        [row] = store.checkins_at(1, T0 - 1, T0 + 1)
        assert (row.masked, row.kind, row.sealed, row.tags) == ("***234", "cccd", None, ())
        cols = {r[0] for r in db.execute(
            "SELECT name FROM pragma_table_info('checkins')" if kind == "sqlite" else
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'checkins' "
            "AND table_schema = current_schema()")}
        assert not {"subject", "fields", "phone"} & cols
    if kind == "sqlite":  # nor left behind in free pages of the file
        for f in tmp_path.glob("matcher.db*"):
            data = f.read_bytes()
            assert b"079185001234" not in data and "Phạm".encode() not in data, f


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from matcher.db import connect

    db = connect(f"sqlite:///{tmp_path / 'v1.db'}")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
               "NULL, applied_at REAL NOT NULL)")
    for stmt in schema.MIGRATIONS[0].statements:
        db.execute(schema.render(stmt, "sqlite"))
    db.execute("INSERT INTO schema_migrations VALUES (1, 'initial schema', 0)")
    db.execute("INSERT INTO venues (province, venue) VALUES ('hn', 'old')")
    db.close()
    with open_store(f"sqlite:///{tmp_path / 'v1.db'}") as s:
        assert [v.venue for v in s.venues()] == ["old"]  # data kept
        names = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = "
                                             "'index'")}
        assert "adoption_counts_cover" in names and "adoption_counts_venue_time" not in names
        versions = s.db.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in versions] == [m.version for m in schema.MIGRATIONS]


def test_only_phone_shaped_subjects_count_as_phones() -> None:
    from contract.identity import checkin_phone, normalize_phone

    assert checkin_phone("0912345678", {}) == "0912345678"
    assert checkin_phone("+84912345678", {}) == "0912345678"
    assert checkin_phone("001099012345", {}) is None  # CCCD
    assert checkin_phone("123456789", {}) is None  # old 9-digit ID
    assert checkin_phone("P-1", {"phone": "84 912 345 678"}) == "0912345678"
    assert normalize_phone("+33 6 12 34 56 78") == "+33612345678"
    assert normalize_phone("call me") is None


@pytest.mark.parametrize("n", [1, 7, 500, 1333])
def test_large_batches_are_stored_whole_and_in_order(store: Store, n: int) -> None:
    # SQLite inserts rows as multi-row statements in power-of-two chunks: every count must
    # come out whole, with each row's own values.
    idents = [os.urandom(12) for _ in range(n)]
    b = Batch(sightings=[sighting(x, T0 + i) for i, x in enumerate(idents)])
    assert store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), b) == "stored"
    got = store.sightings_for_idents(idents)
    assert sorted((i, r.first_seen) for i, r in got) == [(i, T0 + i) for i in range(n)]
    assert store.row_counts()["sightings"] == n


def test_inserts_respect_a_small_sqlite_variable_limit(tmp_path: Path) -> None:
    import sqlite3

    with temp_store("sqlite", tmp_path, None) as s:
        s.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)  # type: ignore[attr-defined]
        s.db._max_variables = 40  # type: ignore[attr-defined]
        idents = [os.urandom(12) for _ in range(37)]
        b = Batch(sightings=[sighting(x, T0 + i) for i, x in enumerate(idents)])
        assert s.add_batch(entry("gw-a"), Header("gw-a", 1, T0), b) == "stored"
        assert len(s.sightings_for_idents(idents)) == 37


def test_a_failed_outer_transaction_forgets_cached_ids(store: Store) -> None:
    # The matcher stores a group of batches in one transaction; if it fails (disk full),
    # gateway and epoch rows created inside it are gone and must not be reused from cache.
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction():
        assert store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), _batch(2)) == "stored"
        raise Boom
    assert store.row_counts()["sightings"] == 0
    assert store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), _batch(2)) == "stored"
    [g] = store.gateways()
    assert (g.gateway_id, g.last_seq, g.batches) == ("gw-a", 1, 1)
    [(_, row)] = store.sightings_for_idents([store.sightings_at(g.venue.id, 0, 2e9)[0][1]])
    assert row.clock.boot_id == _batch(1).sightings[0].clock.boot_id


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_matchers_starting_together_on_a_new_database_all_open_it(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Several `bzgw matcher serve` processes started at once by systemd or ansible: the
    # schema (and PostgreSQL's schema namespace) must be created once, without a race.
    from concurrent.futures import ThreadPoolExecutor

    from bzgw.labrecords import drop_schema, unique_schema

    if kind == "postgres":
        url, name = request.getfixturevalue("pg_url"), unique_schema()
    else:
        url, name = f"sqlite:///{tmp_path / 'shared.db'}", None
    try:
        with ThreadPoolExecutor(6) as pool:
            stores = list(pool.map(lambda _: open_store(url, schema_name=name), range(6)))
        try:
            versions = {int(s.db.scalar("SELECT MAX(version) FROM schema_migrations"))
                        for s in stores}
            assert versions == {schema.SCHEMA_VERSION}
            stores[0].add_batch(entry("gw-a"), Header("gw-a", 1, T0), _batch(1))
            assert stores[-1].row_counts()["sightings"] == 1
        finally:
            for s in stores:
                s.close()
    finally:
        if name is not None:
            drop_schema(url, name)
