"""Kill the real gateway daemon (``bzgw run``) at random moments and check what survives.

Starting Python and importing the whole stack takes longer than the moments worth killing, so
a zygote process imports everything once and forks a fresh ``bzgw run --config X`` (the
console script's own ``main``) for every round. The test SIGKILLs that child directly.

Used by ``tests/test_crash.py`` (≥100 kills) and ``bench/bench_crash.py`` (more).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ackmatcher import AckMatcher

from bzgw.lab import Lab, gateway_identity_files
from contract import sealing as sealer
from core.settings import to_plain
from gateway.outbox import read_status
from matcher.service import MatcherService
from matcher.store import Store

ROOT = Path(__file__).resolve().parent.parent

ZYGOTE = r"""
import importlib, os, sys
for m in ("bzgw.cli", "gateway.daemon", "gateway.pipeline", "gateway.outbox",
          "contract.sealing", "mqtt.sync", "mqtt.client", "ble.aggregator", "ble.simulator",
          "ble.sources", "ble.sources.simulator_source", "qr.sources", "gateway.health",
          "gateway.feedback", "gateway.notify", "matcher.cli", "matcher.serve",
          "matcher.service", "matcher.store", "matcher.ingest", "psycopg"):
    try:
        importlib.import_module(m)
    except ImportError:
        pass
import bzgw.cli
log = sys.argv[1]
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] in ("spawn", "exec"):
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = (["bzgw", "run", "--config", cmd[1]] if cmd[0] == "spawn"
                        else ["bzgw", *cmd[1:]])
            code = 0
            try:
                bzgw.cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            os._exit(code)
        print(pid, flush=True)
    elif cmd[0] == "reap":
        print(os.waitpid(int(cmd[1]), 0)[1], flush=True)
"""


class Zygote:
    """A pre-imported process that forks ``bzgw run`` children on request."""

    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(log)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)

    def _ask(self, line: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def spawn(self, config: Path) -> int:
        """Fork a ``bzgw run --config config``; returns its pid."""
        return self._ask(f"spawn {config}")

    def exec(self, *args: str) -> int:
        """Fork ``bzgw ARGS...`` (no spaces inside an argument); returns its pid."""
        assert all(a and " " not in a for a in args), args
        return self._ask("exec " + " ".join(args))

    def reap(self, pid: int) -> int:
        """Wait for the child; returns its wait status."""
        return self._ask(f"reap {pid}")

    def close(self) -> None:
        """End the zygote."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def tail(self, n: int = 30) -> str:
        """The children's last log lines."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def write_configs(lab: Lab, root: Path, gw: str = "gw-a") -> tuple[Path, Path, bytes]:
    """Daemon configs (capturing, and drain-only) for a lab gateway; returns them and the
    matcher's private key."""
    g = lab.gateways[gw]
    priv, pub = sealer.generate_matcher_keypair()
    sealer.save_matcher_keypair(priv, pub, root / "matcher.key", root / "matcher.pub")
    sealer.save_signing_key(root / "device.pem", g.signing_key)
    mqtt = to_plain(g.mqtt)
    cfg: dict[str, Any] = {
        "gateway": {"id": gw, "province": g.entry.province, "venue": g.entry.venue},
        "sealing": {"matcher_public_key": str(root / "matcher.pub"),
                    "device_key": str(root / "device.pem"),
                    **dict(zip(("identity_keys", "blind_key"),
                               map(str, gateway_identity_files(lab.root, root)), strict=True))},
        "outbox": {"path": str(root / "outbox.db"), "flush_interval_s": 5},
        "mqtt": {**mqtt, "inflight": 8},
        "status": {"enabled": False, "health_interval_s": 0.5},
        "qr": {"enabled": False},
        "ble": {"source": "simulator", "simulator": {
            "venue": g.entry.venue, "realtime": False, "duration_s": 86400,
            "bluezone_phones": 40, "en_phones": 15, "iphones": 3, "background": 5}},
    }
    capture = root / "capture.yaml"
    capture.write_text(yaml.safe_dump(cfg))
    drain = root / "drain.yaml"
    drain.write_text(yaml.safe_dump({**cfg, "ble": {**cfg["ble"], "enabled": False}}))
    return capture, drain, priv


