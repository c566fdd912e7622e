"""Faults of the system around the gateways: the database server and the broker go away
mid-ingest, the matcher's disk fills, the link is down for a day, power is cut.

Each test keeps real gateways syncing (outbox, sealer, ``GatewaySync``) to the real matcher
service while it breaks something, then checks that every batch the outboxes accepted is
stored exactly once and that no batch was acked without being committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultkit import Fleet, check_exactly_once, outage
from needs import missing
from pgcluster import pg_bin, private_postgres

from bzgw.lab import Lab
from gateway.outbox import read_status
from matcher.store import open_store
from mqtt import topics
from mqtt.client import MqttClient

ROOT = Path(__file__).resolve().parent.parent


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
def test_postgres_restart_and_stop_during_ingest(lab: Lab, tmp_path: Path) -> None:
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


# ---------------------------------------------------------------- full disks


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only)."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                          str(where)], capture_output=True, text=True, check=False)
    if res.returncode != 0:  # needs root (or CAP_SYS_ADMIN); not one of CI's services
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk`` but ``leave`` bytes; delete it to give the space back."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_matcher_enospc_no_ack_until_space_returns(lab: Lab, tmp_path: Path) -> None:
    fleet = Fleet(lab, tmp_path)
    with small_disk(tmp_path / "mdisk", "32m") as disk:
        store = open_store(f"sqlite:///{disk / 'matcher.db'}")
        filler = fill(disk, 400_000)
        svc = fleet.service(store)
        seen: dict[str, int] = {}

        async def body() -> None:
            stored = lambda: svc.stats.batches.get("stored", 0)  # noqa: E731
            errors = lambda: svc.stats.batches.get("error", 0)  # noqa: E731
            await _until(lambda: errors() > 0, timeout=90)  # the disk is full now
            n, depth = stored(), fleet.depth()
            await asyncio.sleep(3)
            seen["stored_while_full"] = stored() - n
            seen["outbox_growth"] = fleet.depth() - depth
            fleet.producing.clear()  # what the outboxes hold now must fit once space returns
            filler.unlink()  # space returns
            await fleet.drained()

        asyncio.run(fleet.run(body, svc))
        totals = check_exactly_once(fleet, store)
        assert store.db.scalar("PRAGMA integrity_check") == "ok"
        print(f"stored {len(fleet.accepted())}, store errors {svc.stats.batches['error']}, "
              f"stored while full {seen['stored_while_full']}, outbox growth "
              f"{seen['outbox_growth']}, duplicates {totals.get('duplicate', 0)}")
        store.close()
    # while full nothing (or almost nothing: a batch may still fit a freed page) was stored,
    # and as nothing was acked the gateways' outboxes kept it
    assert seen["stored_while_full"] <= 2 and seen["outbox_growth"] > 0
    fleet.close()


def _gateway_config(lab: Lab, root: Path, outbox: Path, port: int) -> Path:
    from crashkit import write_configs

    capture, _, _ = write_configs(lab, root)
    cfg = yaml.safe_load(capture.read_text())
    cfg["outbox"] = {"path": str(outbox), "flush_interval_s": 0.3}
    cfg["status"] = {"enabled": True, "listen": "127.0.0.1", "port": port,
                     "health_interval_s": 0.5, "refresh_s": 1}
    cfg["ble"]["simulator"]["rate_hz"] = 20
    cfg["ble"]["simulator"]["bluezone_phones"] = 200
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except (OSError, ValueError):
        return None


def _poll(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gateway_enospc_degrades_capture_and_says_so(lab: Lab, tmp_path: Path) -> None:
    from mqtt.broker import free_port

    lab.broker.stop()  # nothing drains: the outbox only grows
    port = free_port()
    with small_disk(tmp_path / "gdisk", "3m") as disk:
        cfg = _gateway_config(lab, tmp_path, disk / "outbox.db", port)
        log = (tmp_path / "daemon.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "bzgw.cli", "run", "--config",
                                 str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _poll(lambda: _health(port), 30, "status page up")
            filler = fill(disk, 200_000)

            def full() -> dict[str, Any] | None:
                doc = _health(port)
                return doc if doc and doc["outbox"]["full"] else None

            doc = _poll(full, 120, "outbox full reported")
            assert proc.poll() is None  # still running
            codes = [doc["state"]["code"]] + [a["code"] for a in doc["state"]["also"]]
            assert "outbox_full" in codes and doc["state"]["code"] in ("outbox_full",
                                                                      "radio_fault")
            assert doc["disk"]["fill"] > 0.9
            # capture goes on: records that find no room are counted, not hidden
            lost = _poll(lambda: (d := _health(port)) and d["dropped"]["lost_records"], 30,
                         "lost records counted")
            assert lost > 0
            accepted = read_status(disk / "outbox.db").next_seq - 1
            filler.unlink()  # space returns: appends succeed again, the flag clears
            _poll(lambda: (d := _health(port)) and not d["outbox"]["full"], 60,
                  "outbox no longer full")
            _poll(lambda: read_status(disk / "outbox.db").next_seq - 1 > accepted + 2, 60,
                  "appends resumed")
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            log.close()
        assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        conn = sqlite3.connect(disk / "outbox.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        st = read_status(disk / "outbox.db")
        assert st.depth == st.next_seq - 1  # nothing lost from what was accepted


# ---------------------------------------------------------------- a day offline


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outage_of_24_hours_at_a_busy_venue(lab: Lab, tmp_path: Path) -> None:
    # A batch of 400 IDs a minute for 24 h on a fast clock, the outbox bounded below what
    # that makes: it must stay in its bound, drop oldest first and say so, and drain the
    # rest in order once the broker is back.
    rep = asyncio.run(outage(lab, tmp_path, hours=24, sightings=400, max_bytes=8_000_000))
    print(f"24 h offline: {rep.appended} batches sealed, {rep.dropped} dropped "
          f"({rep.dropped_bytes} bytes), {rep.kept} kept, max outbox {rep.max_seen_bytes} "
          f"bytes (bound {rep.bound}); drained in {rep.drain_s:.1f} s = "
          f"{rep.drain_batches_per_s:.0f} batches/s, {rep.drain_sightings_per_s:.0f} "
          f"sightings/s; {rep.connect_failures} failed connects meanwhile")
    assert rep.appended == 24 * 60
    assert rep.max_seen_bytes <= rep.bound  # never over its bound
    assert rep.dropped > 0 and rep.dropped + rep.kept == rep.appended  # all accounted for
    assert rep.health_dropped == rep.dropped  # reported as dropped in the health document
    assert "offline" in rep.health_codes or "connecting" in rep.health_codes
    assert rep.connect_failures > 0  # the sync kept trying throughout and did not die
    # the oldest went, the newest stayed, and they arrived in order and once each
    assert rep.stored_seqs == list(range(rep.dropped + 1, rep.appended + 1))
