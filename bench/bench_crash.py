"""kill -9 endurance: the real ``bzgw run`` killed at random moments, many more times than the
test suite does (``tests/test_crash.py``: 120), with the same checks.

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
    from crashkit import crash_loop

    from bzgw.lab import make_lab

    kills = 40 if quick else 400
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-crash-") as tmp:
        root = Path(tmp)
        gws = [{"id": "gw-a", "province": "hn", "venue": "cho-a"}]
        with make_lab(root / "lab", gws, matchers=("matcher",)) as lab:
            (root / "run").mkdir()
            rep = asyncio.run(crash_loop(lab, root / "run", kills=kills, seed=20210501))
    bad = (len(rep.missing) + len(rep.conflicts) + len(rep.seq_went_back)
           + len(rep.integrity) + len(rep.early_exits))
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
    ]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
