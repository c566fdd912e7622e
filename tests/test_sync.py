"""Gateway sync through a real Mosquitto (TLS, client certificates, generated ACLs)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
from ackmatcher import Site, running, until

from bzgw.lab import Lab
from contract.ack import ack_payload
from core.errors import OutboxFullError
from mqtt import topics
from mqtt.client import MqttClient


class Watcher:
    """A matcher-identity client recording status and health messages."""

    def __init__(self, lab: Lab) -> None:
        self.client = MqttClient(lab.matcher_mqtt["matcher-2"], "watcher")
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        await self.client.connect()
        await self.client.subscribe(topics.ALL_STATUS)
        await self.client.subscribe(topics.ALL_HEALTH)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for m in self.client.messages():
                self.got.append((m.topic.rsplit("/", 1)[1], json.loads(m.payload)))

    def states(self) -> list[str]:
        return [d["state"] for leaf, d in self.got if leaf == "status"]

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self.client.close()


def test_backlog_is_delivered_once_and_deleted_on_ack(lab: Lab, tmp_path: Path) -> None:
    times: list[tuple[float, float, float]] = []
    site = Site(lab, tmp_path, on_ack_time=lambda m, s, r: times.append((m, s, r)))
    seqs = site.add(40)
    m = site.matcher()

    async def body() -> None:
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, body=body, matcher=m))
    assert m.seqs("gw-a") == seqs and not m.conflicts
    assert m.sightings == 40 * 50
    st = site.outbox.status()
    assert (st.depth, st.acked, st.rejected) == (0, 40, 0)
    c = site.sync.counters
    assert c.stored == 40 and c.published >= 40 and c.connects == 1
    assert site.sync.last_sync is not None
    assert len(times) == 40 and all(s <= r for _, s, r in times)


def test_window_bounds_inflight_and_unanswered_batches_are_resent(lab: Lab,
                                                                   tmp_path: Path) -> None:
    site = Site(lab, tmp_path, inflight=3, ack_timeout_s=0.5)
    site.add(10)
    answering = False
    m = site.matcher(policy=lambda g, s: "stored" if answering else None)

    async def body() -> None:
        nonlocal answering
        await until(lambda: len(m.arrivals) >= 6)
        # without answers the gateway never had more than its window out, and what it
        # sends again is the oldest first
        assert {s for _, s in m.arrivals} == {1, 2, 3} and len(m.arrivals) >= 6
        assert site.sync.inflight <= 3 and site.outbox.status().depth == 10
        answering = True
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, body=body, matcher=m))
    assert sorted(m.seqs("gw-a")) == list(range(1, 11)) and not m.conflicts


def test_duplicate_and_rejected_answers(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path)
    site.add(6)
    m = site.matcher(policy=lambda g, s: {2: "duplicate", 4: "rejected"}.get(s, "stored"))

    async def body() -> None:
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, body=body, matcher=m))
    st = site.outbox.status()
    assert (st.acked, st.rejected) == (5, 1)
    c = site.sync.counters
    assert (c.stored, c.duplicate, c.rejected) == (4, 1, 1)


def test_malformed_and_foreign_acks_are_ignored(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path)
    seqs = site.add(3)

    async def body() -> None:
        await until(lambda: site.sync.connected)
        async with MqttClient(lab.matcher_mqtt["matcher"], "m-acker") as c:
            ack = topics.ack("hn", "cho-a", "gw-a")
            for bad in (b"not json", b"[]", b'{"seq": "1", "status": "stored"}',
                        b'{"seq": 1, "status": "maybe"}'):
                await c.publish(ack, bad)
            await until(lambda: site.sync.counters.bad_acks == 4)
            assert site.outbox.status().depth == 3
            await c.publish(ack, ack_payload(seqs[1], "stored", matcher_time=5.0))
            await until(lambda: site.outbox.status().depth == 2)

    asyncio.run(running(site.sync.run, body=body))
    assert [i.seq for i in site.outbox.pending(5)] == [seqs[0], seqs[2]]


def test_status_online_offline_will_and_health(lab: Lab, tmp_path: Path) -> None:
    calls = 0

    def health() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"uptime_s": calls, "outbox": {"depth": site.outbox.status().depth},
                "clock": {"uncertainty_s": float("inf")}}

    site = Site(lab, tmp_path, health=health, health_interval_s=0.1)

    async def body() -> None:
        async with Watcher(lab) as w:
            await until(lambda: w.states()[-1:] == ["online"])
            await until(lambda: sum(leaf == "health" for leaf, _ in w.got) >= 3)
            h = [d for leaf, d in w.got if leaf == "health"][-1]
            assert h["outbox"] == {"depth": 0} and h["sync"]["connected"] is True
            assert h["clock"] == {"uncertainty_s": None}  # strict JSON, no Infinity
            # cut the TCP connection under the client: the broker publishes the will
            client = site.sync._client
            assert client is not None
            sock = client._paho.socket()
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)
            await until(lambda: "offline" in w.states())
            will = next(d for leaf, d in w.got if leaf == "status" and d["state"] == "offline")
            assert will["reason"] == "connection lost" and will["gateway"] == "gw-a"
            await until(lambda: w.states()[-1] == "online" and site.sync.connected)
            assert site.sync.counters.disconnects == 1 and site.sync.counters.connects == 2

    asyncio.run(running(site.sync.run, body=body))

    async def retained() -> list[str]:
        async with Watcher(lab) as w:
            await until(lambda: bool(w.states()))
            return w.states()

    # the clean stop left a retained offline status with its reason
    assert asyncio.run(retained()) == ["offline"]


def test_reconnects_with_backoff_when_the_broker_is_away(lab: Lab, tmp_path: Path) -> None:
    lab.broker.kill()
    site = Site(lab, tmp_path, ack_timeout_s=1)  # the matcher may subscribe after the first sends
    site.add(5)
    m = site.matcher()

    async def body() -> None:
        await until(lambda: site.sync.counters.connect_failures >= 3)
        assert not site.sync.connected and "MqttConnectError" in (site.sync.last_error or "")
        await asyncio.to_thread(lab.restart_broker)
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(m.run, site.sync.run, body=body))
    assert m.seqs("gw-a") == [1, 2, 3, 4, 5]


def test_backoff_grows_with_jitter_and_is_capped(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path)
    cfg = site.sync.cfg
    for attempt in range(12):
        cap = min(cfg.backoff_max_s, cfg.backoff_min_s * 2 ** attempt)
        delays = {site.sync._backoff(attempt) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 40  # jittered, not one value for every gateway


def test_drain_yields_to_capture_on_the_same_loop(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path, inflight=50)
    site.add(120, size=10)
    m = site.matcher()
    ticks: list[int] = []

    async def capture(stop: asyncio.Event) -> None:
        # stands in for the BLE loop: it must get a turn between any two batch publishes
        while not stop.is_set():
            ticks.append(site.sync.counters.sent)
            await asyncio.sleep(0)

    async def body() -> None:
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, capture, body=body, matcher=m))
    assert ticks[-1] == site.sync.counters.sent >= 120
    steps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(steps) == 1  # never two publishes without the loop running capture between


def test_live_batches_appended_during_sync_are_delivered(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path)
    site.add(20)
    m = site.matcher()

    async def body() -> None:
        for _ in range(10):
            site.add(1)
            site.sync.wake()
            await asyncio.sleep(0.01)
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, body=body, matcher=m))
    assert m.seqs("gw-a") == list(range(1, 31)) and not m.conflicts


@pytest.mark.parametrize("bad", ["cert", "ca"])
def test_bad_tls_files_are_retried_not_fatal(lab: Lab, tmp_path: Path, bad: str) -> None:
    site = Site(lab, tmp_path)
    missing = tmp_path / "nope.pem"
    field = {"cert": "cert_file", "ca": "ca_file"}[bad]
    site.sync.cfg = msgspec.structs.replace(site.sync.cfg, **{field: missing})

    async def body() -> None:
        await until(lambda: site.sync.counters.connect_failures >= 2)

    asyncio.run(running(site.sync.run, body=body))
    assert not site.sync.connected and site.sync.last_error


def test_disk_full_degrades_capture_and_sync_frees_room(lab: Lab, tmp_path: Path) -> None:
    site = Site(lab, tmp_path, max_file_bytes=160 * 1024, ack_timeout_s=0.5)
    answering = False
    m = site.matcher(policy=lambda g, s: "stored" if answering else None)
    stored: list[int] = []
    lost = 0

    async def body() -> None:
        nonlocal answering, lost
        for _ in range(60):  # capture keeps flushing while the matcher is silent
            try:
                stored.extend(site.add(1, size=400))
            except OutboxFullError:
                lost += 1
            await asyncio.sleep(0)
        st = site.outbox.status()
        assert lost > 0 and st.full and "full" in (st.last_error or "")
        assert site.sync.connected  # nothing crashed
        answering = True  # the link is back: acks free the room
        await until(lambda: site.outbox.status().depth == 0)
        stored.extend(site.add(3, size=400))
        assert not site.outbox.status().full
        await until(lambda: site.outbox.status().depth == 0)

    asyncio.run(running(site.sync.run, body=body, matcher=m))
    assert sorted(set(m.seqs("gw-a"))) == stored == list(range(1, len(stored) + 1))
    assert site.outbox.integrity_check() == "ok"


def test_send_loop_wait_is_cancelled_even_when_woken_at_the_same_moment() -> None:
    # asyncio.wait_for (before 3.12) swallows a cancel that arrives as the event is set; the
    # send loop, woken for every appended batch, then outlived its session
    from mqtt.sync import _wait_event

    async def go() -> bool:
        ev = asyncio.Event()
        task = asyncio.create_task(_wait_event(ev, 10))
        await asyncio.sleep(0)  # the waiter is waiting
        ev.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert all(asyncio.run(go()) for _ in range(20))
