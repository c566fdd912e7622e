"""kill -9 endurance: the real ``bzgw run`` killed at random moments, many more times than the
test suite does (``tests/test_crash.py``: 120), with the same checks; then the same against the
real matcher service on SQLite; then ``bzgw matcher serve`` itself killed 120 times while two
gateways keep syncing; then 100 power cuts of ``bzgw run`` (every outbox write that was not
synced is thrown away, see ``tests/powercut.py``).

Each round forks ``bzgw run --config X`` (crowd simulator as the radio, syncing to a real
Mosquitto with TLS) from a pre-imported process and SIGKILLs it after a random delay; a last
clean run drains the outbox. Reported: kills, batches accepted, batches stored by the matcher
(must be equal), repeats the matcher deduped, sequence numbers that went missing, meant two
contents or went backwards (must be 0), failed integrity checks (must be 0).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark entry point for ``bzgw bench``."""
    sys.path.insert(0, str(TESTS))
    from crashkit import crash_loop, ingest_totals, matcher_kill_loop, power_loop, stored_batches
    from powercut import build_shim

    from bzgw.lab import make_lab
    from matcher.store import open_store

    kills = 40 if quick else 400
    matcher_kills = 15 if quick else 120
    cuts = 20 if quick else 100
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-crash-") as tmp:
        root = Path(tmp)
        gws = [{"id": "gw-a", "province": "hn", "venue": "cho-a"},
               {"id": "gw-b", "province": "hn", "venue": "ben-xe-b"}]
        with make_lab(root / "lab", gws, matchers=("matcher",)) as lab:
            (root / "run").mkdir()
            (root / "real").mkdir()
            (root / "mk").mkdir()
            rep = asyncio.run(crash_loop(lab, root / "run", kills=kills, seed=20210501))
            with open_store(f"sqlite:///{root / 'real' / 'matcher.db'}") as store:
                real = asyncio.run(crash_loop(lab, root / "real", kills=kills // 4,
                                              seed=20210502, store=store))
            db = root / "mk" / "matcher.db"
            mk = asyncio.run(matcher_kill_loop(lab, root / "mk", kills=matcher_kills,
                                               db_url=f"sqlite:///{db}", seed=20210503,
                                               sqlite_file=db))
            with open_store(f"sqlite:///{db}") as store:
                rows = stored_batches(store)
                totals = ingest_totals(store)
            (root / "pc").mkdir()
            shim = build_shim(root / "pc")
            with open_store(f"sqlite:///{root / 'pc' / 'matcher.db'}") as store:
                pc = asyncio.run(power_loop(lab, root / "pc", store, shim, cuts=cuts,
                                            seed=20210504))
    bad = (len(rep.missing) + len(rep.conflicts) + len(rep.seq_went_back)
           + len(rep.integrity) + len(rep.early_exits))
    bad_real = (len(real.missing) + len(real.conflicts) + len(real.seq_went_back)
                + len(real.integrity) + len(real.early_exits) + abs(real.stored - real.accepted))
    want = {(g, q) for g, n in mk.accepted.items() for q in range(1, n + 1)}
    bad_mk = (len(want ^ set(rows)) + len(rows) - len(set(rows)) + totals.get("replay", 0)
              + len(mk.integrity) + len(mk.early_exits))
    accepted_mk = sum(mk.accepted.values())
    return [
        {"name": "SIGKILLs of bzgw run (random moments)", "value": rep.kills, "unit": "kills"},
        {"name": "kills per minute (spawn, run, kill, integrity check)",
         "value": round(rep.kills / rep.run_s * 60, 1), "unit": "kills/min"},
        {"name": "batches accepted by the outbox", "value": rep.accepted, "unit": "batches"},
        {"name": "batches stored by the matcher (exactly once)", "value": rep.stored,
         "unit": "batches", "vs": "accepted", "vs_value": rep.accepted,
         "ratio": round(rep.stored / rep.accepted, 4) if rep.accepted else None},
        {"name": "repeat deliveries deduped by the matcher", "value": rep.arrivals - rep.stored,
         "unit": "batches"},
        {"name": "lost, doubled, reused or corrupt (must be 0)", "value": bad, "unit": "count"},
        {"name": "SIGKILLs of bzgw run, real matcher.service on SQLite", "value": real.kills,
         "unit": "kills"},
        {"name": "  batches stored by matcher.service", "value": real.stored,
         "unit": "batches", "vs": "accepted", "vs_value": real.accepted,
         "ratio": round(real.stored / real.accepted, 4) if real.accepted else None},
        {"name": "  lost, doubled, reused or corrupt (must be 0)", "value": bad_real,
         "unit": "count"},
        {"name": "SIGKILLs of bzgw matcher serve (SQLite) while 2 gateways sync",
         "value": mk.kills, "unit": "kills"},
        {"name": "  matcher kills per minute", "value": round(mk.kills / mk.run_s * 60, 1),
         "unit": "kills/min"},
        {"name": "  batches stored (exactly once)", "value": len(rows), "unit": "batches",
         "vs": "accepted", "vs_value": accepted_mk,
         "ratio": round(len(rows) / accepted_mk, 4) if accepted_mk else None},
        {"name": "  batches resent by the gateways (no ack before the kill)",
         "value": mk.resent, "unit": "batches"},
        {"name": "  duplicates deduped by the store", "value": totals.get("duplicate", 0),
         "unit": "batches"},
        {"name": "  lost, doubled, reused or corrupt (must be 0)", "value": bad_mk,
         "unit": "count"},
        {"name": "power cuts of bzgw run (unsynced writes discarded)", "value": pc.cuts,
         "unit": "cuts"},
        {"name": "  unsynced bytes thrown away by the cuts", "value": pc.bytes_lost,
         "unit": "bytes"},
        {"name": "  cuts that lost a commit not yet synced (append had not returned)",
         "value": pc.lost_commits, "unit": "cuts"},
        {"name": "  batches stored by matcher.service (exactly once)", "value": pc.stored,
         "unit": "batches", "vs": "accepted", "vs_value": pc.accepted,
         "ratio": round(pc.stored / pc.accepted, 4) if pc.accepted else None},
        {"name": "  lost, doubled, reused or corrupt (must be 0)",
         "value": (len(pc.missing) + pc.conflicts + len(pc.integrity) + len(pc.went_back)
                   + len(pc.early_exits) + abs(pc.stored - pc.accepted)), "unit": "count"},
    ]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
