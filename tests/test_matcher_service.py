"""The matcher service against a real Mosquitto (TLS, client certificates, ACLs)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bzgw.lab import Lab
from bzgw.labrecords import checkin, sighting, temp_store
from contract.batch import Batch
from contract.sealing import Sealer, generate_matcher_keypair
from core.clock import ClockEpoch, ClockSource
from matcher.service import MatcherService
from matcher.store import Store, open_store
from mqtt import topics
from mqtt.client import MqttClient

T0 = 1_700_006_400.0
CLOCK = ClockEpoch("boot-1", 0.0, True, ClockSource.NTP, 0.0)


class Gateway:
    """gw-* side: seals, publishes to its batch topic, collects its acks."""

    def __init__(self, lab: Lab, gid: str, matcher_public: bytes) -> None:
        lg = lab.gateways[gid]
        self.entry = lg.entry
        self.sealer = Sealer(gateway_id=gid, matcher_public_key=matcher_public,
                             signing_key=lg.signing_key)
        self.client = MqttClient(lg.mqtt, f"{gid}-test")
        self.acks: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        p = (self.entry.province, self.entry.venue, gid)
        self.batch_topic, self.ack_topic = topics.batch(*p), topics.ack(*p)
        self.status_topic, self.health_topic = topics.status(*p), topics.health(*p)

    async def __aenter__(self) -> Gateway:
        await self.client.connect()
        await self.client.subscribe(self.ack_topic)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.client.close()

    async def _read(self) -> None:
        async for m in self.client.messages():
            self.acks.append(json.loads(m.payload))

    def seal(self, seq: int) -> bytes:
        b = Batch(sightings=[sighting(os.urandom(12), T0 + seq, clock=CLOCK)],
                  checkins=[checkin("001099012345", T0 + seq, clock=CLOCK)])
        return self.sealer.seal(b, seq=seq, created_at=T0 + seq, clock=CLOCK)

    async def send(self, wire: bytes) -> None:
        await self.client.publish(self.batch_topic, wire, qos=1)


async def until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached")


async def with_services(services: list[MatcherService],
                        body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    try:
        await until(lambda: all(s.subscribed.is_set() for s in services))
        await body()
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _service(lab: Lab, store: Store, private: bytes, name: str = "matcher",
             **kw: Any) -> MatcherService:
    return MatcherService(store=store, registry=lab.registry, private_key=private,
                          mqtt=lab.matcher_mqtt[name], client_id=f"{name}-test", **kw)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_batches_are_stored_acked_and_deduplicated(lab: Lab, tmp_path: Path, backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    private, public = generate_matcher_keypair()
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    with temp_store(backend, tmp_path, url) as store:
        svc = _service(lab, store, private)

        async def body() -> None:
            async with Gateway(lab, "gw-a", public) as gw:
                wires = [gw.seal(seq) for seq in (1, 2, 3)]
                for w in wires:
                    await gw.send(w)
                await until(lambda: len(gw.acks) == 3)
                await gw.send(wires[1])  # redelivery, e.g. the first ack was lost
                await until(lambda: len(gw.acks) == 4)
                assert sorted((a["seq"], a["status"]) for a in gw.acks) == [
                    (1, "stored"), (2, "duplicate"), (2, "stored"), (3, "stored")]
                assert all(a["reason"] is None and a["matcher_time"] > T0 for a in gw.acks)

        asyncio.run(with_services([svc], body))
        counts = store.row_counts()
        assert (counts["batches"], counts["sightings"], counts["checkins"]) == (3, 3, 3)
        assert store.counter_totals() == {"duplicate": 1, "stored": 3}
        assert svc.stats.acks == 4


def test_two_matchers_in_the_share_group_split_the_batches(lab: Lab, tmp_path: Path) -> None:
    private, public = generate_matcher_keypair()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with open_store(url) as s1, open_store(url) as s2:  # one database, two connections
        one, two = _service(lab, s1, private), _service(lab, s2, private, "matcher-2")

        async def body() -> None:
            async with Gateway(lab, "gw-a", public) as a, Gateway(lab, "gw-b", public) as b:
                for seq in range(1, 16):
                    await a.send(a.seal(seq))
                    await b.send(b.seal(seq))
                await until(lambda: len(a.acks) + len(b.acks) == 30)
                assert {x["status"] for x in a.acks + b.acks} == {"stored"}

        asyncio.run(with_services([one, two], body))
        n1, n2 = one.stats.batches.get("stored", 0), two.stats.batches.get("stored", 0)
        assert n1 + n2 == 30 and n1 > 0 and n2 > 0, (n1, n2)
        assert s1.row_counts()["batches"] == 30
        assert {g.gateway_id: g.last_seq for g in s1.gateways()} == {"gw-a": 15, "gw-b": 15}


def test_bad_batches_are_counted_and_only_the_batch_faults_acked(lab: Lab,
                                                                tmp_path: Path) -> None:
    private, public = generate_matcher_keypair()
    with temp_store("sqlite", tmp_path) as store:
        svc = _service(lab, store, private, max_wire=2048)

        async def body() -> None:
            async with Gateway(lab, "gw-a", public) as gw:
                wrong = Sealer(gateway_id="gw-a", matcher_public_key=public,
                               signing_key=lab.gateways["gw-b"].signing_key)
                b = Batch(sightings=[sighting(os.urandom(12), T0)])
                await gw.send(wrong.seal(b, seq=1, created_at=T0, clock=CLOCK))
                big = Batch(sightings=[sighting(os.urandom(12), T0 + i) for i in range(200)])
                await gw.send(gw.sealer.seal(big, seq=2, created_at=T0, clock=CLOCK))
                await gw.send(gw.seal(3))
                await until(lambda: len(gw.acks) == 2)
                assert sorted((a["seq"], a["status"], a["reason"]) for a in gw.acks) == [
                    (2, "rejected", "oversize"), (3, "stored", None)]

        asyncio.run(with_services([svc], body))
        assert store.counter_totals() == {"bad_signature": 1, "oversize": 1, "stored": 1}
        assert svc.stats.batches == {"bad_signature": 1, "oversize": 1, "stored": 1}


def test_status_is_stored_and_bad_health_counted(lab: Lab, tmp_path: Path) -> None:
    private, public = generate_matcher_keypair()
    with temp_store("sqlite", tmp_path) as store:
        svc = _service(lab, store, private)

        async def body() -> None:
            async with Gateway(lab, "gw-a", public) as gw:
                await gw.client.publish(gw.status_topic, b"online", retain=True)
                await gw.client.publish(gw.health_topic, b"{not json")
                await until(lambda: svc.stats.reports == 2)

        asyncio.run(with_services([svc], body))
        [g] = store.gateways()
        assert (g.gateway_id, g.status) == ("gw-a", "online")
        assert store.counter_totals() == {"bad_health": 1}


def test_service_reconnects_after_the_broker_restarts(lab: Lab, tmp_path: Path) -> None:
    private, public = generate_matcher_keypair()
    with temp_store("sqlite", tmp_path) as store:
        svc = _service(lab, store, private)

        async def body() -> None:
            async with Gateway(lab, "gw-a", public) as gw:
                await gw.send(gw.seal(1))
                await until(lambda: len(gw.acks) == 1)
            lab.broker.kill()
            await until(lambda: not svc.subscribed.is_set())
            await asyncio.to_thread(lab.restart_broker)
            await until(lambda: svc.subscribed.is_set(), timeout=30)
            async with Gateway(lab, "gw-a", public) as gw:
                await gw.send(gw.seal(2))
                await until(lambda: len(gw.acks) == 1)
                assert gw.acks[0]["seq"] == 2

        asyncio.run(with_services([svc], body))
        assert store.row_counts()["batches"] == 2
        assert svc.stats.sessions >= 2
