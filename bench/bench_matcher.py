"""Matcher benchmarks: ID derivation rates and the F0 join at province scale.

Measured in one run, each against the alternative it replaces:

- Bluezone IDs derived per second: :func:`matcher.ids.bluezone_block` (one process, and spread
  over every core with the pool start-up included) vs the per-ID reference loop.
- EN RPIs derived per second: :func:`matcher.ids.en_block` vs :func:`ble.ids.en_rpis`
  called per key.
- The F0 join: 1,000,000 F0 IDs (Bluezone, derived from 10,417 daily keys) against
  10,000,000 stored sightings, 1 % of the F0 IDs present, on SQLite and PostgreSQL:
  :meth:`matcher.store.Store.sightings_for_packed` (sorted F0 ID keys probing the
  ``sightings(ident_key)`` index) vs, on SQLite, the keys inserted unsorted by
  ``executemany`` and per-ID indexed lookups (timed on a sample and scaled); on PostgreSQL,
  the same probes on one connection instead of two, the planner's own plan for a table of
  keys, and schema 3's join on the ID bytes (an extra index on ``sightings(ident)`` is built
  in the bench schema for it). Also
  :func:`matcher.match.match_f0` end to end (join, windows, co-presence queries for every
  window).

The 10M-row tables are built once (SQLite ``executemany`` in one transaction, PostgreSQL
binary ``COPY``, indexes after the load) into ``$BZGW_BENCH_CACHE`` (default
``/tmp/bzgw-bench``) and a ``bzgw_bench_*`` schema, and reused while their row count, seed and
schema version match. ``--quick`` uses 100,000 F0 IDs and 1,000,000 sightings.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ble import ids as ref_ids
from matcher import ids, schema
from matcher.db import PostgresDatabase
from matcher.f0 import F0, F0Case
from matcher.match import match_f0
from matcher.store import Store, open_store

CACHE = Path(os.environ.get("BZGW_BENCH_CACHE", Path(tempfile.gettempdir()) / "bzgw-bench"))
PG_URL = os.environ.get("BZGW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SEED = 20210817
T_BASE = 1_700_006_400  # fixed (a UTC midnight), so cached tables stay valid between runs
DAYS = 21
VENUES = 200
HIT_EVERY = 100  # 1 % of the F0 IDs were seen somewhere
CHUNK = 200_000
# The store's sightings indexes, built after the load (faster than maintained row by row).
INDEXES = {"sightings_ident_key": "ident_key", "sightings_venue_time": "venue_id, first_seen"}
OLD_IDENT_INDEX = "bench_sightings_ident"  # the index on the ID bytes schema 3 joined on


# Binary COPY (the bench loads 10M rows and compares join plans; the store's own inserts go
# through Database.insert_rows).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


def pg_binary(columns: Sequence[tuple[str, Any]]) -> bytes:
    """A binary ``COPY`` payload for fixed-width, non-null columns, built without a Python loop.

    Args:
        columns: ``(pg_type, numpy array)`` pairs of equal length; types ``bytea`` (array of
            dtype ``S<n>``), ``int4``, ``int8`` and ``float8``.
    """
    n = len(columns[0][1]) if columns else 0
    fields: list[tuple[str, Any]] = [("nf", ">i2")]
    widths = []
    for i, (typ, arr) in enumerate(columns):
        if len(arr) != n:
            raise ValueError("columns differ in length")
        if typ == "bytea":
            dt = np.dtype(f"S{arr.dtype.itemsize}")
        else:
            dt = np.dtype({"int4": ">i4", "int8": ">i8", "float8": ">f8"}[typ])
        fields += [(f"l{i}", ">i4"), (f"v{i}", dt)]
        widths.append(dt.itemsize)
    rec = np.empty(n, dtype=np.dtype(fields))
    rec["nf"] = len(columns)
    for i, (_typ, arr) in enumerate(columns):
        rec[f"l{i}"] = widths[i]
        rec[f"v{i}"] = arr
    return _COPY_HEADER + rec.tobytes() + _COPY_TRAILER


def copy_binary(db: PostgresDatabase, table: str, columns: Sequence[str],
                payload: bytes) -> None:
    """``COPY ... FROM STDIN (FORMAT BINARY)`` of a payload built by :func:`pg_binary`."""
    with db.conn.cursor() as cur, cur.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.write(payload)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


class Cpu:
    """This process's CPU seconds over a block: on a shared machine wall time also counts
    the time other processes held the cores; CPU time does not (for in-process work)."""

    def __enter__(self) -> Cpu:
        self.t0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.process_time() - self.t0


def _reference_bluezone(keys: list[bytes], n: int) -> list[bytes]:
    """The straightforward per-ID loop (the code :mod:`matcher.ids` started from)."""
    out = []
    for dk in keys:
        sk = hashlib.sha256(dk + ref_ids.BLUEZONE_SALT).digest()
        for _ in range(n):
            out.append(bytes(sk[i] for i in ref_ids.BLUEZONE_PICK))
            sk = hashlib.sha256(sk).digest()
    return out


def bench_bluezone(quick: bool) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    n_keys = 2_000 if quick else 10_417
    entries = [(rng.randbytes(32), T_BASE, T_BASE + 86399, 96) for _ in range(n_keys)]
    sample = [e[0] for e in entries[:max(200, n_keys // 10)]]
    with Cpu() as c_ref:
        t_ref, ref = _timed(lambda: _reference_bluezone(sample, 96))
    ref_rate = len(ref) / t_ref
    with Cpu() as c_one:
        t_one, block = _timed(lambda: ids.bluezone_block(entries))
    assert block.idents()[:96] == ref[:96]
    workers = os.cpu_count() or 1
    t_pool, pooled = _timed(lambda: ids.bluezone_block(entries, workers=workers))
    assert pooled.packed == block.packed
    n = len(block)
    vs = "per-ID reference loop (hashlib, byte picking per ID)"
    h, x = ids._sha256, bytes(32)
    with Cpu() as c_floor:
        t0 = time.perf_counter()
        for _ in range(n // 4):
            x = h(x).digest()
        floor = (n // 4) / (time.perf_counter() - t0)
    return [
        {"name": "SHA-256 calls per second, bare loop (the ceiling for one process)",
         "value": floor, "unit": "calls/s", "per_cpu_s": (n // 4) / c_floor.s},
        {"name": f"Bluezone IDs derived, batch, 1 process ({n:,} IDs)", "value": n / t_one,
         "unit": "IDs/s", "vs": vs, "vs_value": ref_rate, "ratio": n / t_one / ref_rate,
         "per_cpu_s": n / c_one.s, "vs_per_cpu_s": len(ref) / c_ref.s},
        {"name": f"Bluezone IDs derived, batch, {workers} processes incl. start-up",
         "value": n / t_pool, "unit": "IDs/s", "vs": vs, "vs_value": ref_rate,
         "ratio": n / t_pool / ref_rate},
    ]


def bench_rpis(quick: bool) -> list[dict[str, Any]]:
    rng = random.Random(SEED + 1)
    n_keys = 2_000 if quick else 20_000
    teks = [(rng.randbytes(16), 2_833_000 + 144 * (i % 14), 144) for i in range(n_keys)]
    with Cpu() as c_ref:
        t_ref, ref = _timed(lambda: [r for t, s, c in teks for r in ref_ids.en_rpis(t, s, c)])
    with Cpu() as c_blk:
        t_blk, block = _timed(lambda: ids.en_block(teks))
    assert block.idents()[:288] == ref[:288]
    n = len(block)
    return [{"name": f"EN RPIs derived, batch ({n:,} RPIs)", "value": n / t_blk,
             "unit": "RPIs/s", "vs": "en_rpis per key (HKDF object, Cipher per key)",
             "vs_value": len(ref) / t_ref, "ratio": t_ref / t_blk,
             "per_cpu_s": n / c_blk.s, "vs_per_cpu_s": len(ref) / c_ref.s}]


# ---------------------------------------------------------------- the F0 join


def _f0(n_ids: int) -> F0:
    rng = random.Random(SEED + 2)
    n_keys = -(-n_ids // 96)
    entries = [(rng.randbytes(32), T_BASE + 86400 * (k % DAYS), T_BASE + 86400 * (k % DAYS)
                + 86399, 96) for k in range(n_keys)]
    block = ids.bluezone_block(entries)
    return F0(source="bench", format="bluezone-infof", signer="bench", cases=[
        F0Case(label="bench", kind="bluezone", block=block, tolerance_s=900.0)])


def _rows(f0: F0, n_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sighting columns in chunks: random IDs, plus every HIT_EVERY-th F0 ID in its slot."""
    block = f0.cases[0].block
    assert block is not None
    hits = np.arange(0, len(block), HIT_EVERY)
    hit_ids = np.frombuffer(block.packed, dtype="S12")[hits]
    hit_t = block.starts[hits].astype(np.float64) + 60
    pos = np.arange(len(hits)) * (n_rows // len(hits))  # rows that carry an F0 ID
    rng = np.random.default_rng(SEED)
    span = DAYS * 86400.0
    for lo in range(0, n_rows, CHUNK):
        n = min(CHUNK, n_rows - lo)
        ident = np.frombuffer(rng.bytes(12 * n), dtype="S12").copy()
        first = T_BASE + (np.arange(lo, lo + n) * (span / n_rows)) + rng.uniform(0, 60, n)
        mask = (pos >= lo) & (pos < lo + n)
        ident[pos[mask] - lo], first[pos[mask] - lo] = hit_ids[mask], hit_t[mask]
        venue = rng.integers(1, VENUES + 1, n)
        yield ident, first, venue


def _split(ident: np.ndarray) -> list[bytes]:
    # not ident.tolist(): numpy drops trailing NUL bytes of S12 items
    raw = ident.tobytes()
    return [raw[i:i + 12] for i in range(0, len(raw), 12)]


def _prepare(store: Store, n_rows: int, f0: F0, load: Callable[[Store, F0, int], None]) -> None:
    db = store.db
    if (store.stat("bench_rows") == n_rows and store.stat("bench_seed") == SEED
            and store.stat("bench_schema") == schema.SCHEMA_VERSION
            and db.scalar("SELECT COUNT(*) FROM sightings") == n_rows):
        return
    t = time.perf_counter()
    for tbl in ("sightings", "clock_epochs", "gateways", "venues"):
        db.execute(f"DELETE FROM {tbl}")
    for i in range(1, VENUES + 1):
        db.execute("INSERT INTO venues (id, province, venue, name) VALUES (?, 'hn', ?, ?)",
                   (i, f"venue-{i}", f"Venue {i}"))
        db.execute("INSERT INTO gateways (id, gateway_id, venue_id) VALUES (?, ?, ?)",
                   (i, f"gw-{i}", i))
    db.execute("INSERT INTO clock_epochs (id, gw_id, boot_id, clock_offset, synced, source, "
               "uncertainty, applied_offset) VALUES (1, 1, 'bench', 0, 1, 'ntp', 0, 0)")
    for ix in (*INDEXES, OLD_IDENT_INDEX):
        db.execute(f"DROP INDEX IF EXISTS {ix}")
    load(store, f0, n_rows)
    for ix, cols in INDEXES.items():
        db.execute(f"CREATE INDEX {ix} ON sightings ({cols})")
    if db.dialect == "postgres":  # for the schema-3 alternative only (see bench_postgres)
        db.execute(f"CREATE INDEX {OLD_IDENT_INDEX} ON sightings (ident)")
    db.execute("ANALYZE")
    for key, value in (("bench_rows", n_rows), ("bench_seed", SEED), ("max_span", 120.0),
                       ("bench_schema", schema.SCHEMA_VERSION)):
        db.execute("INSERT INTO stats (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                   "SET value = excluded.value", (key, value))
    print(f"  built {n_rows:,} sightings ({db.dialect}) in {time.perf_counter() - t:.0f} s",
          flush=True)


def _load_sqlite(store: Store, f0: F0, n_rows: int) -> None:
    db = store.db
    sql = ("INSERT INTO sightings (gw_id, venue_id, seq, epoch_id, kind, ident, ident_key, "
           "slot_start, first_seen, last_seen, count, rssi_max, rssi_median, proximity) VALUES "
           "(?, ?, 1, 1, 'bluezone', ?, ?, ?, ?, ?, 20, -60, -65, 'near')")
    with db.transaction():
        for ident, first, venue in _rows(f0, n_rows):
            v, f = venue.tolist(), first.tolist()
            keys = schema.ident_keys(ident.tobytes(), 12).tolist()
            db.executemany(sql, zip(v, v, _split(ident), keys, [int(x // 900 * 900) for x in f],
                                    f, [x + 120 for x in f], strict=True))


def _load_pg(store: Store, f0: F0, n_rows: int) -> None:
    db = store.db
    assert isinstance(db, PostgresDatabase)
    cols = ("gw_id", "venue_id", "seq", "epoch_id", "kind", "ident", "ident_key", "slot_start",
            "first_seen", "last_seen", "count", "rssi_max", "rssi_median", "proximity")
    for ident, first, venue in _rows(f0, n_rows):
        n = len(ident)
        one = np.ones(n, dtype=np.int64)
        copy_binary(db, "sightings", cols, pg_binary([
            ("int8", venue), ("int8", venue), ("int8", one), ("int8", one),
            ("bytea", np.full(n, b"bluezone", dtype="S8")), ("bytea", ident),
            ("int8", schema.ident_keys(ident.tobytes(), 12)),
            ("int8", (first // 900 * 900).astype(np.int64)), ("float8", first),
            ("float8", first + 120), ("int8", one * 20), ("int8", one * -60),
            ("int8", one * -65), ("bytea", np.full(n, b"near", dtype="S4"))]))


def _join_rows(store: Store, f0: F0, name: str,
               alts: list[tuple[str, Callable[[bytes, list[bytes]], float]]],
               repeat: int) -> list[dict[str, Any]]:
    block = f0.cases[0].block
    assert block is not None
    idents = block.idents()
    want = -(-len(idents) // HIT_EVERY)
    times, cpus = [], []
    for _ in range(repeat):
        with Cpu() as c:
            t, got = _timed(lambda: store.sightings_for_packed([(block.packed, block.width)]))
        assert len(got) == want, (len(got), want)
        times.append(t)
        cpus.append(c.s)
    t_join = statistics.median(times)
    label = (f"{name}: join {len(idents):,} F0 IDs x {store.stat('bench_rows'):,.0f} "
             f"sightings (median of {repeat})")
    rows = []
    for alt_name, alt in alts:
        t_alt = alt(block.packed, idents)
        rows.append({"name": label, "value": t_join, "unit": "s", "vs": alt_name,
                     "vs_value": t_alt, "ratio": t_alt / t_join, "runs_s": times,
                     "matcher_cpu_s": cpus})
    t_match, result = _timed(lambda: match_f0(store, f0))
    windows = len(result.cases[0].windows)
    rows.append({"name": f"{name}: match_f0 end to end ({want:,} hits, {windows:,} windows "
                         "with co-presence)", "value": t_match, "unit": "s"})
    return rows


def bench_sqlite(quick: bool) -> list[dict[str, Any]]:
    n_ids, n_rows = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    f0 = _f0(n_ids)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open_store(f"sqlite:///{CACHE / f'sightings-{n_rows}.db'}") as store:
        _prepare(store, n_rows, f0, _load_sqlite)
        conn = store.db.conn  # type: ignore[attr-defined]

        def executemany_unsorted(packed: bytes, idents: list[bytes]) -> float:
            t = time.perf_counter()
            keys = schema.ident_keys(packed, 12).tolist()
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS alt_keys (k INTEGER, idx INTEGER)")
            conn.execute("BEGIN")
            conn.execute("DELETE FROM alt_keys")
            conn.executemany("INSERT INTO alt_keys VALUES (?, ?)",
                             zip(keys, range(len(keys)), strict=True))
            conn.execute("SELECT f.idx, s.* FROM alt_keys f CROSS JOIN sightings s ON "
                         "s.ident_key = f.k").fetchall()
            conn.execute("COMMIT")
            return time.perf_counter() - t

        def point_lookups(packed: bytes, idents: list[bytes]) -> float:
            sample = idents[:: max(1, len(idents) // 50_000)]
            t = time.perf_counter()
            for i in sample:
                conn.execute("SELECT * FROM sightings WHERE ident_key = ? AND ident = ?",
                             (schema.ident_key(i), i)).fetchall()
            return (time.perf_counter() - t) * len(idents) / len(sample)

        return _join_rows(store, f0, "SQLite", [
            ("temp table by executemany, unsorted", executemany_unsorted),
            ("per-ID indexed lookups (50k sample, scaled)", point_lookups)], 3)


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def bench_postgres(quick: bool) -> list[dict[str, Any]]:
    if not _pg_up():
        return [{"name": "PostgreSQL join", "value": None, "unit": "skipped",
                 "note": "no PostgreSQL on 127.0.0.1:5432"}]
    n_ids, n_rows = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    f0 = _f0(n_ids)
    with open_store(PG_URL, schema_name=f"bzgw_bench_{n_rows}") as store:
        _prepare(store, n_rows, f0, _load_pg)
        db = store.db
        assert isinstance(db, PostgresDatabase)

        def planner_default(packed: bytes, idents: list[bytes]) -> float:
            t = time.perf_counter()
            with db.transaction():
                db.execute("CREATE TEMP TABLE IF NOT EXISTS alt_keys (k BIGINT) ON COMMIT "
                           "DELETE ROWS")
                copy_binary(db, "alt_keys", ("k",), pg_binary([
                    ("int8", np.unique(schema.ident_keys(packed, 12)))]))
                db.execute("ANALYZE alt_keys")
                db.execute("SELECT s.* FROM alt_keys f JOIN sightings s ON s.ident_key = f.k")
            return time.perf_counter() - t

        def schema3_bytes(packed: bytes, idents: list[bytes]) -> float:
            # schema 3's join: sorted ID bytes and their indices in an unlogged table, parallel
            # probes of an index on the ID bytes (built for this comparison only)
            t = time.perf_counter()
            order = np.argsort(np.frombuffer(packed, dtype="S12"), kind="stable")
            with db.transaction():
                for setting in ("enable_hashjoin", "enable_mergejoin", "jit"):
                    db.execute(f"SET LOCAL {setting} = off")
                for setting in ("parallel_setup_cost", "parallel_tuple_cost"):
                    db.execute(f"SET LOCAL {setting} = 0")
                db.execute("CREATE UNLOGGED TABLE alt_ids (ident BYTEA, idx INTEGER)")
                copy_binary(db, "alt_ids", ("ident", "idx"), pg_binary([
                    ("bytea", np.frombuffer(packed, dtype="S12")[order]),
                    ("int4", order.astype(np.int32))]))
                db.execute("ANALYZE alt_ids")
                db.execute("SELECT f.idx, s.* FROM alt_ids f JOIN sightings s ON "
                           "s.ident = f.ident")
                db.execute("DROP TABLE alt_ids")
            return time.perf_counter() - t

        def one_connection(packed: bytes, idents: list[bytes]) -> float:
            probes, db.probes = db.probes, 1
            try:
                return _timed(lambda: store.sightings_for_packed([(packed, 12)]))[0]
            finally:
                db.probes = probes

        return _join_rows(store, f0, "PostgreSQL", [
            ("the same keys probed on one connection", one_connection),
            ("keys in a temp table, planner's own plan (hash join over all sightings)",
             planner_default),
            ("schema 3: sorted ID bytes probing an index on the bytes, parallel workers",
             schema3_bytes)], 3)


def run(quick: bool) -> list[dict[str, Any]]:
    """Every matcher benchmark (see the module docstring)."""
    load = os.getloadavg()[0]
    rows = [*bench_bluezone(quick), *bench_rpis(quick), *bench_sqlite(quick),
            *bench_postgres(quick)]
    for r in rows:
        r["load_avg_1min"] = (load, os.getloadavg()[0])  # shared machines: say so
    return rows


if __name__ == "__main__":
    import sys

    for row in run("--quick" in sys.argv):
        print(row)
