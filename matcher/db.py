"""Database connections for the store: SQLite (default) and PostgreSQL, one small interface.

SQL is written once with ``?`` placeholders; the PostgreSQL side rewrites them to ``%s``. Bulk
inserts differ on purpose: SQLite takes multi-row ``INSERT`` statements, PostgreSQL takes
``COPY`` (see ``insert_rows``).

URLs:

- ``sqlite:///var/lib/x.db`` or ``sqlite:////var/lib/x.db`` → ``/var/lib/x.db``; a plain path
  (no scheme) is a SQLite file too; ``sqlite://`` or ``sqlite:///:memory:`` is in memory.
- ``postgresql://user@host:5432/db?schema=name&probes=4`` → PostgreSQL. Two optional query
  parameters (not libpq options): ``schema`` selects, and creates, the schema the tables live
  in; ``probes`` is how many connections a large F0 join is split over (default 2; see
  :meth:`PostgresDatabase.probe_connections`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from core.errors import BzgwError
from matcher import schema

log = logging.getLogger(__name__)

Row = tuple[Any, ...]


class StoreError(BzgwError):
    """The store cannot be opened or used (bad URL, unreachable server, schema problem)."""


class Database(ABC):
    """One connection, one dialect."""

    dialect: str
    integrity_errors: tuple[type[BaseException], ...]
    errors: tuple[type[BaseException], ...]  # the driver's root error (locked, gone, full)

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; return its rows (empty for statements without a result)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each row."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction (nested calls become savepoints)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def insert_rows(self, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows (inside the caller's transaction)."""

    @abstractmethod
    def modify(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT/UPDATE/DELETE; return the number of rows it changed."""

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """First column of the first row, or ``None``."""
        rows = self.execute(sql, params)
        return rows[0][0] if rows else None


_MAX_ROWS_PER_INSERT = 512
MIGRATION_LOCK = 4242  # PostgreSQL advisory lock held while creating schemas and migrating


class SqliteDatabase(Database):
    """SQLite in WAL mode: several matcher processes may share one file."""

    dialect = "sqlite"
    integrity_errors = (sqlite3.IntegrityError,)
    errors = (sqlite3.Error,)

    def __init__(self, path: str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN ourselves, so a write transaction takes the
            # lock up front (BEGIN IMMEDIATE) instead of failing half-way under contention.
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s,
                                        check_same_thread=False)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open SQLite database {path}: {err}") from err
        self._enter_wal(busy_timeout_s)
        # FULL: a batch is acked (and deleted from the gateway's outbox) right after its
        # commit, so the commit must survive a power cut; WAL with NORMAL may lose it.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        # Deleted rows (retention, replaced tables) are overwritten, not left in free pages.
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the ident_key index stays hot
        self.conn.execute("PRAGMA mmap_size=1073741824")
        self._max_variables = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        # SQLite has no bytes-to-integer conversion; the schema's backfill of the join key
        # calls this (rows written later carry the key computed on insert).
        self.conn.create_function(schema.SQLITE_IDENT_KEY, 1, schema.ident_key,
                                  deterministic=True)
        self._depth = 0

    def _enter_wal(self, timeout_s: float) -> None:
        # Switching a new file to WAL answers "database is locked" at once, without waiting
        # on the busy timeout, while another process opening the same file holds its lock
        # (matchers started together): retry within the timeout.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    self.conn.close()
                    raise StoreError(f"cannot open SQLite database {self.path}: {err}") from err
                time.sleep(0.02)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement."""
        return self.conn.execute(sql, params).fetchall()

    def modify(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; rows changed."""
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row."""
        self.conn.executemany(sql, rows)

    def insert_rows(self, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows as multi-row ``INSERT ... VALUES (...), (...)`` statements.

        Not ``executemany``: the sqlite3 module releases the GIL around every row's step and
        must win it back each time, so with any other busy thread in the process (the MQTT
        network thread, batch opening) each row can wait a whole switch interval; measured
        here, 500 rows beside one CPU-bound thread took 890 ms by ``executemany`` and 14 ms
        this way. Chunks are powers of two so only a few statement texts are ever prepared
        (the module's statement cache keeps them).
        """
        n = len(rows)
        if not n:
            return
        width = len(columns)
        flat = [v for r in rows for v in r]
        chunk = _MAX_ROWS_PER_INSERT
        while chunk > 1 and chunk * width > self._max_variables:
            chunk //= 2
        at = 0
        while at < n:
            while chunk > n - at:
                chunk //= 2
            self.conn.execute(self._insert_sql(table, tuple(columns), chunk),
                              flat[at * width:(at + chunk) * width])
            at += chunk

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _insert_sql(table: str, columns: tuple[str, ...], n: int) -> str:
        row = "(" + ", ".join("?" for _ in columns) + ")"
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * n)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; nested levels are savepoints."""
        if self._depth:
            name = f"sp{self._depth}"
            self.conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            finally:
                self._depth -= 1
            self.conn.execute(f"RELEASE {name}")
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3 (autocommit outside explicit transactions)."""

    dialect = "postgres"

    def __init__(self, url: str, *, schema: str | None = None, probes: int = 2,
                 create_schema: bool = True) -> None:
        import psycopg

        self.integrity_errors = (psycopg.errors.IntegrityError,)
        self.errors = (psycopg.Error,)
        self.schema = schema
        self.probes = probes
        self._url = url
        self._siblings: list[PostgresDatabase] = []
        self.reconnects = 0
        self._connect(create_schema)

    def _connect(self, create_schema: bool = False) -> None:
        import psycopg
        from psycopg import sql

        url, schema = self._url, self.schema
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise StoreError(f"cannot connect to PostgreSQL ({_redact(url)}): {err}") from err
        self.conn.adapters.register_dumper(Int8Array, _int8_array_dumper())
        if schema:
            if create_schema:
                # IF NOT EXISTS is not safe against a concurrent CREATE (two matchers starting
                # together): serialise on the migration lock (see Store.migrate).
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(schema)))
            self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

    def _live(self) -> Any:
        """The connection; a new one when the server dropped the old (restart, failover,
        idle timeout). The statement that found it broken has failed and its transaction
        rolled back; the caller retries (the matcher: the gateway resends, no ack)."""
        if self.conn.broken:
            log.warning("PostgreSQL connection lost; reconnecting to %s", _redact(self._url))
            self.conn.close()
            self._connect()
            self.reconnects += 1
        return self.conn

    @staticmethod
    def _pg(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement."""
        cur = self._live().execute(self._pg(sql), params or None)
        return cur.fetchall() if cur.description else []

    def modify(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; rows changed."""
        return self._live().execute(self._pg(sql), params or None).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement per row (pipelined by psycopg)."""
        with self._live().cursor() as cur:
            cur.executemany(self._pg(sql), rows)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """psycopg's transaction block (savepoints when nested)."""
        return _discard(self._live().transaction())

    def insert_rows(self, table: str, columns: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """COPY the rows in (text protocol handled by psycopg's dumpers)."""
        if not rows:
            return
        with self._live().cursor() as cur, cur.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on this connection (its writes are not yet visible
        to other connections)."""
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def probe_connections(self) -> list[PostgresDatabase]:
        """This connection and ``probes - 1`` more to the same database, to split one large
        read over (opened on first use, kept until :meth:`close`).

        Several backends each probing a slice of a sorted key list finish a million index
        probes in about half the time one does, with no table to create (so a role with only
        SELECT can run them): measured in bench/bench_matcher.py. PostgreSQL's own parallel
        workers cannot split an ``= ANY(array)`` index scan, and a nested loop over a table of
        keys that they can split costs a ``COPY`` first and is slower end to end.
        """
        while len(self._siblings) < self.probes - 1:
            try:
                self._siblings.append(PostgresDatabase(
                    self._url, schema=self.schema, probes=1, create_schema=False))
            except StoreError as err:  # e.g. max_connections reached: slower, not failed
                self.probes = 1 + len(self._siblings)
                log.warning("F0 joins use %d connection(s): no more could be opened (%s)",
                            self.probes, err)
        return [self, *self._siblings[:max(0, self.probes - 1)]]

    def close(self) -> None:
        """Close the connection (and any probe connections)."""
        for s in self._siblings:
            s.close()
        self._siblings.clear()
        self.conn.close()


class Int8Array(bytes):
    """An ``int8[]`` query parameter already in PostgreSQL's binary array format
    (:func:`int8_array`): a million keys cross as one buffer, not a Python int each."""


def int8_array(values: Any) -> Int8Array:
    """An ``int8[]`` parameter from a one-dimensional integer array (numpy or sequence)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError("int8_array takes a one-dimensional array")
    rec = np.empty(len(arr), dtype=[("len", ">i4"), ("value", ">i8")])
    rec["len"] = 8
    rec["value"] = arr
    # header: one dimension, no NULLs, element type int8 (OID 20), length, lower bound 1
    return Int8Array(struct.pack(">iiiii", 1, 0, 20, len(arr), 1) + rec.tobytes())


@functools.cache
def _int8_array_dumper() -> type:
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class Int8ArrayDumper(Dumper):
        oid = 1016  # int8[]
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            return bytes(obj)

    return Int8ArrayDumper


@contextlib.contextmanager
def _discard(cm: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with cm:
        yield


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


_URL_OPTIONS = ("schema", "probes")


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """Remove our query parameters (``schema``, ``probes``) from a PostgreSQL URL; return the
    URL libpq gets and the non-empty options."""
    parts = urlsplit(url)
    q = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in q if k in _URL_OPTIONS and v}
    rest = urlencode([(k, v) for k, v in q if k not in _URL_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), options


def sqlite_path(url: str) -> str:
    """The file path (or ``:memory:``) of a ``sqlite:`` URL or a plain path."""
    if not url.startswith("sqlite:"):
        return url
    rest = url[len("sqlite:"):]
    if rest in ("", "//", "///:memory:", ":memory:"):
        return ":memory:"
    if rest.startswith("//"):
        rest = rest[2:]  # authority part (always empty for SQLite)
    if rest.startswith("//"):
        rest = rest[1:]  # sqlite:////abs/path
    if not rest:
        raise StoreError(f"no file path in {url!r}")
    return rest


def connect(url: str, *, schema: str | None = None) -> Database:
    """Open the database a URL names.

    Raises:
        StoreError: unknown scheme, unreachable server or unopenable file.
    """
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("sqlite:") else ""
    if scheme in ("postgresql", "postgres"):
        clean, options = split_options(url)
        try:
            probes = int(options.get("probes") or 2)
            if not 1 <= probes <= 64:
                raise ValueError
        except ValueError:
            raise StoreError(f"probes={options['probes']!r} in the database URL: give a "
                             "number of connections from 1 to 64") from None
        return PostgresDatabase(clean, schema=schema or options.get("schema"), probes=probes)
    if scheme in ("sqlite", ""):
        return SqliteDatabase(sqlite_path(url))
    raise StoreError(f"unsupported database URL {_redact(url)!r}: use sqlite:///path or "
                     "postgresql://...")
