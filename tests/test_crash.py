"""kill -9 the capturing-and-syncing gateway daemon at random moments, over and over.

Every batch the outbox accepted must reach the matcher's store exactly once, no sequence
number may ever carry two different contents (or be handed out again), and the outbox must
pass ``PRAGMA integrity_check`` after every kill. Replay a failing run with ``CRASH_SEED``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from crashkit import (
    CrashReport,
    MatcherKillReport,
    crash_loop,
    ingest_totals,
    matcher_kill_loop,
    stored_batches,
)

from bzgw.lab import Lab
from bzgw.labrecords import drop_schema, temp_store, unique_schema
from matcher.store import Store, open_store

KILLS = 120


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(lab: Lab,
                                                                tmp_path: Path) -> None:
    rep = asyncio.run(crash_loop(lab, tmp_path, kills=KILLS))
    print(f"CRASH_SEED={rep.seed}: {rep.kills} kills in {rep.run_s:.1f} s, "
          f"{rep.accepted} batches accepted, {rep.stored} stored, {rep.arrivals} arrivals")
    assert rep.kills == KILLS and not rep.early_exits, rep.early_exits[:1]
    assert rep.integrity == []
    assert rep.seq_went_back == []
    assert rep.dropped == 0
    # the daemon really captured and synced across the kills
    assert rep.accepted >= 50
    assert rep.missing == []  # every accepted batch was delivered...
    assert rep.stored == rep.accepted  # ...once each (the store dedupes on (gateway, seq))
    assert rep.conflicts == []  # and no sequence number ever meant two different batches
    # some kills landed while batches were in flight: they came again and were deduped
    assert rep.arrivals >= rep.stored


REAL_KILLS = 20


def _check(rep: CrashReport, kills: int) -> None:
    print(f"CRASH_SEED={rep.seed}: {rep.kills} kills in {rep.run_s:.1f} s, "
          f"{rep.accepted} batches accepted, {rep.stored} stored, {rep.arrivals} arrivals")
    assert rep.kills == kills and not rep.early_exits, rep.early_exits[:1]
    assert rep.integrity == [] and rep.seq_went_back == [] and rep.dropped == 0
    assert rep.accepted >= 15
    assert rep.missing == []
    assert rep.stored == rep.accepted
    assert rep.conflicts == []
    assert rep.arrivals >= rep.stored


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_gateway_kill_loop_delivers_to_the_real_matcher(lab: Lab, tmp_path: Path,
                                                       backend: str,
                                                       request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    with temp_store(backend, tmp_path, url) as store:
        rep = asyncio.run(crash_loop(lab, tmp_path, kills=REAL_KILLS, store=store))
        _check(rep, REAL_KILLS)
        if backend == "sqlite":
            assert store.db.scalar("PRAGMA integrity_check") == "ok"


MATCHER_KILLS = 12  # the bench kills 100+


def check_matcher_kills(rep: MatcherKillReport, store: Store, kills: int) -> None:
    """Every batch the gateways' outboxes accepted is stored once; nothing else is."""
    rows = stored_batches(store)
    totals = ingest_totals(store)
    print(f"CRASH_SEED={rep.seed}: {rep.kills} matcher kills in {rep.run_s:.1f} s, accepted "
          f"{rep.accepted}, {len(rows)} stored, {totals.get('duplicate', 0)} duplicates, "
          f"{rep.resent} resent")
    assert rep.kills == kills and not rep.early_exits, rep.early_exits[:1]
    assert rep.integrity == []
    want = {(g, q) for g, n in rep.accepted.items() for q in range(1, n + 1)}
    assert sum(rep.accepted.values()) >= 2 * kills  # the gateways kept producing throughout
    assert len(rows) == len(set(rows))  # exactly once...
    assert set(rows) == want  # ...every accepted batch, and nothing else
    assert totals.get("replay", 0) == 0  # no sequence number carried two contents
    assert totals.get("stored", 0) == len(rows)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_matcher_kill_loop_while_gateways_sync(lab: Lab, tmp_path: Path, backend: str,
                                               request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        db = tmp_path / "matcher.db"
        rep = asyncio.run(matcher_kill_loop(lab, tmp_path, kills=MATCHER_KILLS,
                                            db_url=f"sqlite:///{db}", sqlite_file=db))
        with open_store(f"sqlite:///{db}") as store:
            check_matcher_kills(rep, store, MATCHER_KILLS)
        return
    pg_url = request.getfixturevalue("pg_url")
    schema = unique_schema()
    try:
        rep = asyncio.run(matcher_kill_loop(lab, tmp_path, kills=MATCHER_KILLS,
                                            db_url=f"{pg_url}?schema={schema}"))
        with open_store(pg_url, schema_name=schema) as store:
            check_matcher_kills(rep, store, MATCHER_KILLS)
    finally:
        drop_schema(pg_url, schema)
