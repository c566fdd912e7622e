"""Day partitions of the record tables on PostgreSQL (native declarative partitioning).

``sightings`` (by ``first_seen``) and ``checkins`` (by ``ts``) are range-partitioned by UTC day:
``sightings_p20261124`` holds ``[day * 86400, (day + 1) * 86400)``. A ``_default`` partition
takes rows whose day has no partition (a gateway clock far off, a late batch for a day already
dropped), so an insert never fails for want of a partition.

- Partitions are created ahead (:func:`ensure`, on opening the store and on every retention
  run) by the database function ``bzgw_day_partition`` that the schema migration installs: it
  builds the day's table standalone, moves that day's rows out of the default partition if any
  arrived there, then attaches it (``ATTACH`` needs a weaker lock than ``CREATE ... PARTITION
  OF`` and indexes the new table like its parent).
- Retention (:func:`drop_expired`) drops every partition whose whole day lies before the
  cutoff (a ``DROP TABLE``: no row-by-row delete, no dead rows to vacuum) and deletes the rows
  before the cutoff in the one partition the cutoff falls in, and in the default partition;
  partition pruning keeps that delete off every younger day.
- The migration (:func:`convert_statement`) is generic: the partitioned table is made ``LIKE``
  the current one and gets the current table's indexes, so columns added or changed later
  (before or after this step) are carried over as they are. The primary key becomes
  ``(id, <time column>)``, because PostgreSQL requires the partition key in every unique key.

SQLite keeps single tables (one file per matcher, no partitioning); retention there deletes.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matcher.db imports the schema, which imports this module
    from matcher.db import Database

log = logging.getLogger(__name__)

DAY = 86400

#: Partitioned tables and the time column each is partitioned by.
TABLES: tuple[tuple[str, str], ...] = (("sightings", "first_seen"), ("checkins", "ts"))

#: Days of partitions kept created ahead of today (a retention run is hourly by default, so
#: this only matters when the matcher is down for days).
AHEAD_DAYS = 3

#: On migration, days before today that get their own partition when they hold data: the
#: longest retention the configuration allows, plus one day at the edge.
MIGRATE_BEHIND_DAYS = 61

# The function takes table and column names as text and builds DDL from them with format()
# and %I, so a name is always quoted as an identifier. No braces in this text: schema.render
# fills ``{placeholders}`` with str.format.
FUNCTION = """
CREATE OR REPLACE FUNCTION bzgw_day_partition(tbl text, col text, day bigint)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    part text := tbl || '_p' || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC',
                                         'YYYYMMDD');
    lo double precision := day * 86400;
    hi double precision := (day + 1) * 86400;
BEGIN
    IF to_regclass(format('%I.%I', current_schema(), part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part, tbl);
    IF to_regclass(format('%I.%I', current_schema(), tbl || '_default')) IS NOT NULL THEN
        EXECUTE format('WITH m AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM m',
                       tbl || '_default', col, lo, col, hi, part);
    END IF;
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   tbl, part, lo, hi);
    RETURN true;
END
$fn$"""


def convert_statement(table: str, column: str) -> str:
    """A ``DO`` block turning the single table ``table`` into one partitioned by day on
    ``column``, keeping its rows, columns, identity sequence and indexes (none if it already
    is partitioned)."""
    old = f"{table}_unpartitioned"
    return f"""