@dataclass
class CrashReport:
    """What a crash loop did and found."""

    kills: int = 0
    seed: int = 0
    accepted: int = 0  # sequence numbers the outbox handed out (= batches it accepted)
    stored: int = 0  # distinct batches the matcher stored
    arrivals: int = 0  # batches that reached the matcher, repeats included
    missing: list[int] = field(default_factory=list)
    conflicts: list[tuple[str, int]] = field(default_factory=list)
    seq_went_back: list[tuple[int, int]] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    early_exits: list[str] = field(default_factory=list)
    dropped: int = 0
    run_s: float = 0.0
    kill_delays_ms: list[float] = field(default_factory=list)


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    except sqlite3.DatabaseError as err:  # "file is not a database", "malformed"
        return f"{type(err).__name__}: {err}"
    finally:
        conn.close()


class RealSink:
    """The real matcher service (``matcher.service``) on a real store, in this process."""

    def __init__(self, lab: Lab, store: Store, private_key: bytes) -> None:
        self.store = store
        self.service = MatcherService(store=store, registry=lab.registry,
                                      private_key=private_key, mqtt=lab.matcher_mqtt["matcher"],
                                      client_id="matcher-crash")
        self.ready = self.service.subscribed

    async def run(self, stop: asyncio.Event) -> None:
        await self.service.run(stop)

    @property
    def seen(self) -> list[int]:  # only its length is used while draining
        return [0] * self.service.stats.batches.get("stored", 0)

    def seqs(self, gateway: str) -> list[int]:
        return [s for g, s in stored_batches(self.store) if g == gateway]

    @property
    def arrivals(self) -> list[int]:
        c = ingest_totals(self.store)
        return [0] * (c.get("stored", 0) + c.get("duplicate", 0))

    @property
    def conflicts(self) -> list[tuple[str, int]]:
        return [("replay", 0)] * ingest_totals(self.store).get("replay", 0)


def stored_batches(store: Store) -> list[tuple[str, int]]:
    """``(gateway, seq)`` of every batch row in the matcher's store."""
    return [(str(g), int(q)) for g, q in store.db.execute(
        "SELECT g.gateway_id, b.seq FROM batches b JOIN gateways g ON g.id = b.gw_id")]


def ingest_totals(store: Store) -> dict[str, int]:
    """The store's ingest counters summed per verdict or reason."""
    return {str(r): int(n) for r, n in store.db.execute(
        "SELECT reason, SUM(n) FROM ingest_counters GROUP BY reason")}


def _integrity_if_there(db: Path) -> str:
    return _integrity(db) if db.exists() else "ok"


async def crash_loop(lab: Lab, root: Path, *, kills: int, seed: int | None = None,
                     max_delay_s: float = 0.35, store: Store | None = None) -> CrashReport:
    """Spawn ``bzgw run``, SIGKILL it after a random delay, ``kills`` times; then drain
    with a final clean run and compare the matcher's store with what the outbox accepted.

    With ``store``, batches go to the real matcher service storing there; otherwise to the
    stand-in :class:`AckMatcher`.
    """
    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32))) if seed is None else seed
    rng = random.Random(seed)
    rep = CrashReport(seed=seed)
    capture, drain, priv = write_configs(lab, root)
    db = root / "outbox.db"
    matcher: AckMatcher | RealSink = (
        AckMatcher(lab.matcher_mqtt["matcher"], "matcher", lab.registry, priv) if store is None
        else RealSink(lab, store, priv))
    stop = asyncio.Event()
    mtask = asyncio.create_task(matcher.run(stop))
    await asyncio.wait_for(matcher.ready.wait(), 10)
    zyg = Zygote(root / "daemon.log")
    t0 = time.monotonic()
    last_next = 1
    try:
        for _ in range(kills):
            # most rounds capture and sync; some only drain, often to empty, so that numbering
            # must continue from the counter rather than from what the table still holds
            draining = rng.random() < 0.2
            pid = await asyncio.to_thread(zyg.spawn, drain if draining else capture)
            # mostly early (start-up, first appends, connect), sometimes well into a run
            delay = rng.uniform(0, max_delay_s) if rng.random() < 0.8 else rng.uniform(
                max_delay_s, 3 * max_delay_s)
            if draining:
                delay *= 2
            rep.kill_delays_ms.append(delay * 1000)
            await asyncio.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            status = await asyncio.to_thread(zyg.reap, pid)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                rep.early_exits.append(zyg.tail())
            rep.kills += 1
            if db.exists():
                check = _integrity(db)
                if check != "ok":
                    rep.integrity.append(check)
                nxt = read_status(db).next_seq
                if nxt < last_next:
                    rep.seq_went_back.append((last_next, nxt))
                last_next = nxt
        # a last, clean run that only drains (no capture), then a graceful stop
        await _drain_then_stop(zyg, drain, db, lambda: len(matcher.seen), rep.early_exits)
    finally:
        zyg.close()
        stop.set()
        await asyncio.wait_for(mtask, 15)
    rep.run_s = time.monotonic() - t0
    st = read_status(db)
    rep.accepted = st.next_seq - 1
    rep.dropped = st.dropped_batches
    mine = matcher.seqs("gw-a")
    rep.stored = len(set(mine))
    rep.arrivals = len(matcher.arrivals)
    rep.missing = sorted(set(range(1, st.next_seq)) - set(mine))
    rep.conflicts = list(matcher.conflicts)
    final = _integrity(db)
    if final != "ok":
        rep.integrity.append(final)
    return rep


