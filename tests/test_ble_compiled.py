"""The compiled hot modules (``ble._decoders_c``, ``ble._aggregator_c``) against the pure
Python they are built from: the same decisions on the same input, in separate processes
(``BZGW_PURE_PYTHON=1`` selects the pure code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from ble.compiled import PURE_ENV

# Feeds a simulated venue through the aggregator (raw batches with a watcher, and decoded
# adverts) and prints everything it decided: sightings, counts, the phones heard.
_PROGRAM = r"""
import json, sys
import ble.aggregator as A, ble.decoders as D
from ble.simulator import Crowd
from ble.config import ProximityThresholds
from core.clock import ReplayClock

crowd = Crowd(seed=7, start=1_627_790_000, duration_s=1500)
crowd.add_bluezone_phones(12, venues=["v"]); crowd.add_en_phones(5, venues=["v"])
crowd.add_iphones(4, venues=["v"]); crowd.add_background(9, venues=["v"])
reps = list(crowd.reports("v", rate_hz=1.0))
epoch = ReplayClock().epoch()
heard = []
agg = A.WindowAggregator(ProximityThresholds(), clock=epoch, count_window_s=600, max_ids=25,
                         watcher=lambda ts, a, k: heard.append((ts, a, str(k))))
for i in range(0, len(reps), 100):
    agg.feed(reps[i:i + 100])
    if i % 5000 == 0:
        agg.flush(reps[i][0])
s1, c1 = agg.flush(reps[-1][0] + 1, final=True)
agg2 = A.WindowAggregator(ProximityThresholds(), clock=epoch, count_window_s=600)
for r in reps:
    agg2.add(D.advert_of(r.ts, r.address, 1, r.rssi, D.decode(r.data)))
s2, c2 = agg2.flush(reps[-1][0] + 1, final=True)
junk = [bytes([n % 256]) * (n % 40) + bytes(range(n % 31)) for n in range(3000)]
print(json.dumps({
    "compiled": [A.COMPILED, D.COMPILED],
    "sightings": [repr(s) for s in s1 + s2], "counts": [repr(c) for c in c1 + c2],
    "heard": heard, "adverts": [agg.adverts, agg2.adverts],
    "decoded": [repr(D.decode_uncached(b)) for b in junk + [r.data for r in reps[:2000]]],
    "digests": [A._siphash(0x0123456789ABCDEF, 0xFEDCBA9876543210 + n, b)
                for n, b in enumerate(junk[:500] + [bytes(range(256)) * 2, bytes(range(200))])],
}))
"""


def _run(pure: bool) -> dict[str, object]:
    env = {**os.environ, PURE_ENV: "1" if pure else "0"}
    out = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                         env=env, check=True, timeout=300)
    return dict(json.loads(out.stdout))


def test_pure_python_fallback_runs_when_asked() -> None:
    assert _run(pure=True)["compiled"] == [False, False]


@pytest.mark.skipif(find_spec("ble._aggregator_c") is None,
                    reason="the package was installed without its compiled modules")
def test_compiled_modules_decide_exactly_as_the_pure_code() -> None:
    pure, compiled = _run(pure=True), _run(pure=False)
    assert compiled["compiled"] == [True, True]
    assert pure["sightings"] and pure["counts"] and pure["heard"]
    for key in ("sightings", "counts", "heard", "adverts", "decoded", "digests"):
        assert compiled[key] == pure[key], key