DO $do$
DECLARE
    defs text[];
    def text;
    first_day bigint;
    today bigint := floor(extract(epoch FROM now()) / 86400);
    next_id bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid =
               format('%I.%I', current_schema(), '{table}')::regclass) THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE %I RENAME TO %I', '{table}', '{old}');
    SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid)), ARRAY[]::text[]) INTO defs
        FROM pg_index i WHERE i.indrelid = format('%I.%I', current_schema(), '{old}')::regclass
        AND NOT i.indisprimary;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING IDENTITY '
                   'INCLUDING GENERATED INCLUDING CONSTRAINTS) PARTITION BY RANGE (%I)',
                   '{table}', '{old}', '{column}');
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', '{table}_default', '{table}');
    EXECUTE format('SELECT floor(min(%I) / 86400) FROM %I', '{column}', '{old}')
        INTO first_day;
    FOR d IN greatest(coalesce(first_day, today), today - {MIGRATE_BEHIND_DAYS})
             .. today + {AHEAD_DAYS} LOOP
        PERFORM bzgw_day_partition('{table}', '{column}', d);
    END LOOP;
    EXECUTE format('INSERT INTO %I SELECT * FROM %I', '{table}', '{old}');
    EXECUTE format('SELECT coalesce(max(id), 0) + 1 FROM %I', '{old}') INTO next_id;
    EXECUTE format('DROP TABLE %I', '{old}');
    EXECUTE format('ALTER TABLE %I ALTER COLUMN id RESTART WITH %s', '{table}', next_id);
    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id, %I)', '{table}', '{column}');
    FOREACH def IN ARRAY defs LOOP
        EXECUTE regexp_replace(def, ' ON \\S+ USING ', format(' ON %I USING ', '{table}'));
    END LOOP;
END
$do$"""


@dataclass(frozen=True)
class Partition:
    """One partition: its name and ``[lo, hi)`` range (``None`` bounds for the default)."""

    name: str
    lo: float | None
    hi: float | None


_BOUND = re.compile(r"FROM \('?([-0-9.e+]+)'?\) TO \('?([-0-9.e+]+)'?\)")


def is_partitioned(db: Database, table: str = "sightings") -> bool:
    """Whether ``table`` is a partitioned table (always false on SQLite)."""
    if db.dialect != "postgres":
        return False
    return bool(db.scalar(
        "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = ? AND c.relnamespace = current_schema()::regnamespace", (table,)))


def partitions(db: Database, table: str) -> list[Partition]:
    """The partitions of ``table``, oldest first, the default one last."""
    rows = db.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname = ? AND p.relnamespace = current_schema()::regnamespace", (table,))
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound)
        out.append(Partition(name, float(m[1]), float(m[2])) if m else
                   Partition(name, None, None))
    return sorted(out, key=lambda p: (p.lo is None, p.lo or 0.0))


def ensure(db: Database, now: float | None = None, *, ahead_days: int = AHEAD_DAYS,
           behind_days: int = 0) -> list[str]:
    """Create the day partitions from ``behind_days`` before today to ``ahead_days`` after
    (those missing); return the names created. No-op on SQLite or unpartitioned tables."""
    from matcher.db import MIGRATION_LOCK

    if not is_partitioned(db):
        return []
    today = int((time.time() if now is None else now) // DAY)
    created: list[str] = []
    with db.transaction():
        # two matchers (or a matcher and a migration) must not create the same table at once
        db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        for table, column in TABLES:
            have = {p.lo for p in partitions(db, table)}
            for day in range(today - behind_days, today + ahead_days + 1):
                if float(day * DAY) in have:
                    continue
                db.execute("SELECT bzgw_day_partition(?, ?, ?)", (table, column, day))
                created.append(f"{table}@{day}")
    if created:
        log.info("created day partitions: %s", ", ".join(created))
    return created


def drop_expired(db: Database, cutoff: float) -> dict[str, int]:
    """Retention on partitioned tables: drop the partitions wholly before ``cutoff``, delete
    the rows before it in the partition it falls in (and in the default partition); return
    rows removed per table."""
    out: dict[str, int] = {}
    dropped: list[str] = []
    for table, column in TABLES:
        n = 0
        for p in partitions(db, table):
            if p.hi is None or p.hi > cutoff:
                continue
            # counted before the lock (an expired day gets no new rows but a late batch's)
            n += int(db.scalar(f'SELECT count(*) FROM "{p.name}"'))
            with db.transaction():
                # parent first, as every insert and update locks them: no lock-order deadlock
                # with a matcher storing a batch meanwhile; held only for the DROP itself
                db.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                db.execute(f'DROP TABLE "{p.name}"')
            dropped.append(p.name)
        with db.transaction():
            # pruning limits this to the partition holding the cutoff and the default one
            n += db.modify(f"DELETE FROM {table} WHERE {column} < ?", (cutoff,))
        out[table] = n
    if dropped:
        log.info("retention dropped partitions: %s", ", ".join(dropped))
    return out