# ------------------------------------------------------- kill -9 the real matcher instead


async def _drain_then_stop(zyg: Any, drain: Path, outbox: Path, delivered: Callable[[], int],
                           early_exits: list[str]) -> None:
    """A last, clean run that only drains (no capture) until everything accepted was
    delivered, then a graceful stop that must exit 0."""
    def done() -> bool:
        st = read_status(outbox)
        return st.depth == 0 and delivered() >= st.next_seq - 1 - st.dropped_batches

    pid = await asyncio.to_thread(zyg.spawn, drain)
    await _stop_when(zyg, pid, done, 60, early_exits)


async def _stop_when(zyg: Any, pid: int, done: Callable[[], bool], timeout: float,
                     early_exits: list[str]) -> None:
    """SIGTERM ``pid`` once ``done()`` (or after ``timeout``); it must exit 0."""
    started = time.monotonic()
    while time.monotonic() < started + timeout:
        # at least a second up: SIGTERM before the handler is installed would kill it
        if time.monotonic() > started + 1.0 and done():
            break
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    status = await asyncio.to_thread(zyg.reap, pid)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        early_exits.append(f"drain run ended with {status}: {zyg.tail()}")


def write_matcher_config(lab: Lab, root: Path, db_url: str) -> tuple[Path, bytes]:
    """A ``bzgw matcher serve`` config (no dashboard, fast reconnects) and its public key."""
    priv, pub = sealer.generate_matcher_keypair()
    sealer.save_matcher_keypair(priv, pub, root / "matcher.key", root / "matcher.pub")
    lab.registry.save(root / "registry.yaml")
    mq = to_plain(lab.matcher_mqtt["matcher"])
    cfg = {"matcher": {
        "db": db_url, "private_key": str(root / "matcher.key"),
        "registry": str(root / "registry.yaml"), "dashboard_enabled": False,
        "audit_log": str(root / "audit.log"), "audit_key": str(root / "audit.key"),
        "users_db": str(root / "users.db"),
        # one fixed id: a restarted matcher takes over its killed session at once, instead
        # of the broker feeding a dead share member until the keepalive runs out
        "client_id": "matcher-k", "purge_interval_s": 86400,
        "mqtt": {**mq, "backoff_min_s": 0.05, "backoff_max_s": 0.5}}}
    path = root / "matcher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, pub


@dataclass
class MatcherKillReport:
    """What a matcher kill loop did and found."""

    kills: int = 0
    seed: int = 0
    accepted: dict[str, int] = field(default_factory=dict)  # per gateway
    stored: list[tuple[str, int]] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)
    early_exits: list[str] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    resent: int = 0
    bytes_lost: int = 0  # with power cuts: unsynced bytes thrown away
    run_s: float = 0.0


