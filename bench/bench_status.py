"""Status page, health and dashboard costs, each against the alternative measured in the same run.

- ``PhonesNow.add`` per advert (keyed SipHash-2-4 digest of the address into a bounded, ordered
  table), on adverts of the crowd simulator. Alternative: the same table keyed by the raw
  address string, i.e. what not keeping MACs costs on the capture path.
- One health document (``Gateway.health``: outbox status query on a real SQLite outbox
  holding sealed batches, disk usage, phone snapshot) and the ``/metrics`` text built from it.
- Dashboard adoption series: one grouped query over ``adoption_counts`` (per venue and hour)
  on a SQLite store filled through ``Store.add_batch``. Alternative: one small query per venue
  and hour, the obvious loop over the store.
- The dashboard page (all gateways, chart, tables) rendered for the whole province.
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ble.records import Advert
from ble.simulator import Crowd
from bzgw.labrecords import Header, entry
from contract.batch import Batch
from contract.records import AdoptionCount
from core.clock import ClockEpoch, ClockSource
from gateway.health import Component, LinkWatch, PhonesNow, build_health
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox
from gateway.pipeline import PipelineStats
from matcher.dashboard import Dashboard
from matcher.dashboard_queries import adoption_series
from matcher.store import Store, open_store

EPOCH = ClockEpoch("bench", 0.0, True, ClockSource.NTP, 0.0)
T0 = 1_700_000_000


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def adverts(quick: bool) -> list[Advert]:
    crowd = Crowd(seed=3, start=T0, duration_s=1800)
    crowd.add_bluezone_phones(150 if quick else 600, ["v"])
    crowd.add_en_phones(50 if quick else 200, ["v"])
    crowd.add_background(50 if quick else 200, ["v"])
    return list(crowd.adverts("v", rate_hz=2.0))


def raw_table(advs: list[Advert]) -> None:
    """The alternative: the same bounded ordered table keyed by the address itself."""
    seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
    for adv in advs:
        old = seen.pop(adv.address, None)
        rank = 3 if adv.ident is not None else 0
        seen[adv.address] = (adv.ts, max(rank, old[1]) if old else rank)


def bench_phones(quick: bool) -> list[dict[str, Any]]:
    advs = adverts(quick)

    def digested() -> None:
        p = PhonesNow()
        for adv in advs:
            p.add(adv)

    ours = best(digested, 3) / len(advs) * 1e6
    alt = best(lambda: raw_table(advs), 3) / len(advs) * 1e6
    return [{"name": f"PhonesNow.add per advert ({len(advs):,} adverts)", "value": ours,
             "unit": "µs", "vs": "table keyed by raw address", "vs_value": alt,
             "ratio": ours / alt}]


def bench_health(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    outbox = Outbox(tmp / "outbox.db", max_bytes=1 << 30, max_age_s=86400 * 21)
    n = 500 if quick else 5000
    for _ in range(n):
        outbox.append(lambda seq: bytes(2048))
    phones = PhonesNow()
    for adv in adverts(True):
        phones.add(adv)
    link = LinkWatch(time.time())

    def doc() -> dict[str, Any]:
        return build_health(gateway_id="gw-bench", now=T0 + 1800.0, uptime_s=3600,
                            outbox=outbox.status(), outbox_max_bytes=1 << 30,
                            outbox_dir=tmp, stats=PipelineStats(), radio=Component("scanning"),
                            camera=Component("capturing"), clock=EPOCH, connected=True,
                            last_sync=time.time(), link=link, phones=phones)

    metrics = GatewayMetrics(doc)
    build = best(doc, 20) * 1e3
    scrape = best(metrics.render, 20) * 1e3
    outbox.close()
    return [{"name": f"health document ({n:,} batches in the outbox)", "value": build,
             "unit": "ms"},
            {"name": "/metrics text from a fresh health document", "value": scrape,
             "unit": "ms"}]


def fill_store(store: Store, venues: int, days: int) -> None:
    for v in range(venues):
        e = entry(f"gw-{v:04d}", province=f"p{v % 5}", venue=f"venue-{v:04d}",
                  district=f"d{v % 17}")
        counts = [AdoptionCount(window_start=T0 + w * 900, window_len=900, bluezone=(v + w) % 9,
                                gaen=w % 4, other_phones=(v * w) % 7)
                  for w in range(days * 96)]
        store.add_batch(e, Header(e.id, 1, T0), Batch(counts=counts))
        store.set_status(e, "online")


def per_bucket(store: Store, venue_ids: list[int], since: float, until: float) -> int:
    """The alternative: one query per venue and hour."""
    n = 0
    for vid in venue_ids:
        t = int(since) // 3600 * 3600
        while t < until:
            row = store.db.execute(
                "SELECT SUM(bluezone), SUM(gaen), SUM(other_phones) FROM adoption_counts "
                "WHERE venue_id = ? AND window_start >= ? AND window_start < ?",
                (vid, t, t + 3600))
            n += row[0][0] is not None
            t += 3600
    return n


def bench_dashboard(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    venues, days = (40, 3) if quick else (200, 7)
    store = open_store(f"sqlite:///{tmp / 'matcher.db'}")
    fill_store(store, venues, days)
    ids = [v.id for v in store.venues()]
    since, until = float(T0), float(T0 + days * 86400)
    grouped = best(lambda: adoption_series(store, ids, since=since, until=until), 5) * 1e3
    loop = best(lambda: per_bucket(store, ids, since, until), 2) * 1e3
    dash = Dashboard(store, clock=lambda: until)
    page = best(lambda: dash.render(dash.page({"days": str(days)})), 5) * 1e3
    rows = venues * days * 96
    store.close()
    return [{"name": f"adoption series, {venues} venues × {days} days ({rows:,} windows)",
             "value": grouped, "unit": "ms", "vs": "one query per venue and hour",
             "vs_value": loop, "ratio": grouped / loop},
            {"name": f"dashboard page, {venues} gateways, {days} days", "value": page,
             "unit": "ms"}]


def run(quick: bool) -> list[dict[str, Any]]:
    """Every status/dashboard benchmark."""
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-status-") as d:
        tmp = Path(d)
        return [*bench_phones(quick), *bench_health(quick, tmp), *bench_dashboard(quick, tmp)]
