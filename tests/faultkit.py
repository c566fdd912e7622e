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
from pathlib import Path
from typing import Any

from ackmatcher import Site
from crashkit import ingest_totals, stored_batches

from gateway.sealer import Sealer, generate_matcher_keypair
from matcher.service import MatcherService
from matcher.store import Store
from mqtt.lab import Lab


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
