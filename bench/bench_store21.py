"""21 days of a province on PostgreSQL: the store's size and the F0 match at that size.

A province (3,000 venues, one gateway each) keeping 21 days: about 1.6e8 Bluezone sightings
(≈ 2,540 per venue per day), 20 check-ins per venue per day and hourly adoption counts, in the
store's own schema (day partitions, every index). Built once with binary ``COPY`` into a
dedicated database (``bzgw_province``, schema ``store21``; ``--quick``: ``store21_quick`` with
1 % of the rows), one day at a time: each day's table is loaded bare, then attached as a
partition (the attach builds its indexes, faster than maintaining them row by row). Reused
while its row count and seed match; ``BZGW_STORE21_ROWS`` sets another size.

1,000 confirmed cases' daily Bluezone keys for the last day are planted: each of a case's 96
IDs was seen at one venue in its slot with probability 0.3. Measured:
:func:`matcher.match.match_f0` for one case (one day, 96 IDs) and for the 1,000-case day
(96,000 IDs), end to end (join, exposure windows, co-presence of every window), and the F0
join alone; the database size on disk.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matcher import copy_binary, pg_binary

from matcher import ids, schema
from matcher.db import PostgresDatabase
from matcher.f0 import F0, F0Case
from matcher.match import match_f0
from matcher.store import Store, open_store

SERVER = os.environ.get("BZGW_BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "bzgw_province"
SEED = 21_3000
VENUES = 3000
DAYS = 21
T_BASE = 1_795_219_200  # 2026-11-20 00:00 UTC: fixed, so the built store stays valid
CASES = 1000
PRESENT = 0.3  # share of a case's day slots with a sighting somewhere
CHECKINS_PER_VENUE_DAY = 20
CHUNK = 1_000_000
_SIGHTING_COLS = ("id", "gw_id", "venue_id", "seq", "epoch_id", "kind", "ident", "ident_key",
                  "slot_start", "first_seen", "last_seen", "count", "rssi_max", "rssi_median",
                  "proximity")


def _store(quick: bool) -> Store:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    return open_store(f"{SERVER}/{DATABASE}?probes=2",
                      schema_name="store21_quick" if quick else "store21")


SEALED_BYTES = 144  # HPKE enc (32) + tag (16) + CBOR of a CCCD check-in's identity


def _cases() -> list[F0Case]:
    rng = random.Random(SEED)
    day0 = T_BASE + (DAYS - 1) * 86400
    return [F0Case(label=f"case-{c}", kind="bluezone", tolerance_s=900.0,
                   block=ids.bluezone_block([(rng.randbytes(32), day0, day0 + 86399, 96)]))
            for c in range(CASES)]


def _day_rows(rng: np.random.Generator, day: int, n: int, planted: Any) -> Any:
    t0 = T_BASE + day * 86400
    ident = np.frombuffer(rng.bytes(12 * n), dtype="S12").copy()
    first = np.sort(t0 + rng.uniform(0, 86400 - 600, n))
    venue = rng.integers(1, VENUES + 1, n)
    if planted is not None:  # the cases' IDs, each in its own slot
        p_ident, p_t = planted
        at = rng.choice(n, len(p_ident), replace=False)
        ident[at], first[at] = p_ident, p_t
    return ident, first, venue


def _build(store: Store, n_rows: int) -> float:
    db = store.db
    assert isinstance(db, PostgresDatabase)
    t = time.perf_counter()
    db.execute("SET maintenance_work_mem = '512MB'")
    db.execute("SET synchronous_commit = off")
    for tbl in ("sightings", "checkins", "adoption_counts", "clock_epochs", "gateways",
                "venues", "stats"):
        db.execute(f"TRUNCATE {tbl}")
    days = [int((T_BASE + d * 86400) // 86400) for d in range(DAYS)]
    for table, _ in (("sightings", 0), ("checkins", 0)):
        for d in days:
            name = f"{table}_p{time.strftime('%Y%m%d', time.gmtime(d * 86400))}"
            db.execute(f"DROP TABLE IF EXISTS {name}")
    db.execute("INSERT INTO venues (id, province, venue, name) SELECT i, 'hn', 'v-' || i, "
               "'Venue ' || i FROM generate_series(1, ?) i", (VENUES,))
    db.execute("INSERT INTO gateways (id, gateway_id, venue_id) SELECT i, 'gw-' || i, i FROM "
               "generate_series(1, ?) i", (VENUES,))
    db.execute("INSERT INTO clock_epochs (id, gw_id, boot_id, clock_offset, synced, source, "
               "uncertainty, applied_offset) VALUES (1, 1, 'bench', 0, 1, 'ntp', 0, 0)")
    cases = _cases()
    packed = b"".join(c.block.packed for c in cases if c.block is not None)
    starts = np.concatenate([c.block.starts for c in cases if c.block is not None])
    keep = np.random.default_rng(SEED).random(len(starts)) < PRESENT
    planted = (np.frombuffer(packed, dtype="S12")[keep],
               starts[keep].astype(np.float64) + 120.0)
    rng = np.random.default_rng(SEED + 1)
    per_day = n_rows // DAYS
    next_id = 1
    for i, d in enumerate(days):
        t_day = time.perf_counter()
        for table, _col, n in (("sightings", "first_seen", per_day),
                              ("checkins", "ts", CHECKINS_PER_VENUE_DAY * VENUES)):
            name = f"{table}_p{time.strftime('%Y%m%d', time.gmtime(d * 86400))}"
            db.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING "
                       "CONSTRAINTS)")
            if table == "sightings":
                ident, first, venue = _day_rows(rng, i, n, planted if i == DAYS - 1 else None)
                for lo in range(0, n, CHUNK):
                    sl = slice(lo, min(n, lo + CHUNK))
                    k = sl.stop - sl.start
                    one = np.ones(k, dtype=np.int64)
                    f = first[sl]
                    copy_binary(db, name, _SIGHTING_COLS, pg_binary([
                        ("int8", np.arange(next_id, next_id + k, dtype=np.int64)),
                        ("int8", venue[sl]), ("int8", venue[sl]),
                        ("int8", ((f - T_BASE) // 60).astype(np.int64)), ("int8", one),
                        ("bytea", np.full(k, b"bluezone", dtype="S8")), ("bytea", ident[sl]),
                        ("int8", schema.ident_keys(ident[sl].tobytes(), 12)),
                        ("int8", (f // 900 * 900).astype(np.int64)), ("float8", f),
                        ("float8", f + rng.uniform(0, 600, k)),
                        ("int8", rng.integers(1, 60, k)), ("int8", rng.integers(-95, -40, k)),
                        ("int8", rng.integers(-99, -45, k)),
                        ("bytea", np.full(k, b"near", dtype="S4"))]))
                    next_id += k
            else:
                ts = T_BASE + i * 86400 + rng.uniform(0, 86400, n)
                # identities as a gateway sends them: a 16-byte blind tag and the sealed
                # identity (random bytes of a sealed CCCD check-in's size), a masked form
                copy_binary(db, name, ("id", "gw_id", "venue_id", "seq", "epoch_id", "ts",
                                       "kind", "masked", "key_day", "tag_s", "sealed"),
                            pg_binary([
                    ("int8", np.arange(next_id, next_id + n, dtype=np.int64)),
                    ("int8", rng.integers(1, VENUES + 1, n)),
                    ("int8", rng.integers(1, VENUES + 1, n)),
                    ("int8", np.ones(n, dtype=np.int64)), ("int8", np.ones(n, dtype=np.int64)),
                    ("float8", ts), ("bytea", np.full(n, b"cccd", dtype="S4")),
                    ("bytea", np.full(n, b"*********xxx", dtype="S12")),
                    ("int8", np.full(n, d, dtype=np.int64)),
                    ("bytea", np.frombuffer(rng.bytes(16 * n), dtype="S16")),
                    ("bytea", np.frombuffer(rng.bytes(SEALED_BYTES * n),
                                            dtype=f"S{SEALED_BYTES}"))]))
                next_id += n
            lo_t, hi_t = d * 86400.0, (d + 1) * 86400.0
            db.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM "
                       f"({lo_t}) TO ({hi_t})")
        db.execute("INSERT INTO adoption_counts (gw_id, venue_id, seq, window_start, "
                   "window_len, bluezone, gaen, other_phones, other_devices, overflow, "
                   "by_kind) SELECT v, v, 1, ? + h * 3600, 3600, 40, 10, 30, 5, 0, '{}' "
                   "FROM generate_series(1, ?) v, generate_series(0, 23) h",
                   (T_BASE + i * 86400, VENUES))
        print(f"  store21: day {i + 1}/{DAYS} in {time.perf_counter() - t_day:.0f} s",
              file=sys.stderr, flush=True)
    for tbl in ("sightings", "checkins"):
        db.execute(f"SELECT setval(pg_get_serial_sequence('{tbl}', 'id'), ?)", (next_id,))
    db.execute("ANALYZE")
    for key, value in (("store21_rows", n_rows), ("store21_seed", SEED), ("max_span", 600.0),
                       ("max_window_len", 3600.0)):
        db.execute("INSERT INTO stats (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                   "SET value = excluded.value", (key, value))
    return time.perf_counter() - t


def _f0(cases: list[F0Case]) -> F0:
    return F0(source="bench", format="bluezone-infof", signer="bench", cases=cases)


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark entry point for ``bzgw bench``."""
    n_rows = int(os.environ.get("BZGW_STORE21_ROWS", 1_600_000 if quick else 160_000_000))
    store = _store(quick)
    try:
        db = store.db
        built = None
        if not (store.stat("store21_rows") == n_rows and store.stat("store21_seed") == SEED):
            built = _build(store, n_rows)
        rows = int(db.scalar("SELECT sum(reltuples)::bigint FROM pg_class WHERE relname LIKE "
                             "'sightings_p%' AND relkind = 'r' AND relnamespace = "
                             "current_schema()::regnamespace"))
        size = int(db.scalar("SELECT pg_database_size(current_database())"))
        tables = {t: int(db.scalar("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                                   "JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent "
                                   "= ?::regclass", (t,)) or 0) for t in ("sightings", "checkins")}
        cases = _cases()
        out: list[dict[str, Any]] = []
        for label, chosen in (("one case, one day (96 Bluezone IDs)", cases[:1]),
                              (f"{CASES:,}-case day ({96 * CASES:,} Bluezone IDs)", cases)):
            f0 = _f0(chosen)
            parts = [(c.block.packed, 12) for c in chosen if c.block is not None]
            store.sightings_for_packed(parts)  # warm the catalog caches once
            t = time.perf_counter()
            hits = store.sightings_for_packed(parts)
            join_s = time.perf_counter() - t
            t = time.perf_counter()
            result = match_f0(store, f0)
            match_s = time.perf_counter() - t
            windows = sum(len(c.windows) for c in result.cases)
            out.append({"name": f"store21: F0 join, {label}, {rows:,} sightings",
                        "value": round(join_s, 3), "unit": "s", "hits": len(hits)})
            out.append({"name": f"store21: match_f0 end to end, {label}, {rows:,} sightings",
                        "value": round(match_s, 3), "unit": "s", "windows": windows,
                        "vs": "F0 join alone", "vs_value": round(join_s, 3),
                        "ratio": round(match_s / max(join_s, 1e-9), 1)})
        out.append({"name": f"store21: database size, {rows:,} sightings over {DAYS} days",
                    "value": round(size / 2**30, 2), "unit": "GiB",
                    "sightings_gib": round(tables["sightings"] / 2**30, 2),
                    "checkins_gib": round(tables["checkins"] / 2**30, 2),
                    "bytes_per_sighting": round(tables["sightings"] / max(rows, 1), 1),
                    "build_s": None if built is None else round(built)})
        return out
    finally:
        store.close()


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
