"""Faults of the system around the gateways: the database server and the broker go away
mid-ingest, the matcher's disk fills, the link is down for a day, power is cut.

Each test keeps real gateways syncing (outbox, sealer, ``GatewaySync``) to the real matcher
service while it breaks something, then checks that every batch the outboxes accepted is
stored exactly once and that no batch was acked without being committed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from faultkit import Fleet, check_exactly_once
from needs import missing
from pgcluster import pg_bin, private_postgres

from matcher.store import open_store
from mqtt import topics
from mqtt.client import MqttClient
from mqtt.lab import Lab


async def _until(cond: object, timeout: float = 30.0) -> None:
    assert callable(cond)
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not reached")


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_restart_and_outage_during_ingest(lab: Lab, tmp_path: Path) -> None:
    if pg_bin() is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    fleet = Fleet(lab, tmp_path)
    with private_postgres() as pg:
        store = open_store(pg.url, schema_name="faults")
        svc = fleet.service(store)
        seen: dict[str, int] = {}

        async def body() -> None:
            stored = lambda: svc.stats.batches.get("stored", 0)  # noqa: E731
            await _until(lambda: stored() >= 30)
            # 1. a clean restart (package upgrade, config change)
            await asyncio.to_thread(pg.restart, "fast")
            n = stored()
            await _until(lambda: stored() >= n + 30)
            # 2. the server crashes (no checkpoint) and stays down for a while: batches keep
            # arriving, nothing can be committed, so nothing may be acked
            await asyncio.to_thread(pg.stop, "immediate")
            depth0 = fleet.depth()
            await asyncio.sleep(4)
            seen["errors"] = svc.stats.batches.get("error", 0)
            seen["grew"] = fleet.depth() - depth0
            await asyncio.to_thread(pg.start)  # crash recovery on start
            n = stored()
            await _until(lambda: stored() >= n + 30, timeout=60)
            await fleet.drained()

        asyncio.run(fleet.run(body, svc))
        totals = check_exactly_once(fleet, store)
        print(f"stored {len(fleet.accepted())}, duplicates {totals.get('duplicate', 0)}, "
              f"store errors while down {seen['errors']}, reconnects {store.db.reconnects}")
        # the outage really hit ingest: batches failed to store (unacked), outboxes grew
        assert seen["errors"] > 0 and seen["grew"] > 0
        assert store.db.reconnects >= 2  # one per server start after a lost connection
        store.close()
    fleet.close()


# ---------------------------------------------------------------- Mosquitto


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_restart_mid_stream_with_persistence(lab: Lab, tmp_path: Path) -> None:
    fleet = Fleet(lab, tmp_path)
    with open_store(f"sqlite:///{tmp_path / 'matcher.db'}") as store:
        svc = fleet.service(store)

        async def body() -> None:
            stored = lambda: svc.stats.batches.get("stored", 0)  # noqa: E731
            for how in ("restart", "kill", "restart"):
                n = stored()
                await _until(lambda n=n: stored() >= n + 25)  # type: ignore[misc]
                if how == "kill":
                    lab.broker.kill()  # no chance to save its state
                await asyncio.to_thread(lab.restart_broker)
            n = stored()
            await _until(lambda: stored() >= n + 25)
            await fleet.drained()

        asyncio.run(fleet.run(body, svc))
        totals = check_exactly_once(fleet, store)
        assert svc.stats.sessions >= 4  # it reconnected after each of the three
        print(f"stored {len(fleet.accepted())}, duplicates {totals.get('duplicate', 0)}, "
              f"matcher sessions {svc.stats.sessions}")

    # Persistence: the gateways' retained last status survives a clean broker restart
    # (nobody republishes it: the gateways are stopped).
    lab.restart_broker()

    async def retained() -> dict[str, str]:
        got: dict[str, str] = {}
        async with MqttClient(lab.matcher_mqtt["matcher-2"], "matcher-2-probe") as c:
            await c.subscribe(topics.ALL_STATUS, qos=1)

            async def read() -> None:
                async for m in c.messages():
                    where = topics.parse(m.topic)
                    if m.retain and where is not None:
                        got[where[2]] = json.loads(m.payload)["state"]
                    if len(got) == 2:
                        return

            try:
                await asyncio.wait_for(read(), 10)
            except TimeoutError:
                pass  # the assertion below shows what came
        return got

    assert asyncio.run(retained()) == {"gw-a": "offline", "gw-b": "offline"}
    fleet.close()
