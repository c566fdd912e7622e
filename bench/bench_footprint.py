"""Footprint of the real ``bzgw run`` at a busy venue, and the zstd level it seals with.

- ``footprint [<feed>]``: the daemon as a process (``python -m bzgw.cli -v run``) with a
  400-device venue (40 % Bluezone, 17 % EN, 10 % iPhones, the rest other devices, 3.2
  adverts/s each while advertising; some phones duty-cycle: about 1,000 adverts/s), fed by
  the crowd simulator paced in real time, or by a btsnoop capture of such a crowd replayed
  at 1× speed. The broker is a real Mosquitto with mTLS (the daemon publishes its batches
  and health); the status page runs. CPU share of one core is (utime + stime) from
  ``/proc/<pid>/stat`` over the steady part of the run; peak RSS is ``VmHWM`` from
  ``/proc/<pid>/status``; event-loop lag (p99 over the whole run) and dropped adverts come
  from the daemon's own shutdown report and ``/health``. Batches are sealed every 10 s (not
  the default 60 s), the simulator's adoption counts every minute, and the capture crosses an
  ID-slot boundary mid-run (all sightings sealed at once), so sealing happens while measured.
- ``footprint [<feed>, Pi Zero 2 W budget]``: the same in a cgroup (v1 ``cpu`` controller)
  capped at 1/``PI_FACTOR`` of one core with a 10 ms period, standing in for one Cortex-A53
  core at 1 GHz (see ``PI_FACTOR``). Skipped when the cgroup cannot be created.
- ``qr_feedback_latency [<feed>]``: staff feedback latency of QR check-ins (p99, ms; target
  300) through the real :class:`~qr.checkin.CheckInPipeline` wired to a ``Gateway`` running
  the same venue, fed by an in-memory camera at 10 frames/s (a new person every second), in
  its own process; uncapped and on the Pi budget.
- ``seal_zstd_level [<n>]``: bytes per sighting of a sealed one-minute batch at that venue,
  and sealing CPU per minute of capture here and on the Pi budget, for several zstd levels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# One Pi Zero 2 W core (Cortex-A53, 1 GHz, in-order) runs CPython about 10× slower than one
# core of a current x86 server: pyperformance on a Pi 3 (the same A53 at 1.2 GHz) is 7-9×
# slower than a ~3 GHz desktop core, and the Zero 2 W is clocked 17 % lower still.
PI_FACTOR = 10
DEVICES = 400
RATE_HZ = 3.2
T0 = 1_627_790_400
ROOT = Path(__file__).resolve().parent.parent


def _crowd(duration_s: float, start: float) -> Any:
    from ble.simulator import Crowd

    crowd = Crowd(seed=2021 + DEVICES, start=start, duration_s=duration_s)
    crowd.add_bluezone_phones(DEVICES * 40 // 100, venues=["v"])
    crowd.add_en_phones(DEVICES * 17 // 100, venues=["v"])
    crowd.add_iphones(DEVICES * 10 // 100, venues=["v"])
    crowd.add_background(DEVICES - len(crowd.devices), venues=["v"])
    return crowd


# ---------------------------------------------------------------------------- zstd level

def zstd_rows(quick: bool) -> list[dict[str, Any]]:
    """Seal one-minute batches of a simulated venue at several zstd levels."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ble.aggregator import WindowAggregator
    from ble.config import ProximityThresholds
    from contract import codec
    from contract.batch import Batch
    from contract.sealing import Sealer, generate_matcher_keypair
    from core.clock import ReplayClock

    minutes = 20 if quick else 45
    crowd = _crowd(minutes * 60, T0)
    epoch = ReplayClock().epoch()
    agg = WindowAggregator(ProximityThresholds(near_dbm=-65, medium_dbm=-80, calibrated=True),
                           clock=epoch)
    batches: list[Batch] = []
    nxt = T0 + 60.0
    for r in crowd.reports("v", rate_hz=0.5):  # the rate barely changes the sightings
        if r.ts >= nxt:
            s, c = agg.flush(nxt)
            batches.append(Batch(sightings=s, counts=c))
            nxt += 60.0
        agg.add_report(r.ts, r.address, r.rssi, r.data)
    s, c = agg.flush(nxt, final=True)
    batches.append(Batch(sightings=s, counts=c))
    n_sight = sum(len(b.sightings) for b in batches)
    _priv, pub = generate_matcher_keypair()
    sealer = Sealer(gateway_id="gw", matcher_public_key=pub,
                    signing_key=Ed25519PrivateKey.generate())
    t = time.process_time()
    for i, b in enumerate(batches):  # HPKE + Ed25519 + the default level, for reference
        sealer.seal(b, seq=i + 1, created_at=T0, clock=epoch)
    seal_ms = (time.process_time() - t) / minutes * 1000
    rows = []
    for level in (3, 9, 15, 19):
        t = time.process_time()
        for _ in range(2):
            padded = sum(len(codec.encode_padded(b, level=level, quantize=True))
                         for b in batches)
        per_min_ms = (time.process_time() - t) / 2 / minutes * 1000
        comp = sum(len(codec.encode(b, level=level, quantize=True)) for b in batches)
        rows.append({"name": f"seal_zstd_level [{level}]", "value": round(comp / n_sight, 2),
                     "unit": "compressed B/sighting",
                     "padded_bytes_per_sighting": round(padded / n_sight, 2),
                     "encode_cpu_ms_per_minute": round(per_min_ms, 2),
                     "pi_budget_cpu_share_pct": round(per_min_ms * PI_FACTOR / 600, 4),
                     "seal_cpu_ms_per_minute_default_level": round(seal_ms, 2),
                     "sightings": n_sight, "batches": len(batches)})
    return rows


