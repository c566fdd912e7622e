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
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import RejectedBatchError
from gateway.registry import Registry
from gateway.sealer import open_batch
from mqtt import topics
from mqtt.client import MqttClient, MqttError
from mqtt.config import MqttConfig
from mqtt.sync import ack_payload

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
