"""Gateway side of the sync: drain the outbox to the broker, delete on the matcher's ack.

One :class:`GatewaySync` runs for the life of the daemon, in the daemon's event loop. Per MQTT
session it announces ``online`` (retained; the last will says ``offline``), subscribes to its
own ack topic, then keeps at most ``MqttConfig.inflight`` batches awaiting an application
ack. A batch leaves the outbox only when the matcher answers ``stored`` or ``duplicate``
(``rejected`` deletes it too and counts it); a PUBACK only means the broker has it. A batch
without an answer after ``ack_timeout_s`` is sent again, as is everything in flight after a
reconnect; the matcher dedupes on ``(gateway, seq)``.

Live capture shares the loop, so the drain is polite: outbox reads and ack deletes (which
fsync) run in a worker thread, each send round is capped at the free window and yields to the
loop between publishes. Lost sessions are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from contract.ack import Ack, parse_ack
from core.errors import BzgwError
from mqtt import topics
from mqtt.client import Message, MqttClient, MqttError, MqttPublishError, Will
from mqtt.config import MqttConfig

if TYPE_CHECKING:
    from core.clock import Clock

log = logging.getLogger(__name__)

AckTimeHook = Callable[[float, float, float], None]


class PendingBatch(Protocol):
    """A sealed batch waiting in the outbox."""

    @property
    def seq(self) -> int: ...
    @property
    def data(self) -> bytes: ...


class OutboxLike(Protocol):
    """What the sync needs of the gateway's outbox (``gateway.outbox.Outbox``)."""

    @property
    def clock(self) -> Clock: ...

    def pending(self, limit: int, *, exclude: Iterable[int] = ()) -> Sequence[PendingBatch]:
        """Up to ``limit`` waiting batches, oldest first."""
        ...

    def settle(self, acked: Iterable[int], *, rejected: Iterable[int] = ()) -> int:
        """Delete answered batches in one transaction."""
        ...


class GatewayIdentity(Protocol):
    """Who is syncing: its client id and topic path ``bz/v1/{province}/{venue}/{id}``."""

    @property
    def id(self) -> str: ...
    @property
    def province(self) -> str: ...
    @property
    def venue(self) -> str: ...


@dataclass
class SyncCounters:
    """What the sync has done since start (published in health, shown by the daemon)."""

    sent: int = 0  # batch publishes issued
    published: int = 0  # batch publishes accepted by the broker (PUBACK success)
    resent: int = 0  # batches sent again: no ack in time, or the session ended first
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    refused: int = 0  # PUBACK failures (e.g. Not authorized: an ACL mistake)
    bad_acks: int = 0  # ack messages that are not valid JSON acks
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    health_published: int = 0


