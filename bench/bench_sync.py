"""Sealing size and sync throughput, each against the alternative measured in the same run.

- Wire bytes per sighting at 500 sightings per batch, everything included (framing, header,
  HPKE encapsulation and tag, Ed25519 signature, padding to the size bucket), for Bluezone
  and Exposure Notification sightings from the crowd simulator through the real aggregator;
  X25519 and the ML-KEM-768 hybrid suite. Alternative: the same sighting as one JSON message
  (hex IDs), the way per-advert BLE→MQTT gateways publish.
- Sightings per second from a prefilled outbox through Mosquitto (TLS, client certificates,
  generated ACLs) into the real matcher (:class:`matcher.service.MatcherService`: verify,
  open, dedupe, store in SQLite, ack) running as its own process; the gateway side is
  :class:`mqtt.sync.GatewaySync` with the default in-flight window (8, and 32). The same path
  into a minimal ingest (``open_batch``, in-memory dedupe, ack) separates the transport from
  the matcher's store. Alternative: the same sightings published one JSON message each at
  QoS 1 to a subscriber that only counts them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from ble.aggregator import WindowAggregator
from ble.simulator import Crowd
from bzgw.lab import make_lab
from contract import codec
from contract.batch import Batch
from contract.records import IdKind, Sighting
from contract.sealing import SUITES, Sealer, generate_matcher_keypair, save_matcher_keypair
from core.clock import ClockEpoch, ClockSource
from core.settings import to_plain
from gateway.config import IdentityConfig
from gateway.outbox import Outbox
from mqtt import topics
from mqtt.client import MqttClient
from mqtt.sync import GatewaySync

PER_BATCH = 500
GATEWAYS = 8  # gateways draining into one matcher at once (a province has hundreds)
EPOCH = ClockEpoch("bench-boot", 0.0, True, ClockSource.NTP)

MATCHER = r"""
import asyncio, json, sys
from pathlib import Path
from contract.registry import load_registry
from contract.sealing import load_matcher_private_key
from matcher.service import MatcherService
from matcher.store import open_store
from core.settings import convert
from mqtt.config import MqttConfig

root = Path(sys.argv[1])
cfg = convert(json.loads((root / "matcher.json").read_text()), MqttConfig)

async def main():
    stop = asyncio.Event()
    svc = MatcherService(store=open_store(f"sqlite:///{root / 'matcher.db'}"),
                         registry=load_registry(root / "lab" / "registry.yaml"),
                         private_key=load_matcher_private_key(root / "matcher.key"),
                         mqtt=cfg, client_id="bench-matcher", gateway_reports=False)
    task = asyncio.create_task(svc.run(stop))
    await svc.subscribed.wait()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await task
    print(json.dumps(svc.stats.batches), flush=True)

asyncio.run(main())
"""


MINIMAL = r"""
import asyncio, json, sys, time
from pathlib import Path
from contract.registry import load_registry
from contract.sealing import load_matcher_private_key, open_batch
from mqtt import topics
from mqtt.client import MqttClient
from core.settings import convert
from mqtt.config import MqttConfig
from mqtt.sync import ack_payload

root = Path(sys.argv[1])
cfg = convert(json.loads((root / "matcher.json").read_text()), MqttConfig)
registry = load_registry(root / "lab" / "registry.yaml")
key = load_matcher_private_key(root / "matcher.key")
seen = {}

async def main():
    async with MqttClient(cfg, "bench-minimal") as c:
        await c.subscribe(topics.SHARED_BATCHES, qos=1)
        print("ready", flush=True)
        stdin = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        reader = asyncio.ensure_future(serve(c))
        await stdin
        reader.cancel()
    print(len(seen), flush=True)