# ---------------------------------------------------------------------------- daemon runs

def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15 of stat(5))


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class CpuCap:
    """A cgroup v1 ``cpu`` group capped at ``share`` of one core (removed on exit)."""

    BASE = Path("/sys/fs/cgroup/cpu")

    def __init__(self, share: float) -> None:
        self.path = self.BASE / f"bzgw-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text("10000")
        (self.path / "cpu.cfs_quota_us").write_text(str(int(10000 * share)))

    def enter(self) -> None:
        """Move the calling process (a child before exec) into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttled_s(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("throttled_time"):
                return int(line.split()[1]) / 1e9
        return 0.0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_daemon(cfg: Path, seconds: float, warmup: float, cap: CpuCap | None,
                status_port: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bzgw.cli", "-v", "run", "--config",
                             str(cfg)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=env, cwd=ROOT, preexec_fn=cap.enter if cap else None)
    hz = os.sysconf("SC_CLK_TCK")
    try:
        time.sleep(warmup)
        t0, c0 = time.monotonic(), _ticks(proc.pid)
        thr0 = cap.throttled_s() if cap else 0.0
        time.sleep(seconds)
        t1, c1 = time.monotonic(), _ticks(proc.pid)
        hwm = _hwm_kb(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/health", timeout=10) as r:
            health = json.loads(r.read())
        thr = (cap.throttled_s() - thr0) if cap else 0.0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    log = err.decode(errors="replace")
    m = re.search(r"event loop lag over the run: p99 (\S+) ms, max ([\d.]+) ms \((\d+) "
                  r"probes\); adverts dropped (\d+)", log)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"bzgw run failed ({proc.returncode}):\n{log[-3000:]}")
    cpu = (c1 - c0) / hz / (t1 - t0)
    return {"cpu_share_pct": round(cpu * 100, 2), "peak_rss_mb": round(hwm / 1024, 1),
            "loop_lag_p99_ms": float(m.group(1)) if m.group(1) != "n/a" else None,
            "loop_lag_max_ms": float(m.group(2)), "adverts_dropped": int(m.group(4)),
            "adverts": health["radio"]["adverts"], "batches": health["counts"]["batches"],
            "lost_records": health["dropped"]["lost_records"],
            "adverts_per_s": round(health["radio"]["adverts"] / max(t1 - t0 + warmup, 1), 0),
            "throttled_s": round(thr, 2)}


# ---------------------------------------------------------------------------- QR feedback

def _qr_latency(cfg_path: Path, seconds: float) -> dict[str, Any]:
    """In this process: the gateway (``Gateway(cfg)``, its BLE feed, sealing, outbox, sync,
    status page) plus the real :class:`~qr.checkin.CheckInPipeline` wired as ``bzgw run``
    wires it (sink = the capture pipeline's check-in commit, feedback = the gateway's), fed
    by an in-memory camera at 10 frames/s: a new person's code every second (shown 0.6 s,
    then an empty counter for 0.4 s). Latency: from a frame's capture time to the staff
    signal "accepted", which waits for the identity sealing, the batch seal and the fsync'd
    outbox commit."""
    import asyncio

    import numpy as np
    import segno

    from bzgw.config import load
    from gateway.daemon import Gateway
    from qr.checkin import CheckInPipeline
    from qr.records import FeedbackState
    from qr.sources.base import FrameSource, SourceKind

    cfg = load(cfg_path)
    blank = np.full((480, 640), 200, np.uint8)
    blank[::8, :] = 180  # a counter with some texture: an empty scene is still decoded

    def shown(i: int) -> np.ndarray:
        q = segno.make(f"0010990{i:05d}|1234{i:05d}|Nguyễn Văn An|01011999|Nam|Số {i}, Hà "
                       f"Nội|15082021", micro=False)
        sym = np.where(np.array(list(q.matrix_iter(scale=4, border=4)), bool), 0, 255)
        img = blank.copy()
        y, x = 60 + (i * 37) % 120, 80 + (i * 53) % 200
        img[y:y + sym.shape[0], x:x + sym.shape[1]] = sym
        return img

    class Camera(FrameSource):
        kind = SourceKind.V4L2  # stands in for a camera: lossy queue of 2 frames, 10 fps

        async def _produce(self, put: Any) -> None:
            i = 0
            while True:
                img = shown(i)
                for k in range(10):
                    await put(self._frame(img if k < 6 else blank))
                    await asyncio.sleep(0.1)
                i += 1

    latencies: list[float] = []

    async def main() -> Gateway:
        gw = Gateway(cfg)
        real_signal = gw.feedback.signal

        def signal(state: FeedbackState, masked: str = "", *, ts: float | None = None,
                   detail: str = "") -> None:
            if state is FeedbackState.ACCEPTED and ts is not None:
                latencies.append(gw.clock.now() - ts)
            real_signal(state, masked, ts=ts, detail=detail)

        gw.feedback.signal = signal  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        checkins = CheckInPipeline.from_config(cfg.qr, sink=gw._on_checkin, feedback=gw.feedback)
        qr = asyncio.create_task(checkins.run(Camera(clock=gw.clock), gw.clock))
        await asyncio.sleep(seconds)
        qr.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await qr
        stop.set()
        await task
        return gw

    gw = asyncio.run(main())
    lat = sorted(latencies)
    if not lat:
        raise RuntimeError("no check-in was accepted")
    return {"checkins": len(lat), "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1),
            "adverts": gw.health()["radio"]["adverts"]}


def qr_latency_rows(lab: Any, root: Path, ble: dict[str, Any], caps: list[float | None],
                    seconds: float) -> list[dict[str, Any]]:
    """QR check-in feedback latency while the gateway captures the venue (own process, so
    the Pi budget's cgroup holds all of it)."""
    from bzgw.lab import write_gateway_config

    rows = []
    for share in caps:
        folder = root / f"qr-{share}"
        cfg = write_gateway_config(
            lab, "gw-a", folder, ble=ble,
            outbox={"path": str(folder / "outbox.db"), "flush_interval_s": 10},
            status={"enabled": True, "listen": "127.0.0.1", "port": _free_port(),
                    "health_interval_s": 30})
        cap = CpuCap(share) if share is not None else None
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--qr-latency", str(cfg), str(seconds)],
                capture_output=True, text=True, cwd=ROOT, timeout=seconds + 300,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                preexec_fn=cap.enter if cap else None)
        finally:
            if cap is not None:
                cap.close()
        if out.returncode != 0:
            raise RuntimeError(f"QR latency run failed:\n{out.stderr[-3000:]}")
        got = json.loads(out.stdout.strip().splitlines()[-1])
        name = "simulator" + (", Pi Zero 2 W budget" if share is not None else "")
        print(f"  qr_feedback_latency [{name}]: {got}", file=sys.stderr)
        rows.append({"name": f"qr_feedback_latency [{name}]", "value": got["p99_ms"],
                     "unit": "ms p99 (target 300)", **got, "seconds": seconds,
                     "cpu_cap": f"1/{PI_FACTOR} core" if share else None})
    return rows


