"""``bzgw matcher serve``: one matcher process on the shared batch subscription.

Several processes (or hosts) subscribe to ``$share/matchers/bz/v1/+/+/+/batch``; the broker
hands each batch to one of them, so ingest scales by adding processes. Each process also
reads gateway ``status`` and ``health`` (stored for the dashboard by
:func:`matcher.dashboard_queries.consume_message`) and runs retention every
``purge_interval_s``.

Store work runs on one worker thread per service, so the event loop (and paho's callbacks)
never wait for the database and the store's connection is used by one thread at a time.
Opening batches (signature check, decryption, decoding) runs on a second thread, ahead of the
store: while one group of batches is written, the next ones are opened.
A lost MQTT session is retried with exponential backoff and jitter; a batch that was being
processed when the session dropped is sent again by its gateway (no ack reached it), and the
store's ``(gateway, seq)`` key makes that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from contract import codec
from contract.registry import Registry
from contract.sealing import DEFAULT_MAX_WIRE, MatcherPrivateKey
from core.errors import BzgwError
from matcher.audit import AuditLog
from matcher.ingest import Ingestor, Opened, Outcome
from matcher.store import Store
from mqtt import topics
from mqtt.client import Message, MqttClient, MqttError
from mqtt.config import MqttConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


GROUP_MAX = 64  # batches stored per transaction at most
OPEN_AHEAD = 2 * GROUP_MAX  # received batches opened ahead of the store (bounds memory)
ACK_DRAIN_S = 5.0  # on stop, how long to wait for acks still in flight


def default_client_id(prefix: str = "matcher") -> str:
    """A client id unique per process: members of a share group need distinct ids."""
    return f"{prefix}-{socket.gethostname()[:32]}-{os.getpid()}"


@dataclass
class ServiceStats:
    """What this process has done since it started (totals live in the store)."""

    batches: dict[str, int] = field(default_factory=dict)
    reports: int = 0
    acks: int = 0
    ack_failures: int = 0
    sessions: int = 0
    purges: int = 0
    purged_rows: int = 0


class MatcherService:
    """Subscribe, ingest, ack, keep status/health, purge; until ``stop`` is set."""

    def __init__(self, *, store: Store, registry: Registry,
                 private_key: MatcherPrivateKey | Mapping[str, MatcherPrivateKey],
                 mqtt: MqttConfig, client_id: str | None = None,
                 retention_days: float = 21, purge_interval_s: float = 3600,
                 max_wire: int = DEFAULT_MAX_WIRE,
                 max_plaintext: int = codec.DEFAULT_MAX_PLAINTEXT,
                 gateway_reports: bool = True) -> None:
        self.store = store
        self.registry = registry
        self.mqtt = mqtt
        self.audit: AuditLog | None = None  # set by serve: the dashboard logs logins to it
        self.client_id = client_id or default_client_id()
        self.retention_days = retention_days
        self.purge_interval_s = purge_interval_s
        self.gateway_reports = gateway_reports
        self.ingestor = Ingestor(store, registry, private_key, max_wire=max_wire,
                                 max_plaintext=max_plaintext)
        self.stats = ServiceStats()
        self.subscribed = asyncio.Event()
        self._store_errors: tuple[type[BaseException], ...] = (BzgwError, *store.db.errors)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matcher-store")
        self._opener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matcher-open")
        self._acks_out: set[asyncio.Future[Any]] = set()  # acks awaiting the broker's PUBACK

    def set_registry(self, registry: Registry) -> None:
        """Use a new gateway registry from the next message on."""
        self.registry = registry
        self.ingestor.registry = registry

    async def run_db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a store call on the thread that owns the store's connection.

        The dashboard passes its reads through here, so they queue with ingest.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kw))

    _db = run_db

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; reconnect with backoff when the session drops."""
        purger = asyncio.create_task(self._purge_loop(stop), name="matcher-purge")
        delay = self.mqtt.backoff_min_s
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._session(stop)
                except MqttError as err:
                    log.warning("matcher %s: MQTT session ended: %s", self.client_id, err)
                if stop.is_set():
                    break
                if time.monotonic() - started > 30:  # it had been up: start backoff over
                    delay = self.mqtt.backoff_min_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, self.mqtt.backoff_max_s)
        finally:
            purger.cancel()
            await asyncio.gather(purger, return_exceptions=True)
            self._opener.shutdown(wait=True)
            self._pool.shutdown(wait=True)

    async def _session(self, stop: asyncio.Event) -> None:
        client = MqttClient(self.mqtt, self.client_id)
        await client.connect()
        self.stats.sessions += 1
        try:
            await client.subscribe(topics.SHARED_BATCHES, qos=1)
            if self.gateway_reports:
                await client.subscribe(topics.ALL_STATUS, qos=1)
                await client.subscribe(topics.ALL_HEALTH, qos=1)
            self.subscribed.set()
            log.info("matcher %s subscribed to %s", self.client_id, topics.SHARED_BATCHES)
            reader = asyncio.create_task(self._read(client))
            waiter = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (reader, waiter):
                    t.cancel()
                await asyncio.gather(reader, waiter, return_exceptions=True)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            if self._acks_out:
                # A clean stop lets the acks already sent reach the broker, so no gateway
                # sends those batches again (and no ack is reported lost).
                await asyncio.wait(set(self._acks_out), timeout=ACK_DRAIN_S)
        finally:
            self.subscribed.clear()
            await client.close()

    async def _read(self, client: MqttClient) -> None:
        """Receive, open and store as a pipeline, so no stage waits for another's round trip.

        Batches are opened (verify, decrypt, decode) on their own thread as they arrive,
        while the store thread writes the batches opened before them; acks go out as soon
        as their group is committed, without waiting for the broker's PUBACK before the
        next group.
        """
        queue: asyncio.Queue[tuple[Message, asyncio.Future[Opened] | None]] = asyncio.Queue(
            OPEN_AHEAD)
        tasks = [asyncio.create_task(self._receive(client, queue), name="matcher-receive"),
                 asyncio.create_task(self._write(client, queue), name="matcher-write")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc

    async def _receive(self, client: MqttClient,
                       queue: asyncio.Queue[tuple[Message, asyncio.Future[Opened] | None]],
                       ) -> None:
        loop = asyncio.get_running_loop()
        msg: Message
        async for msg in client.messages():
            opened: asyncio.Future[Opened] | None = None
            if msg.topic.rsplit("/", 1)[-1] == "batch":
                opened = loop.run_in_executor(self._opener, self.ingestor.open, msg.topic,
                                              msg.payload)
            await queue.put((msg, opened))

    async def _write(self, client: MqttClient,
                     queue: asyncio.Queue[tuple[Message, asyncio.Future[Opened] | None]],
                     ) -> None:
        while True:
            # Group commit: batches that are already waiting are stored in one transaction
            # (one fsync) and acked together, instead of one commit and ack round trip each.
            group = [await queue.get()]
            while len(group) < GROUP_MAX and not queue.empty():
                group.append(queue.get_nowait())
            batches: list[Opened] = []
            for msg, opened in group:
                if opened is None:
                    if msg.topic.rsplit("/", 1)[-1] in ("status", "health"):
                        await self._report(msg)
                else:
                    batches.append(await opened)
            if batches:
                await self._batches(client, batches)

    async def _batches(self, client: MqttClient, batches: list[Opened]) -> None:
        try:
            outs: list[Outcome] = await self.run_db(self.ingestor.store_group, batches)
        except self._store_errors as err:
            # The store failed (disk full, server gone): no ack, so the gateways send again.
            log.error("cannot store %d batch(es), first from %s: %s", len(batches),
                      batches[0].topic, err)
            self.stats.batches["error"] = self.stats.batches.get("error", 0) + len(batches)
            return
        for out in outs:
            key = out.reason if out.status == "rejected" and out.reason else out.status
            self.stats.batches[key] = self.stats.batches.get(key, 0) + 1
            if out.ack_topic is not None:
                fut = client.publish_nowait(out.ack_topic, out.ack(), qos=1)
                self._acks_out.add(fut)
                fut.add_done_callback(self._acks_out.discard)
                fut.add_done_callback(functools.partial(self._acked, out))

    def _acked(self, out: Outcome, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        err = fut.exception()
        if err is None:
            self.stats.acks += 1
            return
        # The session is ending (messages() raises next); the batch is sent again and
        # stored once as a duplicate.
        self.stats.ack_failures += 1
        log.warning("ack for %s/%s not delivered: %s", out.gateway_id, out.seq, err)

    async def _report(self, msg: Message) -> None:
        from matcher.dashboard_queries import consume_message

        try:
            await self.run_db(consume_message, self.store, self.registry, msg.topic,
                           msg.payload, retained=msg.retain)
        except self._store_errors as err:
            log.error("cannot store a report from %s: %s", msg.topic, err)
            return
        self.stats.reports += 1

    async def _purge_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                deleted = await self.run_db(self.store.purge, time.time(), self.retention_days)
                self.stats.purges += 1
                self.stats.purged_rows += sum(deleted.values())
                if any(deleted.values()):
                    log.info("retention: deleted %s", deleted)
            except self._store_errors as err:
                log.error("retention run failed: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.purge_interval_s)
