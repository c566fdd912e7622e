"""`bzgw run` as a real process: simulator → seal → outbox → Mosquitto (mTLS) → matcher."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from bzgw.cli import EXIT_CONFIG, cli
from bzgw.lab import Lab, matcher_keys, write_gateway_config
from gateway.outbox import Outbox
from matcher.service import MatcherService
from matcher.store import open_store

BZGW = [sys.executable, "-m", "bzgw.cli"]


def _serve_until(lab: Lab, store_url: str, done: Callable[[], bool], timeout: float) -> None:
    from contract.sealing import load_matcher_private_key

    priv, _ = matcher_keys(lab)

    async def main() -> None:
        stop = asyncio.Event()
        svc = MatcherService(store=open_store(store_url), registry=lab.registry,
                             private_key=load_matcher_private_key(priv),
                             mqtt=lab.matcher_mqtt["matcher"], client_id="matcher")
        task = asyncio.create_task(svc.run(stop))
        deadline = time.monotonic() + timeout
        try:
            # Polling on purpose: the condition is a database query, not an event.
            while not done() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task

    asyncio.run(main())


def test_daemon_captures_seals_and_delivers(lab: Lab, tmp_path: Path) -> None:
    cfg = write_gateway_config(lab, "gw-a", tmp_path / "gw")
    check = CliRunner().invoke(cli, ["config", "check", str(cfg)])
    assert check.exit_code == 0, check.output
    proc = subprocess.Popen([*BZGW, "run", "--config", str(cfg)], stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    db = tmp_path / "matcher.db"
    store = open_store(f"sqlite:///{db}")
    try:
        def delivered() -> bool:
            kinds = store.db.scalar("SELECT COUNT(DISTINCT kind) FROM sightings")
            return kinds >= 2 and not Outbox(
                tmp_path / "gw/outbox.db", max_bytes=1 << 30, max_age_s=1e9).status().depth

        _serve_until(lab, f"sqlite:///{db}", delivered, timeout=60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    kinds = {r[0] for r in store.db.execute("SELECT DISTINCT kind FROM sightings")}
    assert kinds == {"bluezone", "gaen"}
    # The simulated period is replayed once: no slot of any ID is stored twice.
    dup = store.db.scalar("SELECT COUNT(*) FROM (SELECT ident, slot_start FROM sightings "
                          "GROUP BY ident, slot_start HAVING COUNT(*) > 1) d")
    assert dup == 0
    # Nothing readable on the gateway's disk: the outbox holds only sealed bytes.
    raw = (tmp_path / "gw/outbox.db").read_bytes()
    for (ident,) in store.db.execute("SELECT ident FROM sightings LIMIT 20"):
        assert bytes(ident) not in raw


def test_run_refuses_config_without_gateway_sections(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("ble:\n  source: simulator\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(f)])
    assert res.exit_code == EXIT_CONFIG
    assert "needs the section(s): gateway, sealing, mqtt" in res.output


def test_run_without_camera_leaves_heavy_stages_unimported(lab: Lab, tmp_path: Path) -> None:
    # numpy (QR frames, the matcher's large batches), gpiozero (staff feedback) and the X.509
    # enrolment code are ~19 MB of resident memory a gateway without a camera never uses;
    # pydantic (~9 MB) is no longer a dependency and must not come back through one;
    # aiohttp (~10 MB) is the matcher's: the status page runs on h11
    from bzgw.lab import free_port

    cfg = write_gateway_config(lab, "gw-a", tmp_path / "gw",
                               status={"enabled": True, "listen": "127.0.0.1",
                                       "port": free_port()})
    heavy = ("numpy", "pandas", "gpiozero", "gateway.enroll", "cryptography.x509", "qr.sources",
             "pydantic", "pydantic_core", "aiohttp", "yarl", "multidict")
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
            f"sys.argv = ['bzgw', '-v', 'run', '--config', {str(cfg)!r}]\n"
            "from bzgw.cli import main\nmain()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for every stage, status page included, to be up
            if b"status page on" in line:
                break
        time.sleep(2)  # a few seconds of capture and sealing
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip().splitlines()[-1] == "[]"