def footprint_rows(quick: bool) -> list[dict[str, Any]]:
    """The daemon at a 400-device venue, simulator and replay, uncapped and Pi-capped."""
    from ble.replay import build_legacy_event, write_btsnoop
    from bzgw.lab import make_lab, write_gateway_config

    seconds, warmup = (40.0, 10.0) if quick else (120.0, 15.0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bzgw-bench-footprint-") as tmp:
        root = Path(tmp)
        lab = make_lab(root / "lab", [{"id": "gw-a", "province": "hn", "venue": "v"}],
                       persistence=False)
        with lab:
            capture = root / "venue.btsnoop"
            span = seconds + warmup + 60
            # T0 ends a Bluezone (15 min) and an EN (10 min) ID slot: starting the capture
            # earlier puts that boundary, where every sighting of the venue is sealed at
            # once, in the middle of the measurement.
            crowd = _crowd(span, T0 - warmup - seconds / 2)
            write_btsnoop(capture, ((r.ts, build_legacy_event(0, r.address, 1, r.data[:31],
                                                               r.rssi))
                                    for r in crowd.reports("v", rate_hz=RATE_HZ)))
            sim = {"seed": 2021 + DEVICES, "venue": "v", "duration_s": span,
                   "bluezone_phones": DEVICES * 40 // 100, "en_phones": DEVICES * 17 // 100,
                   "iphones": DEVICES * 10 // 100,
                   "background": DEVICES - DEVICES * 67 // 100, "rate_hz": RATE_HZ,
                   "realtime": True}
            # adoption counts every minute: the live simulator then seals during the run too
            feeds = {"simulator": {"source": "simulator", "simulator": sim,
                                   "count_window_s": 60},
                     "replayed capture": {"source": "replay", "replay_file": str(capture),
                                          "replay_speed": 1.0}}
            caps: list[float | None] = [None]
            try:
                CpuCap(0.5).close()
                caps.append(1 / PI_FACTOR)
            except OSError as err:
                print(f"  no cgroup cpu controller ({err}): Pi-capped runs skipped",
                      file=sys.stderr)
            for share in caps:
                for label, ble in feeds.items():
                    port = _free_port()
                    folder = root / f"gw-{len(rows)}"
                    cfg = write_gateway_config(
                        lab, "gw-a", folder, ble=ble,
                        outbox={"path": str(folder / "outbox.db"), "flush_interval_s": 10},
                        status={"enabled": True, "listen": "127.0.0.1", "port": port,
                                "health_interval_s": 30})
                    cap = CpuCap(share) if share is not None else None
                    try:
                        got = _run_daemon(cfg, seconds, warmup, cap, port)
                    finally:
                        if cap is not None:
                            cap.close()
                    name = label + (", Pi Zero 2 W budget" if share is not None else "")
                    print(f"  footprint [{name}]: {got}", file=sys.stderr)
                    rows.append({"name": f"footprint [{name}]", "value": got["cpu_share_pct"],
                                 "unit": "% of one core", **got, "seconds": seconds,
                                 "cpu_cap": f"1/{PI_FACTOR} core" if share else None})
            rows += qr_latency_rows(lab, root, feeds["simulator"], caps, seconds)
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Benchmark results (see the module docstring)."""
    return zstd_rows(quick) + footprint_rows(quick)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--qr-latency"]:
        print(json.dumps(_qr_latency(Path(sys.argv[2]), float(sys.argv[3]))))
    else:
        print(json.dumps(run(quick=True), indent=1))
