"""A province on real engines: many gateways → one Mosquitto (TLS) → a matcher pool → PostgreSQL.

N simulated gateways, multiplexed in a few processes, each with its own client certificate (and
so its own ACL entry), Ed25519 signing key, SQLite outbox and sealing, run the real
:class:`mqtt.sync.GatewaySync`. Every gateway seals one batch per flush interval (60 s, the
gateway default; phases spread over the interval) holding a busy hour's sightings, so the
province offers N / 60 batches per second. M matcher processes
(:class:`matcher.service.MatcherService`) share the batch subscription and store into a
PostgreSQL schema with the day-partitioned record tables.

Counted from the store, not assumed: ``lost`` is every sequence number a gateway produced that
has no ``batches`` row; ``duplicated`` is every ``(gateway, seq)`` stored with more sighting rows
than the batch holds (a batch written twice). Lag is ``received_at − created_at`` of each
stored batch (sealed on the gateway → stored by a matcher; one machine, one clock).

After the paced phase, a burst: every gateway seals ``BURST`` more batches at once, and the
pool's capacity is the burst's sightings over the time until the last one is stored (the
ratio against the paced load is the pool's headroom on this machine, gateways included).

Environment: ``BZGW_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
``BZGW_PROVINCE_GATEWAYS`` / ``BZGW_PROVINCE_MATCHERS`` / ``BZGW_PROVINCE_SECONDS`` override the
sizes. Run as ``python bench/bench_province.py [--quick]`` or ``bzgw bench --only province``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("BZGW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
INTERVAL_S = 60.0  # the gateway's default flush interval
PER_BATCH = 40  # busy hour: 2,400 sightings per venue per hour (about a day's average)
BURST = 2  # batches per gateway sealed at once after the paced phase
BURST_PER_BATCH = 200
# Gateways per process. paho waits on select(), which takes no descriptor above 1023, and each
# client holds up to five across a reconnect (its socket, wake-up socket pairs): 150 clients
# keep well below that.
PER_WORKER = 150
_LOW_FDS = 1000  # descriptors below this are kept for the MQTT sockets
CONNECT_GAP_S = 0.03  # between two gateways' first connects in one process


def _sizes(quick: bool) -> tuple[int, int, float]:
    gws = int(os.environ.get("BZGW_PROVINCE_GATEWAYS", 300 if quick else 3000))
    matchers = int(os.environ.get("BZGW_PROVINCE_MATCHERS", 2))
    seconds = float(os.environ.get("BZGW_PROVINCE_SECONDS", 60 if quick else 180))
    return gws, matchers, seconds


# -- gateway worker process -------------------------------------------------------------------
def _sightings(rng: random.Random, n: int, now: float) -> list[Any]:
    from contract.records import IdKind, Proximity, Sighting
    from core.clock import ClockEpoch, ClockSource

    epoch = ClockEpoch("bench-boot", 0.0, True, ClockSource.NTP)
    out = []
    for _ in range(n):
        first = now - rng.uniform(0, INTERVAL_S)
        out.append(Sighting(kind=IdKind.BLUEZONE, ident=rng.randbytes(12),
                            slot_start=int(first // 900 * 900), first_seen=first,
                            last_seen=first + rng.uniform(0, 300), count=rng.randint(1, 60),
                            rssi_max=rng.randint(-95, -40), rssi_median=rng.randint(-99, -45),
                            tx_power=None, proximity=rng.choice(list(Proximity)),
                            clock=epoch))
    return out


async def _gateway_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the gateways of ``spec``; report the sequence numbers each produced."""
    import msgspec

    from contract.batch import Batch
    from contract.sealing import Sealer, load_matcher_public_key, load_signing_key
    from core.clock import ClockEpoch, ClockSource
    from core.settings import convert
    from gateway.config import IdentityConfig
    from gateway.outbox import Outbox
    from mqtt.config import MqttConfig
    from mqtt.sync import GatewaySync

    root = Path(spec["root"])
    pub = load_matcher_public_key(root / "matcher.pub")
    base = convert(spec["mqtt"], MqttConfig)
    epoch = ClockEpoch("bench-boot", 0.0, True, ClockSource.NTP)
    rng = random.Random(spec["seed"])
    gws, outboxes, sealers, syncs = spec["gateways"], {}, {}, {}
    # Hold the low descriptors while the outboxes open their SQLite files, so the MQTT
    # sockets opened later get them (select() above).
    reserved = [os.open(os.devnull, os.O_RDONLY)]
    while reserved[-1] < _LOW_FDS:
        reserved.append(os.open(os.devnull, os.O_RDONLY))
    for g in gws:
        gid = g["id"]
        outboxes[gid] = Outbox(root / "gw" / f"{gid}.db", max_bytes=1 << 26, max_age_s=86400)
        sealers[gid] = Sealer(gateway_id=gid, matcher_public_key=pub,
                              signing_key=load_signing_key(root / "keys" / f"{gid}.key"))
        mq = msgspec.structs.replace(base, cert_file=root / "lab" / "pki" / f"{gid}.crt",
                                     key_file=root / "lab" / "pki" / f"{gid}.key",
                                     keepalive_s=60, backoff_max_s=5)
        syncs[gid] = GatewaySync(outboxes[gid], mq, IdentityConfig(**g), poll_s=5.0)
    for fd in reserved:
        os.close(fd)
    stop = asyncio.Event()
    tasks = []
    for sync in syncs.values():
        tasks.append(asyncio.create_task(sync.run(stop)))
        await asyncio.sleep(CONNECT_GAP_S)
    while not all(s.connected for s in syncs.values()):  # noqa: ASYNC110 - plain state
        await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    go = float((await loop.run_in_executor(None, sys.stdin.readline)).split()[1])
    produced: dict[str, list[int]] = {gid: [] for gid in syncs}

    def seal(gid: str, n: int) -> None:
        batch = Batch(sightings=_sightings(rng, n, time.time()))
        seq = outboxes[gid].append(lambda s: sealers[gid].seal(
            batch, seq=s, created_at=time.time(), clock=epoch))
        produced[gid].append(seq)
        syncs[gid].wake()

    async def paced(gid: str) -> None:
        t = go + rng.uniform(0, INTERVAL_S)
        while t < go + spec["seconds"]:
            await asyncio.sleep(max(0.0, t - time.time()))
            seal(gid, PER_BATCH)
            t += INTERVAL_S

    async def drained() -> None:
        while any(ob.status().depth for ob in outboxes.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    await asyncio.gather(*(paced(gid) for gid in syncs))
    await asyncio.sleep(max(0.0, go + spec["seconds"] - time.time()))
    await asyncio.wait_for(drained(), 600)
    print("paced", flush=True)
    burst_at = float((await loop.run_in_executor(None, sys.stdin.readline)).split()[1])
    await asyncio.sleep(max(0.0, burst_at - time.time()))
    for gid in syncs:
        for _ in range(BURST):
            seal(gid, BURST_PER_BATCH)
        await asyncio.sleep(0)  # let the syncs send while the rest are sealed
    await asyncio.wait_for(drained(), 900)
    stop.set()
    await asyncio.gather(*tasks)
    for ob in outboxes.values():
        ob.close()
    counters = [s.counters for s in syncs.values()]
    return {"produced": produced, "resent": sum(c.resent for c in counters),
            "duplicate_acks": sum(c.duplicate for c in counters),
            "connect_failures": sum(c.connect_failures for c in counters),
            "cpu_s": time.process_time()}


# -- matcher worker process -------------------------------------------------------------------
async def _matcher_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from contract.registry import load_registry
    from contract.sealing import load_matcher_private_key
    from core.settings import convert
    from matcher.service import MatcherService
    from matcher.store import open_store
    from mqtt.config import MqttConfig

    root = Path(spec["root"])
    svc = MatcherService(
        store=open_store(spec["pg"], schema_name=spec["schema"]),
        registry=load_registry(root / "lab" / "registry.yaml"),
        private_key=load_matcher_private_key(root / "matcher.key"),
        mqtt=convert(spec["mqtt"], MqttConfig), client_id=spec["client_id"],
        gateway_reports=False)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await svc.subscribed.wait()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await task
    svc.store.close()
    return {"batches": svc.stats.batches, "cpu_s": time.process_time()}


def _worker_main(kind: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    fn = _gateway_worker if kind == "gateways" else _matcher_worker
    out = asyncio.run(fn(spec))
    print("result " + json.dumps(out), flush=True)


# -- the run ----------------------------------------------------------------------------------
class _Proc:
    """A worker process speaking line by line on stdin/stdout."""

    def __init__(self, kind: str, spec: dict[str, Any], root: Path, name: str) -> None:
        path = root / f"{name}.json"
        path.write_text(json.dumps(spec, default=str))
        self.name = name
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, str(path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def expect(self, word: str) -> str:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line.startswith(word):
            self.p.kill()
            raise RuntimeError(f"{self.name}: expected {word!r}, got {line!r} "
                               f"(exit {self.p.poll()})")
        return line

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.expect("result")[len("result "):])
        self.p.wait(timeout=60)
        return out

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def province(n_gw: int, n_matchers: int, seconds: float) -> dict[str, Any]:
    """One run; the JSON row (see the module docstring)."""
    from bzgw.lab import make_lab
    from bzgw.labrecords import drop_schema
    from contract.sealing import generate_matcher_keypair, save_matcher_keypair, save_signing_key
    from core.settings import to_plain
    from matcher.store import open_store

    schema_name = f"bzgw_province_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    procs: list[_Proc] = []
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-province-") as tmp:
        root = Path(tmp)
        t_setup = time.perf_counter()
        gws = [{"id": f"gw-{i:05d}", "province": "hn", "venue": f"v-{i:05d}"}
               for i in range(n_gw)]
        matchers = tuple(f"matcher-{j}" for j in range(n_matchers))
        lab = make_lab(root / "lab", gws, matchers=matchers, persistence=False)
        (root / "keys").mkdir()
        for gid, lg in lab.gateways.items():
            save_signing_key(root / "keys" / f"{gid}.key", lg.signing_key)
        save_matcher_keypair(*generate_matcher_keypair(), root / "matcher.key",
                             root / "matcher.pub")
        open_store(PG_URL, schema_name=schema_name).close()  # migrate once, before the pool
        print(f"  province: {n_gw} gateways set up in {time.perf_counter() - t_setup:.0f} s",
              file=sys.stderr)
        try:
            with lab:
                broker_cpu0 = _cpu_s(lab.broker.proc.pid) if lab.broker.proc else 0.0
                for j, m in enumerate(matchers):
                    procs.append(_Proc("matcher", {
                        "root": str(root), "pg": PG_URL, "schema": schema_name,
                        "client_id": f"{m}-{j}", "mqtt": to_plain(lab.matcher_mqtt[m])}, root, m))
                for p in procs:
                    p.expect("ready")
                gw_mqtt = to_plain(lab.gateways[gws[0]["id"]].mqtt)
                workers = []
                for w, lo in enumerate(range(0, n_gw, PER_WORKER)):
                    workers.append(_Proc("gateways", {
                        "root": str(root), "mqtt": gw_mqtt, "seed": w, "seconds": seconds,
                        "gateways": gws[lo:lo + PER_WORKER]}, root, f"gateways-{w}"))
                procs += workers
                t_conn = time.perf_counter()
                for p in workers:
                    p.expect("ready")
                connect_s = time.perf_counter() - t_conn
                print(f"  province: {n_gw} gateways connected in {connect_s:.0f} s; "
                      f"paced phase {seconds:.0f} s", file=sys.stderr)
                go = time.time() + 1.0
                for p in workers:
                    p.send(f"go {go}")
                for p in workers:
                    p.expect("paced")
                burst_at = time.time() + 1.0
                for p in workers:
                    p.send(f"burst {burst_at}")
                results = [p.result() for p in workers]
                broker_cpu = (_cpu_s(lab.broker.proc.pid) if lab.broker.proc else 0.0
                              ) - broker_cpu0
                for p in procs[:n_matchers]:
                    assert p.p.stdin is not None
                    p.p.stdin.close()
                m_results = [p.result() for p in procs[:n_matchers]]
                row = _count(schema_name, n_gw, n_matchers, seconds, go, burst_at, results)
                row.update({
                    "connect_s": round(connect_s, 1),
                    "matcher_cpu_s": round(sum(r["cpu_s"] for r in m_results), 1),
                    "matcher_batches": [r["batches"] for r in m_results],
                    "gateway_cpu_s": round(sum(r["cpu_s"] for r in results), 1),
                    "broker_cpu_s": round(broker_cpu, 1),
                    "resent": sum(r["resent"] for r in results),
                    "duplicate_acks": sum(r["duplicate_acks"] for r in results),
                    "connect_failures": sum(r["connect_failures"] for r in results)})
                return row
        finally:
            for p in procs:
                p.kill()
            drop_schema(PG_URL, schema_name)


def _count(schema_name: str, n_gw: int, n_matchers: int, seconds: float, go: float,
           burst_at: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Lost, duplicated, lag and rates from what the store holds."""
    from matcher.db import connect

    db = connect(PG_URL, schema=schema_name)
    try:
        stored = {(g, int(s)): (float(c), float(r), int(n)) for g, s, c, r, n in db.execute(
            "SELECT g.gateway_id, b.seq, b.created_at, b.received_at, b.n_sightings FROM "
            "batches b JOIN gateways g ON g.id = b.gw_id")}
        wire = db.execute("SELECT avg(size) FROM batches WHERE n_sightings = ?", (PER_BATCH,))
        rows_per_batch = {(g, int(s)): int(n) for g, s, n in db.execute(
            "SELECT g.gateway_id, s.seq, count(*) FROM sightings s JOIN gateways g ON "
            "g.id = s.gw_id GROUP BY g.gateway_id, s.seq")}
        in_default = int(db.scalar("SELECT count(*) FROM sightings_default"))
        size = int(db.scalar(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE "
            "c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"))
    finally:
        db.close()
    produced = {(g, s) for r in results for g, seqs in r["produced"].items() for s in seqs}
    lost = len(produced - stored.keys())
    duplicated = sum(1 for k, n in rows_per_batch.items() if k in stored and n > stored[k][2])
    paced = [v for v in stored.values() if v[0] < burst_at]
    burst = [v for v in stored.values() if v[0] >= burst_at]
    lags = [r - c for c, r, _ in paced]
    paced_sightings = sum(n for _, _, n in paced)
    burst_sightings = sum(n for _, _, n in burst)
    paced_end = max((r for _, r, _ in paced), default=go)
    burst_end = max((r for _, r, _ in burst), default=burst_at)
    return {
        "gateways": n_gw, "matchers": n_matchers,
        "store": "postgresql (day partitions)", "batches": len(paced),
        "lost": lost, "duplicated": duplicated,
        "lag_p50_s": round(_percentile(lags, 0.5), 3),
        "lag_p99_s": round(_percentile(lags, 0.99), 3),
        "lag_max_s": round(max(lags, default=float("nan")), 3),
        "sightings_per_s": round(paced_sightings / max(1e-9, paced_end - go), 1),
        "offered_sightings_per_s": round(n_gw * PER_BATCH / INTERVAL_S, 1),
        "paced_seconds": seconds,
        "burst_batches": len(burst),
        "burst_sightings_per_s": round(burst_sightings / max(1e-9, burst_end - burst_at), 1),
        "burst_lag_p99_s": round(_percentile([r - c for c, r, _ in burst], 0.99), 3),
        "sightings_in_default_partition": in_default,
        "wire_bytes_per_paced_batch": round(float(wire[0][0] or 0.0)),
        "schema_bytes": size,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark entry point for ``bzgw bench``."""
    n_gw, n_matchers, seconds = _sizes(quick)
    r = province(n_gw, n_matchers, seconds)
    where = (f"{r['gateways']} gateways → Mosquitto (TLS) → {r['matchers']} matchers → "
             "PostgreSQL day partitions")
    return [
        {**r, "name": f"province, busy hour paced ({PER_BATCH} sightings/gateway/min): "
                      f"{where}", "value": r["sightings_per_s"], "unit": "sightings/s",
         "vs": "offered load", "vs_value": r["offered_sightings_per_s"],
         "ratio": round(r["sightings_per_s"] / r["offered_sightings_per_s"], 3)},
        {"name": f"province, lag p99 sealed → stored (p50 {r['lag_p50_s']} s), {where}",
         "value": r["lag_p99_s"], "unit": "s"},
        {"name": f"province, burst ({BURST}×{BURST_PER_BATCH} sightings per gateway at once): "
                 f"{where}", "value": r["burst_sightings_per_s"], "unit": "sightings/s",
         "vs": "busy-hour load", "vs_value": r["offered_sightings_per_s"],
         "ratio": round(r["burst_sightings_per_s"] / r["offered_sightings_per_s"], 1)},
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(run("--quick" in sys.argv), indent=1))