async def matcher_kill_loop(lab: Lab, root: Path, *, kills: int, db_url: str,
                            seed: int | None = None, gateways: tuple[str, ...] = ("gw-a", "gw-b"),
                            min_up_s: float = 0.05, max_up_s: float = 1.2,
                            sqlite_file: Path | None = None,
                            power_cut: Path | None = None) -> MatcherKillReport:
    """SIGKILL ``bzgw matcher serve`` ``kills`` times at random moments while the gateways'
    real sync (outbox → MQTT → ack) keeps sending; then let a last matcher drain them.

    Returns what the outboxes accepted and what the store holds (read by the caller's own
    check of the store) — every accepted batch must be stored exactly once.

    With ``power_cut`` (the shim from :func:`powercut.build_shim`) each kill is a power cut
    of the folder holding ``sqlite_file``: every write the matcher had not synced is lost.
    """
    from ackmatcher import Site

    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32))) if seed is None else seed
    rng = random.Random(seed)
    rep = MatcherKillReport(seed=seed)
    cfg, pub = write_matcher_config(lab, root, db_url)
    sites = []
    for gw in gateways:
        site = Site(lab, root, gw, ack_timeout_s=1.0)
        site.sealer = sealer.Sealer(gateway_id=gw, matcher_public_key=pub,
                                    signing_key=site.gw.signing_key)
        sites.append(site)
    stop, producing = asyncio.Event(), asyncio.Event()
    producing.set()

    async def produce() -> None:
        while producing.is_set():
            site = rng.choice(sites)
            await asyncio.to_thread(site.add, 1, 40)
            site.sync.wake()
            await asyncio.sleep(rng.uniform(0.005, 0.04))

    env = None
    if power_cut is not None:
        from powercut import cut_power, shim_env

        assert sqlite_file is not None
        env = shim_env(power_cut, sqlite_file.parent)
    zyg = Zygote(root / "matcher.log", env=env)
    tasks = [asyncio.create_task(s.sync.run(stop)) for s in sites]
    tasks.append(asyncio.create_task(produce()))
    t0 = time.monotonic()
    try:
        for _ in range(kills):
            pid = await asyncio.to_thread(zyg.exec, "matcher", "serve", "--config", str(cfg))
            await asyncio.sleep(rng.uniform(min_up_s, max_up_s))
            os.kill(pid, signal.SIGKILL)
            status = await asyncio.to_thread(zyg.reap, pid)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                rep.early_exits.append(zyg.tail())
            rep.kills += 1
            if power_cut is not None and sqlite_file is not None:
                lost = await asyncio.to_thread(cut_power, sqlite_file.parent)
                rep.bytes_lost += sum(max(0, v) for v in lost.values())
            if sqlite_file is not None:
                check = await asyncio.to_thread(_integrity_if_there, sqlite_file)
                if check != "ok":
                    rep.integrity.append(check)
            if power_cut is not None and sqlite_file is not None:
                # the check above opened (and may have checkpointed) the database without
                # the shim, as the next boot would: what is on disk now is durable
                await asyncio.to_thread(_all_durable, sqlite_file.parent)
        producing.clear()
        await tasks[-1]
        pid = await asyncio.to_thread(zyg.exec, "matcher", "serve", "--config", str(cfg))
        await _stop_when(zyg, pid, lambda: all(s.outbox.status().depth == 0
                                               and s.sync.inflight == 0 for s in sites),
                         90, rep.early_exits)
    finally:
        producing.clear()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        zyg.close()
    rep.run_s = time.monotonic() - t0
    for s in sites:
        st = s.outbox.status()
        rep.accepted[s.gw.entry.id] = st.next_seq - 1
        rep.resent += s.sync.counters.resent
        s.outbox.close()
    return rep


# ------------------------------------------------------- power cuts instead of SIGKILL


@dataclass
class PowerReport:
    """What a power-cut loop did and found."""

    cuts: int = 0
    seed: int = 0
    accepted: int = 0
    stored: int = 0
    arrivals: int = 0
    missing: list[int] = field(default_factory=list)
    conflicts: int = 0
    integrity: list[str] = field(default_factory=list)
    early_exits: list[str] = field(default_factory=list)
    bytes_lost: int = 0  # unsynced bytes the cuts threw away, all files
    lost_commits: int = 0  # cuts where the outbox's last commit was written but not synced
    went_back: list[tuple[int, int]] = field(default_factory=list)  # below a delivered seq
    run_s: float = 0.0


