"""Gateways that keep producing and syncing while a test breaks something else.

A :class:`Fleet` is the lab's gateways, each with its real outbox, sealer and ``GatewaySync``
(short ack timeout, so a batch whose ack never came is resent within a second), sealing to
one matcher key; :meth:`Fleet.produce` appends batches until told to stop. After the fault,
:meth:`Fleet.drained` waits until every outbox is empty, and :func:`check_exactly_once` holds
the matcher's store against what the outboxes accepted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ackmatcher import Site
from crashkit import ingest_totals, stored_batches

from bzgw.lab import Lab
from contract.sealing import Sealer, generate_matcher_keypair
from matcher.service import MatcherService
from matcher.store import Store


async def _within(aw: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {timeout} s") from None


class Fleet:
    """The lab's gateways, syncing to whatever matcher holds ``private``."""

    def __init__(self, lab: Lab, root: Path, gateways: tuple[str, ...] = ("gw-a", "gw-b"),
                 *, ack_timeout_s: float = 1.0, seed: int = 1) -> None:
        self.lab = lab
        self.private, public = generate_matcher_keypair()
        self.sites: list[Site] = []
        for gw in gateways:
            site = Site(lab, root, gw, ack_timeout_s=ack_timeout_s)
            site.sealer = Sealer(gateway_id=gw, matcher_public_key=public,
                                 signing_key=site.gw.signing_key)
            self.sites.append(site)
        self.rng = random.Random(seed)
        self.producing = asyncio.Event()

    async def produce(self, stop: asyncio.Event) -> None:
        """Append a batch to a random gateway every few ms while ``producing`` is set."""
        while not stop.is_set():
            if self.producing.is_set():
                site = self.rng.choice(self.sites)
                await asyncio.to_thread(site.add, 1, 30)
                site.sync.wake()
            await asyncio.sleep(self.rng.uniform(0.005, 0.03))

    def accepted(self) -> set[tuple[str, int]]:
        """``(gateway, seq)`` of every batch the outboxes accepted."""
        return {(s.gw.entry.id, q) for s in self.sites
                for q in range(1, s.outbox.status().next_seq)}

    def depth(self) -> int:
        """Batches still waiting in the outboxes."""
        return sum(s.outbox.status().depth for s in self.sites)

    async def drained(self, timeout: float = 60.0) -> None:
        """Wait until nothing waits in any outbox (production stopped first)."""
        self.producing.clear()
        t_end = time.monotonic() + timeout
        while self.depth() or any(s.sync.inflight for s in self.sites):
            if time.monotonic() > t_end:
                raise TimeoutError(f"{self.depth()} batches still waiting after {timeout} s")
            await asyncio.sleep(0.05)

    def service(self, store: Store, **kw: Any) -> MatcherService:
        """The real matcher service on ``store`` for this fleet's batches."""
        return MatcherService(store=store, registry=self.lab.registry,
                              private_key=self.private, mqtt=self.lab.matcher_mqtt["matcher"],
                              client_id="matcher-fault", **kw)

    async def run(self, body: Callable[[], Awaitable[None]],
                  *services: MatcherService) -> None:
        """Services subscribed, then the gateways syncing and producing around ``body``."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in services]
        try:
            for s in services:
                await _within(s.subscribed.wait(), 15, "matcher subscribed")
            tasks += [asyncio.create_task(site.sync.run(stop)) for site in self.sites]
            self.producing.set()
            tasks.append(asyncio.create_task(self.produce(stop)))
            await body()
        finally:
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=30)
            assert not pending, f"did not stop within 30 s: {pending}"

    def close(self) -> None:
        """Close the outboxes."""
        for s in self.sites:
            s.outbox.close()


def check_exactly_once(fleet: Fleet, store: Store) -> dict[str, int]:
    """Every accepted batch is in the store once, nothing else is; returns the counters."""
    rows = stored_batches(store)
    totals = ingest_totals(store)
    assert len(rows) == len(set(rows)), "a batch was stored twice"
    want = fleet.accepted()
    assert set(rows) == want, (f"missing {sorted(want - set(rows))[:5]}, "
                               f"extra {sorted(set(rows) - want)[:5]}")
    assert totals.get("replay", 0) == 0
    return totals


# ------------------------------------------------------- a day without a broker


@dataclass
class OutageReport:
    """What a long outage did to one gateway's outbox, and how it drained afterwards."""

    hours: float
    appended: int = 0  # batches sealed during the outage
    dropped: int = 0  # dropped by the outbox bound (counted in its status and health)
    dropped_bytes: int = 0
    kept: int = 0
    max_seen_bytes: int = 0  # largest outbox size observed (must stay within the bound)
    bound: int = 0
    connect_failures: int = 0
    health_dropped: int = -1  # what the health document reported
    health_codes: list[str] = field(default_factory=list)
    stored_seqs: list[int] = field(default_factory=list)  # in store insertion order
    drain_s: float = 0.0
    kept_sightings: int = 0

    @property
    def drain_batches_per_s(self) -> float:
        return self.kept / self.drain_s if self.drain_s else 0.0

    @property
    def drain_sightings_per_s(self) -> float:
        return self.kept_sightings / self.drain_s if self.drain_s else 0.0