class GatewaySync:
    """Outbox → broker → matcher ack loop with reconnects.

    Args:
        outbox: the sealed-batch outbox.
        mqtt_cfg: broker address, TLS files, keepalive, backoff and in-flight window.
        identity: this gateway (client id and topic path).
        health: returns the health document to publish, or ``None`` for no health topic.
        health_interval_s: health period.
        on_ack_time: ``hook(matcher_time, sent_mono, recv_mono)`` per ack of a batch sent in
            this process, for the clock (round-trip bounded time hints).
        ack_timeout_s: resend a batch with no ack after this long.
        poll_s: how often to look for new batches when idle (``wake()`` cuts it short).
    """

    def __init__(self, outbox: OutboxLike, mqtt_cfg: MqttConfig,
                 identity: GatewayIdentity, *,
                 health: Callable[[], dict[str, Any]] | None = None,
                 health_interval_s: float = 60.0, on_ack_time: AckTimeHook | None = None,
                 ack_timeout_s: float = 60.0, poll_s: float = 1.0) -> None:
        self.outbox = outbox
        self.cfg = mqtt_cfg
        self.identity = identity
        self.health = health
        self.health_interval_s = health_interval_s
        self.on_ack_time = on_ack_time
        self.ack_timeout_s = ack_timeout_s
        self.poll_s = poll_s
        where = (identity.province, identity.venue, identity.id)
        self.topic_batch = topics.batch(*where)
        self.topic_ack = topics.ack(*where)
        self.topic_status = topics.status(*where)
        self.topic_health = topics.health(*where)
        self.counters = SyncCounters()
        self.last_sync: float | None = None  # wall time of the last matcher ack
        self.last_error: str | None = None
        self._client: MqttClient | None = None
        self._inflight: dict[int, float] = {}  # seq → monotonic send time
        self._settling: set[int] = set()  # answered, delete not yet committed: do not resend
        self._was_up = False
        self._wake = asyncio.Event()

    # -------------------------------------------------------------- public

    @property
    def connected(self) -> bool:
        """Whether a session is up."""
        return self._client is not None and self._client.connected

    @property
    def inflight(self) -> int:
        """Batches sent and awaiting their ack."""
        return len(self._inflight)

    def wake(self) -> None:
        """A batch was appended: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Counters and state as plain data."""
        return {**asdict(self.counters), "connected": self.connected,
                "inflight": self.inflight, "last_sync": self.last_sync,
                "last_error": self.last_error}

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set; reconnects with backoff forever until then.

        Broker, TLS and outbox failures are logged, kept in ``last_error`` and retried;
        they never end the loop.
        """
        attempt = 0
        while not stop.is_set():
            try:
                await self._session(stop)
            except (BzgwError, OSError, TimeoutError) as err:
                self.last_error = f"{type(err).__name__}: {err}"
                if self._was_up:
                    self.counters.disconnects += 1
                    attempt = 0  # a session that came up resets the backoff
                else:
                    self.counters.connect_failures += 1
                log.warning("MQTT session to %s:%d ended: %s", self.cfg.host, self.cfg.port,
                            self.last_error)
            if stop.is_set():
                break
            delay = self._backoff(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_min_s * 2 ** min(attempt, 30))
        return random.uniform(cap / 2, cap)  # jitter over the upper half: gateways spread out

    # -------------------------------------------------------------- one session

    def _status(self, state: str, **extra: Any) -> bytes:
        return json.dumps({"state": state, "ts": self.outbox.clock.now(),
                           "gateway": self.identity.id, **extra}).encode()

    async def _session(self, stop: asyncio.Event) -> None:
        self._was_up = False
        will = Will(self.topic_status, self._status("offline", reason="connection lost"))
        client = MqttClient(self.cfg, self.identity.id, will=will)
        self._client = client
        try:
            await client.connect()
            self._was_up = True
            self.counters.connects += 1
            self.counters.resent += len(self._inflight)
            self._inflight.clear()  # unanswered batches of the last session go again
            await client.subscribe(self.topic_ack, qos=1)
            await client.publish(self.topic_status, self._status("online"), retain=True)
            log.info("MQTT connected to %s:%d as %s", self.cfg.host, self.cfg.port,
                     self.identity.id)
            await self._serve(client, stop)
            if stop.is_set() and client.connected:
                with contextlib.suppress(MqttError, TimeoutError):
                    await client.publish(self.topic_status, self._status(
                        "offline", reason="stopped"), retain=True, timeout=2)
        finally:
            self._client = None
            await client.close()

    async def _serve(self, client: MqttClient, stop: asyncio.Event) -> None:
        acks: list[tuple[Ack, float]] = []
        got_acks = asyncio.Event()
        tasks = [asyncio.create_task(self._read_acks(client, acks, got_acks), name="acks"),
                 asyncio.create_task(self._settle_loop(acks, got_acks), name="settle"),
                 asyncio.create_task(self._send_loop(client), name="send")]
        if self.health is not None:
            tasks.append(asyncio.create_task(self._health_loop(client), name="health"))
        stopper = asyncio.create_task(stop.wait(), name="stop")
        gone = asyncio.create_task(client.disconnected.wait(), name="gone")
        try:
            done, _ = await asyncio.wait([*tasks, stopper, gone],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*tasks, stopper, gone):
                t.cancel()
            await asyncio.gather(*tasks, stopper, gone, return_exceptions=True)
        if acks:  # answers that arrived just before the end still delete their batches
            await self._settle(acks)
        for t in done:
            if t in tasks and not t.cancelled() and (exc := t.exception()) is not None:
                raise exc
        if gone in done:
            raise MqttError(f"disconnected: {client.disconnect_reason}")

    async def _send_loop(self, client: MqttClient) -> None:
        window = self.cfg.inflight
        while True:
            self._expire()
            free = window - len(self._inflight)
            items: Sequence[PendingBatch] = []
            if free > 0:
                items = await asyncio.to_thread(self.outbox.pending, free,
                                                exclude=[*self._inflight, *self._settling])
            for item in items:
                self._inflight[item.seq] = time.monotonic()
                fut = client.publish_nowait(self.topic_batch, item.data, qos=1)
                self.counters.sent += 1
                fut.add_done_callback(functools.partial(self._puback, item.seq))
                await asyncio.sleep(0)  # let capture and acks run between publishes
            if not items or free <= 0:
                self._wake.clear()
                timeout = self.poll_s if free > 0 else min(self.poll_s, 0.05)
                await _wait_event(self._wake, timeout)

    def _puback(self, seq: int, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        err = fut.exception()
        if err is None:
            self.counters.published += 1
        elif isinstance(err, MqttPublishError):
            # e.g. Not authorized: an ACL or identity mistake; keep the batch, retry later
            self.counters.refused += 1
            self.last_error = str(err)
            log.error("broker refused batch %d: %s", seq, err)
        # on MqttError (session ended) the batch simply goes again after reconnect

    def _expire(self) -> None:
        now = time.monotonic()
        for seq, sent in list(self._inflight.items()):
            if now - sent > self.ack_timeout_s:
                del self._inflight[seq]
                self.counters.resent += 1

    async def _read_acks(self, client: MqttClient, acks: list[tuple[Ack, float]],
                         got: asyncio.Event) -> None:
        async for msg in client.messages():
            ack = self._parse_ack(msg)
            if ack is not None:
                acks.append((ack, time.monotonic()))
                got.set()

    def _parse_ack(self, msg: Message) -> Ack | None:
        if msg.topic != self.topic_ack:
            return None
        ack = parse_ack(msg.payload)
        if ack is None:
            self.counters.bad_acks += 1
            log.warning("ignoring a malformed ack on %s", msg.topic)
        return ack

    async def _settle_loop(self, acks: list[tuple[Ack, float]], got: asyncio.Event) -> None:
        while True:
            await got.wait()
            got.clear()
            await self._settle(acks)

    async def _settle(self, acks: list[tuple[Ack, float]]) -> None:
        batch = acks[:]
        del acks[:len(batch)]
        ok = [a.seq for a, _ in batch if a.status != "rejected"]
        bad = [a.seq for a, _ in batch if a.status == "rejected"]
        for a, recv in batch:
            setattr(self.counters, a.status, getattr(self.counters, a.status) + 1)
            if a.status == "rejected":
                log.error("matcher rejected batch %d: %s", a.seq, a.reason)
            sent = self._inflight.pop(a.seq, None)
            if sent is not None and self.on_ack_time is not None and a.matcher_time is not None:
                self.on_ack_time(a.matcher_time, sent, recv)
        if batch:
            self.last_sync = self.outbox.clock.now()
            self._wake.set()  # the window has room again
            # all answers of one round in one transaction (one fsync); if it fails the batch
            # stays, goes again and comes back as a duplicate
            seqs = {a.seq for a, _ in batch}
            self._settling |= seqs
            try:
                await asyncio.shield(asyncio.to_thread(self.outbox.settle, ok, rejected=bad))
            finally:
                self._settling -= seqs

    async def _health_loop(self, client: MqttClient) -> None:
        assert self.health is not None
        while True:
            doc = _plain({**self.health(), "sync": self.stats()})
            try:
                await client.publish(self.topic_health, json.dumps(doc, allow_nan=False),
                                     qos=1, timeout=10)
                self.counters.health_published += 1
            except MqttPublishError as err:
                log.error("health refused: %s", err)
            await asyncio.sleep(self.health_interval_s)


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds.

    Not ``asyncio.wait_for``: before Python 3.12 it swallows a cancellation that arrives just
    as the event is set, and the send loop, woken for every appended batch, then never ended
    when its session was torn down (seen under CPU load during broker restarts).
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


def _plain(x: Any) -> Any:
    """Strict-JSON data: non-finite floats become ``None``, unknown objects their ``str``."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)
