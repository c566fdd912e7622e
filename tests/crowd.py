"""Synthetic flushes of sightings, shaped like an aggregator's output (shared by tests)."""

from __future__ import annotations

import random

from contract import codec
from contract.batch import Batch
from contract.records import IdKind, Proximity, Sighting
from core.clock import ClockEpoch, ClockSource


def crowd(kind: IdKind, n: int, seed: int = 1) -> Batch:
    """``n`` sightings in first-seen order: random IDs, 15/10-min slots, plausible RSSI.

    Times are on the 0.1 s grid, as the sealer leaves them.
    """
    rng = random.Random(seed)
    ep = ClockEpoch("3c1f0d8e-1111-2222-3333-444455556666", 1_699_990_000.25, True,
                    ClockSource.NTP, 0.0)
    base = 1_700_000_100
    slot = base - base % (900 if kind == IdKind.BLUEZONE else 600)
    out = []
    for f in sorted(base + rng.uniform(0, 900) for _ in range(n)):
        dwell = rng.expovariate(1 / 60)
        rssi = rng.randint(-95, -40)
        out.append(Sighting(
            kind=kind, ident=rng.randbytes(12 if kind == IdKind.BLUEZONE else 16),
            slot_start=slot, first_seen=f, last_seen=f + dwell, count=1 + int(dwell * 4),
            rssi_max=rssi, rssi_median=rssi - rng.randint(0, 12), clock=ep,
            tx_power=None if kind == IdKind.BLUEZONE else -8,
            proximity=Proximity.NEAR if rssi > -60 else Proximity.FAR,
            aem=rng.randbytes(4) if kind == IdKind.GAEN else None))
    return codec.quantize(Batch(sightings=out))
