"""Power loss: acked and accepted data survives losing every write that was not synced.

An LD_PRELOAD shim (``native/powercut.c``) records each outbox file's content at every
``fsync``/``fdatasync``; a "power cut" kills ``bzgw run`` and puts every file back to that
synced content, as a disk whose whole volatile cache is lost would. What this does not model:
a disk that persists a *part* of the unsynced writes, torn sectors, or a disk that lies about
having synced; SIGKILL (``test_crash.py``) covers the opposite extreme, where every write
survives.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from crashkit import matcher_kill_loop, power_loop
from powercut import build_shim, cut_power, shim_env
from test_crash import check_matcher_kills

from bzgw.lab import Lab
from bzgw.labrecords import temp_store
from matcher.store import open_store

CUTS = 15
MATCHER_CUTS = 10


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_shim(tmp_path_factory.mktemp("shim"))
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot build the power-cut shim: {err}")


WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS t (x)")
for i in range(100):
    db.execute("INSERT INTO t VALUES (?)", (i,))
print("committed", flush=True)
os._exit(0)  # the power goes: no close, no checkpoint
"""


@pytest.mark.parametrize(("sync", "survive"), [("FULL", 100), ("OFF", 0)])
def test_power_cut_keeps_synced_commits_only(shim: Path, tmp_path: Path, sync: str,
                                             survive: int) -> None:
    # the harness itself: commits that were synced survive a cut, unsynced ones do not
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run([sys.executable, "-c", WRITER, str(disk / "t.db"), sync],
                         env=shim_env(shim, disk), capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "committed", res.stderr
    before = sqlite3.connect(f"file:{disk / 't.db'}?mode=ro", uri=True)
    assert before.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    before.close()
    cut_power(disk)
    db = sqlite3.connect(disk / "t.db")
    try:
        n = db.execute("SELECT count(*) FROM t").fetchone()[0]
    except sqlite3.OperationalError:  # not even the table was synced
        n = 0
    assert n == survive
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_power_cuts_of_the_gateway_lose_no_accepted_batch(shim: Path, lab: Lab,
                                                          tmp_path: Path) -> None:
    with temp_store("sqlite", tmp_path) as store:
        rep = asyncio.run(power_loop(lab, tmp_path, store, shim, cuts=CUTS))
    print(f"CRASH_SEED={rep.seed}: {rep.cuts} power cuts in {rep.run_s:.1f} s, "
          f"{rep.bytes_lost} unsynced bytes thrown away, {rep.lost_commits} cuts lost a "
          f"commit in flight; {rep.accepted} accepted, {rep.stored} stored, "
          f"{rep.arrivals} arrivals")
    assert rep.cuts == CUTS and not rep.early_exits, rep.early_exits[:1]
    assert rep.bytes_lost > 0  # the cuts really threw unsynced writes away
    assert rep.integrity == []
    assert rep.went_back == []  # never a delivered sequence number handed out again
    assert rep.accepted >= 10
    assert rep.missing == [] and rep.stored == rep.accepted and rep.conflicts == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_power_cuts_of_the_matcher_lose_no_acked_batch(shim: Path, lab: Lab,
                                                       tmp_path: Path) -> None:
    # an ack deletes the batch from the gateway's outbox: it must only go out for a commit
    # that survives the cut
    disk = tmp_path / "mdisk"
    disk.mkdir()
    db = disk / "matcher.db"
    rep = asyncio.run(matcher_kill_loop(lab, tmp_path, kills=MATCHER_CUTS,
                                        db_url=f"sqlite:///{db}", sqlite_file=db,
                                        power_cut=shim))
    assert rep.bytes_lost > 0
    with open_store(f"sqlite:///{db}") as store:
        check_matcher_kills(rep, store, MATCHER_CUTS)
