"""The gateway's buffer of sealed batches: SQLite in WAL mode, crash-safe and bounded.

One row per sealed batch: sequence number, created-at, size and the sealed bytes, nothing
else (the gateway cannot read what it stores). A row leaves only when the matcher's
application-level ack for its sequence number arrives, or when a bound drops it: the byte
budget (oldest first) or the retention age. Every drop is counted in the same transaction
as the delete, so the counts survive restarts and are reported in :meth:`Outbox.status`.

Durability: ``synchronous=FULL``. In WAL mode ``NORMAL`` survives a killed process but may
lose the last commits on power loss, and a lost ``append`` would hand its sequence number out
again after reboot, possibly for different content than the copy already at the matcher (which
would then discard the new batch as a duplicate). One fsync per flush and per group of acks is
cheap by comparison. The counter row ``next_seq`` is advanced in the same transaction as the
insert, so sequence numbers never repeat. ``tests/test_powerloss.py`` cuts the power under
``bzgw run`` (every write not yet synced is thrown away) and fails with ``NORMAL``.

Writes hold ``BEGIN IMMEDIATE`` for a few milliseconds at most; all methods are thread-safe so
the sync loop may run acks in a worker thread while capture appends on the event loop. Reads
use a second connection and so never wait for a write's fsync.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from core.clock import Clock, ClockCorrection, ClockEpoch, SystemClock
from core.errors import BzgwError, OutboxFullError

log = logging.getLogger(__name__)


def _import_sqlite_utils() -> None:
    """Import sqlite_utils without letting it import numpy and pandas.

    sqlite_utils imports both at module level when installed, only to convert their values
    on insert, which the outbox never does (it runs migrations). numpy alone is ~16 MB of
    resident memory in the gateway (``bench/bench_footprint.py``). If either is already
    loaded (a test process, the matcher), sqlite_utils sees it as usual.
    """
    blocked = [m for m in ("numpy", "pandas") if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # import of m raises ImportError
    try:
        import sqlite_utils.migrations  # noqa: F401
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


_import_sqlite_utils()
from sqlite_utils import Database  # noqa: E402  (after the import above)
from sqlite_utils.migrations import Migrations  # noqa: E402

COUNTERS = ("next_seq", "dropped_batches", "dropped_bytes", "rejected", "acked")
migrations = Migrations("bzgw-outbox")


@migrations()
def m001_batches(db: Database) -> None:
    """Sealed batches and persistent counters."""
    db.execute("CREATE TABLE batches (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL, "
               "size INTEGER NOT NULL, data BLOB NOT NULL)")
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.conn.executemany("INSERT INTO counters VALUES (?, ?)",
                        [(n, 1 if n == "next_seq" else 0) for n in COUNTERS])


@migrations()
def m002_epochs(db: Database) -> None:
    """The clock epoch each batch was created in, so retention ages it by the monotonic clock.

    A Pi without an RTC boots with a stale wall clock; a batch's ``created_at`` from then is
    far in the past once the clock syncs, and ageing by it would drop the batch early. Rows
    from before this migration have NULL here and are aged by ``created_at`` as before.
    """
    db.execute("ALTER TABLE batches ADD COLUMN boot_id TEXT")
    db.execute("ALTER TABLE batches ADD COLUMN mono REAL")
    db.execute("ALTER TABLE batches ADD COLUMN synced INTEGER")


class OutboxError(BzgwError):
    """The outbox file cannot be opened or used (corrupt, unreadable, locked)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One sealed batch waiting for its ack."""

    seq: int
    created_at: float
    size: int
    data: bytes


@dataclass(frozen=True)
class OutboxStatus:
    """What the outbox holds and what it had to give up.

    Attributes:
        depth: batches waiting for an ack.
        bytes: their sealed size in bytes.
        oldest_created_at: created-at of the oldest waiting batch (``None`` when empty).
        dropped_batches: batches dropped by the size bound or retention, ever.
        dropped_bytes: their bytes.
        rejected: batches the matcher rejected (deleted, never resent).
        next_seq: the sequence number the next batch will get.
        full: the last append failed because the disk (or page limit) is full.
        last_error: the last storage error, ``None`` if there was none.
        acked: batches the matcher acknowledged, ever.
    """

    depth: int
    bytes: int
    oldest_created_at: float | None
    dropped_batches: int
    dropped_bytes: int
    rejected: int
    next_seq: int
    full: bool
    last_error: str | None
    acked: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (health topic, ``--json``)."""
        return asdict(self)