async def serve(c):
    async for m in c.messages():
        p, v, g, _ = topics.parse(m.topic)
        header, batch = open_batch(m.payload, registry=registry, private_key=key)
        status = "duplicate" if (g, header.seq) in seen else "stored"
        seen[(g, header.seq)] = len(batch.sightings)
        c.publish_nowait(topics.ack(p, v, g), ack_payload(header.seq, status,
                         matcher_time=time.time()), qos=1)

asyncio.run(main())
"""


def simulated_sightings(quick: bool) -> list[Sighting]:
    """Sightings of a simulated crowd, aggregated by the real aggregator."""
    crowd = Crowd(seed=11, start=1_700_000_000.0, duration_s=3600)
    crowd.add_bluezone_phones(300 if quick else 1200, venues=["v"])
    crowd.add_en_phones(150 if quick else 600, venues=["v"])
    crowd.add_background(20, venues=["v"])
    agg = WindowAggregator(max_ids=200_000)
    for adv in crowd.adverts("v", rate_hz=0.1):
        agg.add(adv, EPOCH)
    return agg.flush(1e12, final=True)[0]


def naive_json(s: Sighting) -> bytes:
    """One sighting as a per-advert gateway would publish it."""
    return json.dumps({"kind": str(s.kind), "id": s.ident.hex(), "slot_start": s.slot_start,
                       "first_seen": s.first_seen, "last_seen": s.last_seen,
                       "count": s.count, "rssi_max": s.rssi_max,
                       "rssi_median": s.rssi_median, "tx_power": s.tx_power,
                       "proximity": str(s.proximity),
                       "aem": s.aem.hex() if s.aem else None,
                       "clock": {"boot_id": s.clock.boot_id, "offset": s.clock.offset,
                                 "synced": s.clock.synced}}).encode()


def fill(pool: list[Sighting], n: int, rng: random.Random) -> list[Sighting]:
    """``n`` sightings drawn from ``pool`` with fresh IDs (distinct batches, real shapes)."""
    return [replace(s, ident=rng.randbytes(len(s.ident)),
                    aem=rng.randbytes(4) if s.aem else None)
            for s in (pool[i % len(pool)] for i in range(n))]


def size_rows(sightings: list[Sighting]) -> list[dict[str, Any]]:
    rows = []
    key = Sealer  # one matcher key pair per suite
    rng = random.Random(5)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    dev = Ed25519PrivateKey.generate()
    for kind, label in ((IdKind.BLUEZONE, "Bluezone"), (IdKind.GAEN, "EN")):
        pool = [s for s in sightings if s.kind == kind]
        batch = Batch(sightings=fill(pool, PER_BATCH, rng) if len(pool) < PER_BATCH
                      else pool[:PER_BATCH])
        naive = sum(len(naive_json(s)) for s in batch.sightings) / PER_BATCH
        body = len(codec.encode(batch, quantize=True)) / PER_BATCH
        rows.append({"name": f"compressed plaintext per {label} sighting before padding",
                     "value": round(body, 2), "unit": "B/sighting", "vs": "naive JSON",
                     "vs_value": round(naive, 1), "ratio": round(naive / body, 2)})
        for suite in SUITES:
            sealer = key(gateway_id="gw-bench-0001", matcher_public_key=generate_matcher_keypair(
                suite)[1], signing_key=dev, suite=suite)
            wire = sealer.seal(batch, seq=123456, created_at=1_700_000_000.0, clock=EPOCH)
            per = len(wire) / PER_BATCH
            rows.append({"name": f"wire bytes per {label} sighting, {PER_BATCH}/batch, {suite}",
                         "value": round(per, 2), "unit": "B/sighting", "vs": "naive JSON",
                         "vs_value": round(naive, 1), "ratio": round(naive / per, 2)})
    return rows


async def _naive_rate(lab: Any, sightings: list[Sighting], inflight: int) -> float:
    """Sightings/s as one QoS 1 JSON message each to a subscriber that counts them."""
    gw = lab.gateways["gw-0"]
    got = 0
    done = asyncio.Event()
    msgs = [naive_json(s) for s in sightings]
    async with MqttClient(lab.matcher_mqtt["matcher-2"], "naive-sub") as sub, \
            MqttClient(gw.mqtt, "gw-0") as pub:
        await sub.subscribe(topics.ALL_HEALTH, qos=1)  # gateways may write health

        async def count() -> None:
            nonlocal got
            async for _ in sub.messages():
                got += 1
                if got == len(msgs):
                    done.set()

        counter = asyncio.create_task(count())
        topic = topics.health(gw.entry.province, gw.entry.venue, gw.entry.id)
        t0 = time.perf_counter()
        window: set[asyncio.Future[None]] = set()
        for m in msgs:
            if len(window) >= inflight:
                _, window = await asyncio.wait(window,
                                                      return_when=asyncio.FIRST_COMPLETED)
            window.add(pub.publish_nowait(topic, m, qos=1))
        await asyncio.gather(*window)
        await asyncio.wait_for(done.wait(), 120)
        dt = time.perf_counter() - t0
        counter.cancel()
    return len(msgs) / dt


def _seal(sealer: Sealer, batch: Batch, seq: int) -> bytes:
    return sealer.seal(batch, seq=seq, created_at=1.0, clock=EPOCH)


async def _drain_rate(lab: Any, outboxes: dict[str, Outbox],
                      inflight: int) -> float:
    """Drain every outbox at once, one :class:`GatewaySync` each; sightings/s."""
    n_batches = sum(ob.status().depth for ob in outboxes.values())
    syncs = []
    for gw_id, outbox in outboxes.items():
        gw = lab.gateways[gw_id]
        e = gw.entry
        syncs.append(GatewaySync(outbox, msgspec.structs.replace(gw.mqtt, inflight=inflight),
                                 IdentityConfig(id=e.id, province=e.province, venue=e.venue),
                                 poll_s=0.01))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sync.run(stop)) for sync in syncs]
    while not all(sync.connected for sync in syncs):  # noqa: ASYNC110 - plain state
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()
    while any(ob.status().depth for ob in outboxes.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    dt = time.perf_counter() - t0
    stop.set()
    await asyncio.gather(*tasks)
    stored = sum(sync.counters.stored for sync in syncs)
    assert stored == n_batches, [sync.stats() for sync in syncs]
    return n_batches * PER_BATCH / dt


def _drain_through(script: str, root: Path, lab: Any, outboxes: dict[str, Outbox],
                   inflight: int = 8) -> tuple[float, str]:
    """Run the matcher ``script`` as a process and time the drain; returns sightings/s and
    the matcher's final line."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("matcher process did not start")
        rate = asyncio.run(_drain_rate(lab, outboxes, inflight))
        proc.stdin.close()
        last = proc.stdout.readline().strip()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return rate, last


