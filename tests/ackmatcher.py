"""A minimal matcher for sync tests: subscribe, verify and open, dedupe, record, ack.

It speaks the real protocol (shared subscription, ``open_batch``, JSON acks on the gateway's
ack topic) over a real Mosquitto; it stores only ``(gateway, seq, sha256)`` so tests can prove
exactly-once delivery and that no sequence number ever carried two different contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from crowd import crowd

from bzgw.lab import Lab
from contract.ack import ack_payload
from contract.records import IdKind
from contract.registry import Registry
from contract.sealing import Sealer, generate_matcher_keypair, open_batch
from core.clock import ClockEpoch, ClockSource
from core.errors import RejectedBatchError
from gateway.config import IdentityConfig
from gateway.outbox import Outbox
from mqtt import topics
from mqtt.client import MqttClient, MqttError
from mqtt.config import MqttConfig
from mqtt.sync import GatewaySync

Policy = Callable[[str, int], str | None]  # (gateway, seq) → forced status, None = no ack


@dataclass
class AckMatcher:
    """Receives batches until stopped; reconnects when the broker goes away."""

    cfg: MqttConfig
    client_id: str
    registry: Registry
    private_key: bytes
    share: bool = True
    policy: Policy | None = None
    seen: dict[tuple[str, int], str] = field(default_factory=dict)
    deliveries: list[tuple[str, int, str]] = field(default_factory=list)
    conflicts: list[tuple[str, int]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    sightings: int = 0
    arrivals: list[tuple[str, int]] = field(default_factory=list)  # every verified receipt
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; a lost session is retried after 50 ms."""
        while not stop.is_set():
            client = MqttClient(self.cfg, self.client_id)
            try:
                await client.connect()
                await client.subscribe(topics.SHARED_BATCHES if self.share
                                       else topics.ALL_BATCHES, qos=1)
                self.ready.set()
                reader = asyncio.create_task(self._serve(client))
                waiter = asyncio.create_task(stop.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                for t in (reader, waiter):
                    t.cancel()
                await asyncio.gather(reader, waiter, return_exceptions=True)
            except (MqttError, OSError, TimeoutError):
                pass
            finally:
                self.ready.clear()
                await client.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    async def _serve(self, client: MqttClient) -> None:
        async for msg in client.messages():
            where = topics.parse(msg.topic)
            if where is None or where[3] != "batch":
                continue
            p, v, g, _ = where
            digest = hashlib.sha256(msg.payload).hexdigest()
            try:
                header, batch = open_batch(msg.payload, registry=self.registry,
                                           private_key=self.private_key)
            except RejectedBatchError as err:
                self.rejected[err.reason] = self.rejected.get(err.reason, 0) + 1
                continue  # unsigned or unknown: no seq to answer
            self.arrivals.append((g, header.seq))
            status = "stored"
            key = (header.gateway_id, header.seq)
            if header.gateway_id != g:
                status = "rejected"
            elif key in self.seen:
                status = "duplicate"
                if self.seen[key] != digest:
                    self.conflicts.append(key)
            if self.policy is not None:
                forced = self.policy(g, header.seq)
                if forced is None:
                    continue
                status = forced
            if status == "stored":
                self.seen[key] = digest
                self.deliveries.append((g, header.seq, digest))
                self.sightings += len(batch.sightings)
            fut = client.publish_nowait(topics.ack(p, v, g), ack_payload(
                header.seq, status, matcher_time=time.time(),
                reason="policy" if status == "rejected" else None), qos=1)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def seqs(self, gateway: str) -> list[int]:
        """Sequence numbers stored for ``gateway``, in arrival order."""
        return [s for g, s, _ in self.deliveries if g == gateway]


# ---------------------------------------------------------------- one gateway + a matcher

EPOCH = ClockEpoch("boot", 0.0, True, ClockSource.NTP)


class Site:
    """One gateway of the lab with its outbox, sealer and sync, and a matcher."""

    def __init__(self, lab: Lab, tmp: Path, gw: str = "gw-a", **sync_kw: Any) -> None:
        self.lab = lab
        self.gw = lab.gateways[gw]
        self.priv, pub = generate_matcher_keypair()
        self.sealer = Sealer(gateway_id=gw, matcher_public_key=pub,
                             signing_key=self.gw.signing_key)
        self.outbox = Outbox(tmp / f"{gw}.db", max_bytes=50_000_000, max_age_s=86400,
                             max_file_bytes=sync_kw.pop("max_file_bytes", None))
        e = self.gw.entry
        self.identity = IdentityConfig(id=e.id, province=e.province, venue=e.venue)
        cfg = msgspec.structs.replace(self.gw.mqtt, inflight=sync_kw.pop("inflight", 8))
        self.sync = GatewaySync(self.outbox, cfg, self.identity, poll_s=0.05, **sync_kw)
        self.n = 0

    def add(self, count: int, size: int = 50) -> list[int]:
        out = []
        for _ in range(count):
            self.n += 1
            batch = crowd(IdKind.BLUEZONE, size, seed=self.n)
            out.append(self.outbox.append(lambda s, b=batch: self.sealer.seal(
                b, seq=s, created_at=1.0, clock=EPOCH)))
        return out

    def matcher(self, name: str = "matcher", **kw: Any) -> AckMatcher:
        return AckMatcher(self.lab.matcher_mqtt[name], name, self.lab.registry, self.priv,
                          **kw)


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for ``cond`` (polling the loop), failing the test on timeout."""
    async def poll() -> None:
        while not cond():  # noqa: ASYNC110 - the conditions are plain attributes
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def running(*runs: Callable[[asyncio.Event], Awaitable[None]],
                  body: Callable[[], Awaitable[None]], matcher: AckMatcher | None = None) -> None:
    """Run the ``run(stop)`` coroutines around ``body``, then stop them cleanly.

    A ``matcher`` is started first and subscribed before anything else runs (batches
    published to a topic nobody reads are gone until the ack timeout resends them).
    """
    stop = asyncio.Event()
    tasks = []
    if matcher is not None:
        tasks.append(asyncio.create_task(matcher.run(stop)))
        await asyncio.wait_for(matcher.ready.wait(), 10)
    tasks += [asyncio.create_task(r(stop)) for r in runs]
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