def _is_full(err: sqlite3.Error) -> bool:
    return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(err)


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10,
                                   isolation_level=None, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"{path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
        return conn
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot open the outbox: {err}") from err


class Outbox:
    """Sealed-batch store.

    Args:
        path: the SQLite file (created with its folder if missing).
        max_bytes: sealed bytes kept at most; beyond it the oldest batches are dropped.
        max_age_s: retention; older batches are dropped by :meth:`enforce_retention`.
        clock: wall clock stamping ``created_at`` (the daemon's clock; replay clocks too).
        max_file_bytes: optional hard cap on the database file (SQLite ``max_page_count``);
            reaching it behaves like a full disk.

    Raises:
        OutboxError: the file cannot be opened or migrated.
    """

    def __init__(self, path: Path | str, *, max_bytes: int, max_age_s: float,
                 clock: Clock | None = None, max_file_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._full = False
        self._last_error: str | None = None
        self._conn = _connect(self.path)
        try:
            migrations.apply(Database(self._conn, execute_plugins=False))
            if max_file_bytes is not None:
                page = self._conn.execute("PRAGMA page_size").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count={max(2, max_file_bytes // page)}")
        except sqlite3.Error as err:
            self._conn.close()
            raise OutboxError(f"{self.path}: cannot prepare the outbox: {err}") from err
        # Reads get their own connection: in WAL mode they then never wait for a write
        # transaction (an ack's fsync) to finish, so the sync loop keeps sending meanwhile.
        self._rconn = _connect(self.path)
        self._rconn.execute("PRAGMA query_only=1")
        self._rlock = threading.Lock()

    # -------------------------------------------------------------- writes

    def _counter(self, name: str) -> int:
        return int(self._conn.execute("SELECT value FROM counters WHERE name = ?",
                                      (name,)).fetchone()[0])

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def _write(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in one IMMEDIATE transaction; storage errors become product errors."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn()
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                self._last_error = f"{what}: {err}"
                if _is_full(err):
                    self._full = True
                    raise OutboxFullError(f"{self.path}: {what} failed, storage full: "
                                          f"{err}") from err
                raise OutboxError(f"{self.path}: {what} failed: {err}") from err
            return out

    def append(self, make: Callable[[int], bytes], *, created_at: float | None = None,
               epoch: ClockEpoch | None = None) -> int:
        """Allocate the next sequence number, seal with ``make(seq)`` and store, atomically.

        Batches beyond ``max_bytes`` are dropped oldest first (never the new one), counted.

        Args:
            make: seals the batch for a sequence number.
            created_at: the batch's wall time (default: the outbox clock's now).
            epoch: the clock epoch ``created_at`` was read in (default: the clock's), kept
                for retention.

        Returns:
            The sequence number stored.

        Raises:
            OutboxFullError: the disk or page limit is full; nothing was stored and the
                sequence number was not used. ``status().full`` stays set until an append
                succeeds.
            OutboxError: any other storage failure.
        """

        def tx() -> tuple[int, int, int]:
            seq = self._counter("next_seq")
            top = self._conn.execute("SELECT MAX(seq) FROM batches").fetchone()[0]
            seq = max(seq, (top or 0) + 1)
            data = bytes(make(seq))
            ep = epoch if epoch is not None else self.clock.epoch()
            at = created_at if created_at is not None else self.clock.now()
            self._conn.execute(
                "INSERT INTO batches (seq, created_at, size, data, boot_id, mono, synced) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, at, len(data), data, ep.boot_id, ep.mono(at), int(ep.synced)))
            self._conn.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'",
                               (seq + 1,))
            n, freed = self._evict_over_budget(seq)
            return seq, n, freed

        seq, n, freed = self._write("append", tx)
        self._full = False
        if n:
            log.warning("outbox over %d bytes: dropped the %d oldest batches (%d bytes)",
                        self.max_bytes, n, freed)
        return int(seq)

    def _evict_over_budget(self, keep: int) -> tuple[int, int]:
        total = self._conn.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]
        excess = total - self.max_bytes
        if excess <= 0:
            return 0, 0
        n = freed = 0
        last = None
        for seq, size in self._conn.execute(
                "SELECT seq, size FROM batches WHERE seq != ? ORDER BY seq", (keep,)):
            if freed >= excess:
                break
            n, freed, last = n + 1, freed + size, seq
        if last is not None:
            self._conn.execute("DELETE FROM batches WHERE seq <= ? AND seq != ?", (last, keep))
            self._bump("dropped_batches", n)
            self._bump("dropped_bytes", freed)
        return n, freed

    def ack(self, seq: int) -> bool:
        """The matcher has the batch (stored or duplicate): delete it. ``False`` if absent."""
        return self.settle([seq]) == 1

    def reject(self, seq: int) -> bool:
        """The matcher refused the batch: delete it and count it as rejected."""
        return self.settle([], rejected=[seq]) == 1

    def settle(self, acked: Iterable[int], *, rejected: Iterable[int] = ()) -> int:
        """Delete many acked and rejected batches in one transaction (one fsync).

        A storage error here is recorded but not raised: the batch stays and is resent, and
        the matcher answers ``duplicate`` next time.

        Returns:
            Rows deleted.
        """
        ok, bad = list(acked), list(rejected)
        if not ok and not bad:
            return 0

        def tx() -> int:
            cur = self._conn.executemany("DELETE FROM batches WHERE seq = ?",
                                         [(s,) for s in ok])
            n_ok = max(cur.rowcount, 0)
            cur = self._conn.executemany("DELETE FROM batches WHERE seq = ?",
                                         [(s,) for s in bad])
            n_bad = max(cur.rowcount, 0)
            self._bump("acked", n_ok)
            self._bump("rejected", n_bad)
            return n_ok + n_bad

        try:
            return int(self._write("ack", tx))
        except (OutboxFullError, OutboxError) as err:
            log.error("%s", err)
            return 0

    def enforce_retention(self, now: float | None = None,
                          epoch: ClockEpoch | None = None) -> int:
        """Drop batches older than ``max_age_s`` (counted). Returns how many.

        Ages come from the clock epochs, never from a stale wall clock: a batch of this boot
        is aged by the monotonic clock (exact whatever the wall clock did since); one of an
        earlier boot by its ``created_at`` when that clock was synchronised; one of an earlier
        boot whose clock was not is at least as old as this boot's uptime and is dropped only
        when that exceeds the retention (a wall time read from a stale clock lags, so trusting
        it would drop early).

        Args:
            now: wall time (default: the clock's now).
            epoch: the epoch ``now`` is in (default: the clock's).
        """
        t = self.clock.now() if now is None else now
        ep = self.clock.epoch() if epoch is None else epoch
        max_age = self.max_age_s
        where = ("(boot_id = :boot AND mono < :mono_cutoff)"
                 " OR (boot_id IS NULL AND created_at < :cutoff)"
                 " OR (boot_id != :boot AND synced = 1 AND created_at < :cutoff)"
                 " OR (boot_id != :boot AND synced = 0 AND :uptime > :max_age)")
        args = {"boot": ep.boot_id, "mono_cutoff": ep.mono(t) - max_age,
                "cutoff": t - max_age, "uptime": ep.mono(t), "max_age": max_age}

        def tx() -> tuple[int, int]:
            n, size = self._conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches WHERE {where}",
                args).fetchone()
            if n:
                self._conn.execute(f"DELETE FROM batches WHERE {where}", args)
                self._bump("dropped_batches", n)
                self._bump("dropped_bytes", size)
            return int(n), int(size)

        n, size = self._write("retention", tx)
        if n:
            log.warning("retention: dropped %d batches (%d bytes) older than %.0f days", n,
                        size, self.max_age_s / 86400)
        return n

    def retime(self, correction: ClockCorrection) -> int:
        """Move ``created_at`` of this boot's batches sealed in a corrected epoch.

        Only the outbox's own bookkeeping changes (the sealed bytes carry the epoch, and the
        correction travels to the matcher in the next batch): the oldest-batch age on the
        health topic then tells the truth. Returns the rows changed.
        """
        shift = correction.new_offset - correction.old_offset

        def tx() -> int:
            cur = self._conn.execute(
                "UPDATE batches SET created_at = created_at + ? WHERE boot_id = ? "
                "AND synced = 0 AND abs(created_at - mono - ?) < 0.001",
                (shift, correction.boot_id, correction.old_offset))
            return max(cur.rowcount, 0)

        return int(self._write("retime", tx))

    # -------------------------------------------------------------- reads

    def pending(self, limit: int, *, exclude: Iterable[int] = ()) -> list[OutboxItem]:
        """Up to ``limit`` waiting batches, oldest first, skipping ``exclude`` (in flight)."""
        skip = list(exclude)
        sql = "SELECT seq, created_at, size, data FROM batches"
        if skip:
            sql += f" WHERE seq NOT IN ({','.join('?' * len(skip))})"
        with self._rlock:
            try:
                rows = self._rconn.execute(sql + " ORDER BY seq LIMIT ?",
                                           (*skip, limit)).fetchall()
            except sqlite3.Error as err:
                self._last_error = f"read: {err}"
                raise OutboxError(f"{self.path}: read failed: {err}") from err
        return [OutboxItem(int(s), float(c), int(z), bytes(d)) for s, c, z, d in rows]

    def status(self) -> OutboxStatus:
        """Depth, bytes, oldest, drop counters and health flags."""
        with self._rlock:
            try:
                return _status(self._rconn, full=self._full, last_error=self._last_error)
            except sqlite3.Error as err:
                raise OutboxError(f"{self.path}: read failed: {err}") from err

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``"ok"`` when sound)."""
        with self._lock:
            return "\n".join(r[0] for r in self._conn.execute("PRAGMA integrity_check"))

    def close(self) -> None:
        """Close the database (safe to call twice)."""
        with self._lock, self._rlock:
            self._rconn.close()
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _status(conn: sqlite3.Connection, *, full: bool, last_error: str | None) -> OutboxStatus:
    depth, size, oldest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM batches").fetchone()
    c = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return OutboxStatus(depth=int(depth), bytes=int(size), oldest_created_at=oldest,
                        dropped_batches=c["dropped_batches"], dropped_bytes=c["dropped_bytes"],
                        rejected=c["rejected"], next_seq=c["next_seq"], full=full,
                        last_error=last_error, acked=c.get("acked", 0))


def read_status(path: Path | str) -> OutboxStatus:
    """Status of an outbox file without modifying it (``bzgw outbox status``).

    Works while the daemon has it open (WAL readers do not block the writer).

    Raises:
        OutboxError: no outbox at ``path``, or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise OutboxError(f"{p}: no outbox file here (is `outbox.path` right?)")
    conn = _connect(p, readonly=True)
    try:
        if not conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'batches'").fetchone()[0]:
            # created by a daemon stopped (or killed) before its schema was committed
            return OutboxStatus(depth=0, bytes=0, oldest_created_at=None, dropped_batches=0,
                                dropped_bytes=0, rejected=0, next_seq=1, full=False,
                                last_error=None)
        return _status(conn, full=False, last_error=None)
    except sqlite3.Error as err:
        raise OutboxError(f"{p}: not a readable outbox: {err}") from err
    finally:
        conn.close()