async def outage(lab: Lab, root: Path, *, hours: float = 24, flush_s: float = 60,
                 sightings: int = 400, max_bytes: int = 8_000_000,
                 start: float = 1_700_000_000.0) -> OutageReport:
    """``hours`` without a broker at a venue sealing a ``sightings``-ID batch every
    ``flush_s``, on a fast clock (the outbox's own clock jumps ``flush_s`` per batch), while
    the real sync keeps failing to connect; then the broker returns and the real matcher
    service (SQLite) drains the outbox.
    """
    from crowd import crowd

    from contract.health import conditions
    from contract.records import IdKind
    from core.clock import ReplayClock
    from gateway.config import IdentityConfig
    from gateway.health import Component, build_health
    from gateway.outbox import Outbox
    from gateway.pipeline import PipelineStats
    from matcher.store import open_store
    from mqtt.sync import GatewaySync

    rep = OutageReport(hours=hours, bound=max_bytes)
    g = lab.gateways["gw-a"]
    priv, pub = generate_matcher_keypair()
    sealer = Sealer(gateway_id="gw-a", matcher_public_key=pub, signing_key=g.signing_key)
    clock = ReplayClock(start)
    box = Outbox(root / "outage.db", max_bytes=max_bytes, max_age_s=21 * 86400, clock=clock)
    e = g.entry
    sync = GatewaySync(box, g.mqtt, IdentityConfig(id=e.id, province=e.province,
                                                   venue=e.venue), poll_s=0.05,
                       ack_timeout_s=30)
    lab.broker.stop()
    stop = asyncio.Event()
    sync_task = asyncio.create_task(sync.run(stop))
    n_sightings: dict[int, int] = {}
    steps = int(hours * 3600 / flush_s)
    for k in range(steps):
        clock.advance(start + (k + 1) * flush_s)
        batch = crowd(IdKind.BLUEZONE, sightings, seed=k)
        seq = await asyncio.to_thread(box.append, lambda s, b=batch: sealer.seal(
            b, seq=s, created_at=clock.now(), clock=clock.epoch()))
        n_sightings[seq] = len(batch.sightings)
        if k % 60 == 59:
            await asyncio.to_thread(box.enforce_retention)
        rep.max_seen_bytes = max(rep.max_seen_bytes, box.status().bytes)
        if k % 50 == 0:
            await asyncio.sleep(0)  # let the sync try (and fail) to connect
    st = box.status()
    rep.appended, rep.dropped, rep.dropped_bytes, rep.kept = (
        st.next_seq - 1, st.dropped_batches, st.dropped_bytes, st.depth)
    rep.connect_failures = sync.counters.connect_failures
    doc = build_health(gateway_id="gw-a", now=clock.now(), uptime_s=hours * 3600, outbox=st,
                       outbox_max_bytes=max_bytes, outbox_dir=root, stats=PipelineStats(),
                       radio=Component("scanning"), camera=Component("off"),
                       clock=clock.epoch(), connected=sync.connected, last_sync=None)
    rep.health_dropped = doc["dropped"]["outbox_batches"]
    rep.health_codes = [c.code for c in conditions(doc)]
    kept = set(range(st.next_seq - st.depth, st.next_seq))
    rep.kept_sightings = sum(n_sightings[q] for q in kept)

    with open_store(f"sqlite:///{root / 'outage-matcher.db'}") as store:
        svc = MatcherService(store=store, registry=lab.registry, private_key=priv,
                             mqtt=lab.matcher_mqtt["matcher"], client_id="matcher-outage")
        await asyncio.to_thread(lab.restart_broker)
        mtask = asyncio.create_task(svc.run(stop))
        await asyncio.wait_for(svc.subscribed.wait(), 30)
        t0 = time.monotonic()
        sync.wake()
        while box.status().depth:
            if time.monotonic() > t0 + 300:
                raise TimeoutError(f"{box.status().depth} batches not drained in 300 s")
            await asyncio.sleep(0.02)
        rep.drain_s = time.monotonic() - t0
        stop.set()
        await asyncio.gather(sync_task, mtask)
        rep.stored_seqs = [int(q) for (q,) in store.db.execute(
            "SELECT seq FROM batches ORDER BY rowid")]
    box.close()
    return rep