def throughput_rows(sightings: list[Sighting], quick: bool) -> list[dict[str, Any]]:
    per_gateway = 12 if quick else 100  # batches each of the GATEWAYS gateways drains
    n_single = 40 if quick else 300  # batches the single gateway drains
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-sync-") as tmp:
        root = Path(tmp)
        gws = [{"id": f"gw-{i}", "province": "hn", "venue": f"cho-{i}"}
               for i in range(GATEWAYS)]
        lab = make_lab(root / "lab", gws, matchers=("matcher", "matcher-2"),
                       persistence=False)
        with lab:
            priv, pub = generate_matcher_keypair()
            save_matcher_keypair(priv, pub, root / "matcher.key", root / "matcher.pub")
            (root / "matcher.json").write_text(json.dumps(to_plain(lab.matcher_mqtt["matcher"])))
            rng = random.Random(9)
            pool = [s for s in sightings if s.kind == IdKind.BLUEZONE]
            outboxes = {g: Outbox(root / f"outbox-{g}.db", max_bytes=1 << 30, max_age_s=86400)
                        for g in lab.gateways}
            sealers = {g: Sealer(gateway_id=g, matcher_public_key=pub,
                                 signing_key=lab.gateways[g].signing_key)
                       for g in lab.gateways}

            def fill_outboxes(gateways: list[str], n_each: int) -> float:
                batches = [(g, Batch(sightings=fill(pool, PER_BATCH, rng)))
                           for g in gateways for _ in range(n_each)]
                t = time.perf_counter()
                for g, b in batches:
                    outboxes[g].append(functools.partial(_seal, sealers[g], b))
                return len(batches) * PER_BATCH / (time.perf_counter() - t)

            one = {"gw-0": outboxes["gw-0"]}
            seal_rate = fill_outboxes(list(outboxes), per_gateway)
            fleet, stats = _drain_through(MATCHER, root, lab, outboxes)
            assert json.loads(stats or "{}").get("stored") == GATEWAYS * per_gateway, stats
            fill_outboxes(["gw-0"], n_single)
            single, stats = _drain_through(MATCHER, root, lab, one)
            assert json.loads(stats or "{}").get("stored") == n_single, stats
            fill_outboxes(["gw-0"], n_single)
            minimal, seen = _drain_through(MINIMAL, root, lab, one)
            assert int(seen) == n_single, seen
            fill_outboxes(["gw-0"], n_single)
            wide, seen = _drain_through(MINIMAL, root, lab, one, inflight=32)
            assert int(seen) == n_single, seen
            for ob in outboxes.values():
                ob.close()
            naive = asyncio.run(_naive_rate(lab, fill(pool, (20 if quick else 60) * PER_BATCH,
                                                      rng), inflight=8))
    via = "outbox → Mosquitto (TLS) → "
    vs = "one JSON message per sighting (QoS 1, counted only)"
    return [
        {"name": f"sightings/s, {GATEWAYS} gateways at once {via}matcher.service (verify, "
                 "open, SQLite store, ack), window 8 each",
         "value": round(fleet), "unit": "sightings/s", "vs": vs, "vs_value": round(naive),
         "ratio": round(fleet / naive, 1)},
        {"name": f"sightings/s, 1 gateway {via}matcher.service, window 8",
         "value": round(single), "unit": "sightings/s", "vs": vs, "vs_value": round(naive),
         "ratio": round(single / naive, 1)},
        {"name": f"sightings/s, 1 gateway {via}open_batch + in-memory dedupe + ack, window 8",
         "value": round(minimal), "unit": "sightings/s", "vs": vs, "vs_value": round(naive),
         "ratio": round(minimal / naive, 1)},
        {"name": f"sightings/s, 1 gateway {via}minimal ingest, window 32",
         "value": round(wide), "unit": "sightings/s", "vs": "window 8",
         "vs_value": round(minimal), "ratio": round(wide / minimal, 2)},
        {"name": f"sealing + outbox append ({PER_BATCH}/batch, fsync per batch)",
         "value": round(seal_rate), "unit": "sightings/s"},
    ]


def speed_reference() -> dict[str, Any]:
    """Chained SHA-256 calls per second in this process: how fast the machine is right now.

    This machine's speed drifts by a third between minutes (shared host); the throughput
    rows are only comparable across runs next to this figure.
    """
    import hashlib

    x, n = bytes(32), 300_000
    t = time.perf_counter()
    for _ in range(n):
        x = hashlib.sha256(x).digest()
    return {"name": "machine speed reference: chained SHA-256 calls, one thread",
            "value": round(n / (time.perf_counter() - t)), "unit": "calls/s"}


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark entry point for ``bzgw bench``."""
    sightings = simulated_sightings(quick)
    before = speed_reference()
    rows = size_rows(sightings) + throughput_rows(sightings, quick)
    after = speed_reference()
    return [*rows, {**before, "name": before["name"] + " (before the throughput rows)"},
            {**after, "name": after["name"] + " (after)"}]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