def _status_of_copy(folder: Path, name: str) -> tuple[int, str]:
    """``(next_seq, integrity)`` of the outbox in ``folder``, read from a copy (reading the
    original would checkpoint it behind the power-cut shim's back)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for f in folder.iterdir():
            if f.is_file() and not f.name.endswith((".durable", ".durable.tmp")):
                shutil.copyfile(f, Path(tmp) / f.name)
        db = Path(tmp) / name
        if not db.exists() or (db.stat().st_size == 0 and not (
                Path(tmp) / (name + "-wal")).exists()):
            return 1, "ok"
        return read_status(db).next_seq, _integrity(db)


def _all_durable(folder: Path) -> None:
    """After the "reboot": what is on disk now is durable (the next cut starts from it)."""
    import shutil

    for f in folder.iterdir():
        if f.name.endswith(".durable") and not f.with_name(f.name[:-8]).exists():
            f.unlink()
    for f in folder.iterdir():
        if f.is_file() and not f.name.endswith((".durable", ".durable.tmp")):
            shutil.copyfile(f, f.with_name(f.name + ".durable"))


async def power_loop(lab: Lab, root: Path, store: Store, shim: Path, *, cuts: int,
                     seed: int | None = None, max_delay_s: float = 0.6) -> PowerReport:
    """Run ``bzgw run`` with its outbox folder behind the power-cut shim, cut the power at a
    random moment (SIGKILL, then every outbox file back to its last synced content), boot
    again, ``cuts`` times; then drain into the real matcher and compare.
    """
    from powercut import cut_power, shim_env

    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32))) if seed is None else seed
    rng = random.Random(seed)
    rep = PowerReport(seed=seed)
    disk = root / "disk"
    disk.mkdir()
    capture, drain, priv = write_configs(lab, root)
    for cfg in (capture, drain):  # the outbox lives on the "disk" that loses power
        doc = yaml.safe_load(cfg.read_text())
        doc["outbox"]["path"] = str(disk / "outbox.db")
        cfg.write_text(yaml.safe_dump(doc))
    sink = RealSink(lab, store, priv)
    stop = asyncio.Event()
    mtask = asyncio.create_task(sink.run(stop))
    await asyncio.wait_for(sink.ready.wait(), 15)
    zyg = Zygote(root / "daemon.log", env=shim_env(shim, disk))
    t0 = time.monotonic()
    try:
        for _ in range(cuts):
            pid = await asyncio.to_thread(zyg.spawn, capture)
            await asyncio.sleep(rng.uniform(0.05, max_delay_s) if rng.random() < 0.8
                                else rng.uniform(max_delay_s, 3 * max_delay_s))
            os.kill(pid, signal.SIGKILL)
            status = await asyncio.to_thread(zyg.reap, pid)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                rep.early_exits.append(zyg.tail())
            rep.cuts += 1
            written, _ = await asyncio.to_thread(_status_of_copy, disk, "outbox.db")
            lost = await asyncio.to_thread(cut_power, disk)
            rep.bytes_lost += sum(max(0, v) for v in lost.values())
            synced, check = await asyncio.to_thread(_status_of_copy, disk, "outbox.db")
            if check != "ok":
                rep.integrity.append(check)
            if synced < written:
                rep.lost_commits += 1
            delivered = max((q for g, q in stored_batches(store) if g == "gw-a"), default=0)
            if synced <= delivered:  # would hand out a delivered number again
                rep.went_back.append((delivered, synced))
            await asyncio.to_thread(_all_durable, disk)
        await _drain_then_stop(zyg, drain, disk / "outbox.db", lambda: len(sink.seen),
                               rep.early_exits)
    finally:
        zyg.close()
        stop.set()
        await asyncio.wait_for(mtask, 15)
    rep.run_s = time.monotonic() - t0
    st = read_status(disk / "outbox.db")
    rep.accepted = st.next_seq - 1
    mine = sink.seqs("gw-a")
    rep.stored = len(set(mine))
    rep.arrivals = len(sink.arrivals)
    rep.missing = sorted(set(range(1, st.next_seq)) - set(mine))
    rep.conflicts = len(sink.conflicts)
    return rep
