"""kill -9 the capturing-and-syncing gateway daemon at random moments, over and over.

Every batch the outbox accepted must reach the matcher's store exactly once, no sequence
number may ever carry two different contents (or be handed out again), and the outbox must
pass ``PRAGMA integrity_check`` after every kill. Replay a failing run with ``CRASH_SEED``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from crashkit import crash_loop

from bzgw.lab import Lab

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
