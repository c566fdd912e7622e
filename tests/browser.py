"""Helpers for the page tests: Debian's Chromium driven by Playwright, loops in threads, and
live sites (real sealed batches, real ingest) for the dashboard.

Playwright's sync API must not share a thread with a running asyncio loop, so every server
under test runs its own loop in a background thread (:class:`LoopThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from needs import missing

from ble.aggregator import WindowAggregator
from ble.simulator import Crowd
from bzgw.config import Config
from bzgw.config import parse as parse_config
from bzgw.lab import Lab, gateway_identity_files, lab_opening
from contract import sealing
from contract.custody import IdentitySealer
from contract.records import AdoptionCount
from contract.registry import GatewayEntry, Registry
from contract.sealing import open_batch
from core.clock import Clock, ClockEpoch, ClockSource, ReplayClock
from core.settings import to_plain
from gateway import httpserver
from gateway.health import Component, build_health
from gateway.outbox import Outbox, OutboxStatus
from gateway.pipeline import CapturePipeline, PipelineStats
from matcher.custody import Window
from matcher.dashboard_queries import consume_message
from matcher.f0 import F0, F0Case
from matcher.ingest import Ingestor
from matcher.match import match_f0
from matcher.report import write_reports
from matcher.store import Store
from mqtt import topics
from qr.recognizers import Recognizer
from qr.records import ScannedCheckIn

T = TypeVar("T")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    """``$BZGW_CHROMIUM``, Debian's ``/usr/bin/chromium``, or ``chromium`` on the PATH."""
    for candidate in (os.environ.get("BZGW_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def chromium_page(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium page; skips the test where no browser can run."""
    exe = find_chromium()
    if exe is None:
        missing("no Chromium found (install Debian's chromium or set BZGW_CHROMIUM)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS, headless=True)
        except Error as err:
            missing(f"Chromium at {exe} does not start: {err.message.splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` executes in it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine in the loop and return its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Call a plain function in the loop's thread (to touch state the loop owns)."""
        async def wrap() -> T:
            return fn()

        return self.run(wrap(), timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class ServedApp:
    """An application served on 127.0.0.1 from a :class:`LoopThread`: the matcher's dashboard
    (aiohttp) or the gateway's status page (:mod:`gateway.httpserver`)."""

    def __init__(self, make_app: Callable[[], web.Application | httpserver.App]) -> None:
        self.thread = LoopThread()
        self._cleanup: Callable[[], Awaitable[None]] | None = None

        async def start() -> int:
            app = make_app()
            if isinstance(app, httpserver.App):
                server = await httpserver.serve(app, host="127.0.0.1", port=0)
                self._cleanup = server.close
                return server.port
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._cleanup = runner.cleanup
            return int(runner.addresses[0][1])

        self.port = self.thread.run(start())
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        """Stop serving."""
        if self._cleanup is not None:
            self.thread.run(self._cleanup())
        self.thread.close()

    def __enter__(self) -> ServedApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- live sites the pages are tested against --------------------------------------------------

CCCD = ("001090012345|123456789|Nguyễn Văn An|01011990|Nam|"
        "Số 1 Hàng Ngang, Hoàn Kiếm, Hà Nội|01012021")
SITE_GATEWAYS = (
    # id, province, district, venue, name, (bluezone, en, iphones, background)
    ("gw-a", "hn", "hoan-kiem", "cho-dong-xuan", "Chợ Đồng Xuân", (30, 4, 4, 12)),
    ("gw-b", "hn", "dong-da", "ben-xe-kim-ma", "Bến xe Kim Mã", (5, 10, 1, 25)),
    ("gw-c", "hcm", "quan-1", "cho-ben-thanh", "Chợ Bến Thành", (14, 12, 3, 10)),
)


@dataclass
class Site:
    """A matcher store filled through the real path: simulated crowds → aggregator → sealer →
    outbox → ingest (verify, open, store); status and health through the topic consumer."""

    store: Store
    registry: Registry
    now: float
    counts: dict[str, list[AdoptionCount]]  # by venue code, as the gateways sealed them
    reports: Path
    subject: str


def build_site(tmp: Path, store: Store, *, now: float, hours: float = 6.0) -> Site:
    """Fill ``store`` with three gateways' sealed batches, status, health and a match report."""
    priv, pub = sealing.generate_matcher_keypair()
    keys = {g[0]: Ed25519PrivateKey.generate() for g in SITE_GATEWAYS}
    registry = Registry(gateways={
        gid: GatewayEntry(id=gid, province=p, district=d, venue=v, venue_name=name,
                          signing_key=sealing.signing_public_hex(keys[gid]))
        for gid, p, d, v, name, _ in SITE_GATEWAYS})
    ingest = Ingestor(store, registry, priv)
    start = now - (hours + 2) * 3600
    counts: dict[str, list[AdoptionCount]] = {}
    subject = ""
    for i, (gid, p, _d, venue, _name, (bz, en, ios, bg)) in enumerate(SITE_GATEWAYS):
        crowd = Crowd(seed=11 + i, start=start, duration_s=hours * 3600)
        crowd.add_bluezone_phones(bz, [venue])
        crowd.add_en_phones(en, [venue])
        crowd.add_iphones(ios, [venue])
        crowd.add_background(bg, [venue])
        clock = ReplayClock(start)
        outbox = Outbox(tmp / gid / "outbox.db", max_bytes=64 << 20, max_age_s=86400 * 21,
                        clock=clock)
        pipe = CapturePipeline(
            aggregator=WindowAggregator(count_window_s=900),
            sealer=sealing.Sealer(gateway_id=gid, matcher_public_key=pub,
                                  signing_key=keys[gid]),
            outbox=outbox, clock=clock, flush_interval_s=900,
            identities=IdentitySealer.from_files(*gateway_identity_files(tmp, tmp / gid)))
        for adv in crowd.adverts(venue, rate_hz=0.1):
            clock.advance(adv.ts)
            pipe.on_advert(adv)
            if gid == "gw-a" and not subject and adv.ts > start + 3600:
                got = Recognizer().recognize(CCCD, ts=adv.ts, clock=clock.epoch())
                assert isinstance(got, ScannedCheckIn), got
                subject = got.subject
                pipe.on_checkin(got)
        pipe.flush(final=True)
        counts[venue] = []
        for item in outbox.pending(100000):
            _, batch = open_batch(item.data, registry=registry, private_key=priv)
            counts[venue] += batch.counts
            out = ingest.handle_batch(topics.batch(p, venue, gid), item.data, now=now - 600)
            assert out.status == "stored", out
            outbox.ack(item.seq)
        outbox.close()
    _reports(store, registry, now)
    reports = tmp / "reports"
    opening = lab_opening(tmp, [Window("*", now - 2 * 86400, now + 86400)])
    result = match_f0(store, F0(source="test", format="identity", signer="test", cases=[
        F0Case(label="F0-1", kind="identity", subjects=(subject,))]), opening=opening)
    write_reports(result, reports / "case-1")
    return Site(store=store, registry=registry, now=now, counts=counts, reports=reports,
                subject=subject)


def site_health(gid: str, now: float, **kw: Any) -> dict[str, Any]:
    """A health document of one site gateway, as its sync publishes it."""
    base: dict[str, Any] = {"radio": Component("scanning"), "camera": Component("capturing"),
                            "clock": ClockEpoch("b", 0.0, True, ClockSource.NTP, 0.0)}
    base.update(kw)
    doc = build_health(gateway_id=gid, now=now, uptime_s=7200,
                       outbox=OutboxStatus(depth=3, bytes=4096, oldest_created_at=now - 1800,
                                           dropped_batches=0, dropped_bytes=0, rejected=0,
                                           next_seq=40, full=False, last_error=None),
                       outbox_max_bytes=64 << 20, outbox_dir=Path("/"),
                       stats=PipelineStats(adverts=1000, checkins=2, batches=37),
                       connected=True, last_sync=now - 60, **base)
    return {**doc, "sync": {"published": 37, "connected": True}}


def _reports(store: Store, registry: Registry, now: float) -> None:
    def send(gid: str, leaf: str, body: dict[str, Any], at: float) -> None:
        g = registry.gateways[gid]
        topic = f"{topics.base(g.province, g.venue, gid)}/{leaf}"
        assert consume_message(store, registry, topic, json.dumps(body).encode(), at=at) == leaf

    for gid in ("gw-a", "gw-c"):
        send(gid, "status", {"state": "online", "ts": now - 7200, "gateway": gid}, now - 7200)
    send("gw-b", "status", {"state": "online", "ts": now - 9000, "gateway": "gw-b"}, now - 9000)
    send("gw-a", "health", site_health("gw-a", now - 30), now - 30)
    send("gw-b", "health", site_health("gw-b", now - 2500), now - 2500)
    send("gw-c", "health", site_health(
        "gw-c", now - 20, camera=Component("fault", "no /dev/video0"),
        clock=ClockEpoch("b", 0.0, False, ClockSource.NONE, float("inf"))), now - 20)
    # gw-b's session died: the broker publishes its last will
    send("gw-b", "status", {"state": "offline", "ts": now - 9000, "gateway": "gw-b",
                            "reason": "connection lost"}, now - 2400)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(tmp: Path, lab: Lab, *, status_port: int, gateway: str = "gw-a",
                   simulate_from: float | None = None, refresh_s: float = 0.3,
                   staff_pin_hash: str = "") -> Config:
    """A full ``bzgw run`` config for a lab gateway: fresh keys (the matcher's private key is
    left in ``tmp / "matcher.key"``), outbox under ``tmp``, status page on ``status_port``,
    and (with ``simulate_from``) the crowd simulator as the radio."""
    lg = lab.gateways[gateway]
    tmp.mkdir(parents=True, exist_ok=True)
    priv, pub = sealing.generate_matcher_keypair()
    sealing.save_matcher_keypair(priv, pub, tmp / "matcher.key", tmp / "matcher.pub")
    sealing.save_signing_key(tmp / "device.pem", lg.signing_key)
    ble: dict[str, Any] = {"enabled": False}
    if simulate_from is not None:
        ble = {"enabled": True, "source": "simulator", "simulator": {
            "seed": 5, "venue": lg.entry.venue, "start": simulate_from, "duration_s": 600,
            "bluezone_phones": 30, "en_phones": 8, "iphones": 4, "background": 12,
            "rate_hz": 1.0, "realtime": True}}
    return parse_config({
        "gateway": {"id": gateway, "province": lg.entry.province, "venue": lg.entry.venue,
                    "venue_name": lg.entry.venue_name},
        "sealing": {"matcher_public_key": str(tmp / "matcher.pub"),
                    "device_key": str(tmp / "device.pem"),
                    **dict(zip(("identity_keys", "blind_key"),
                               map(str, gateway_identity_files(lab.root, tmp)), strict=True))},
        "outbox": {"path": str(tmp / "outbox.db"), "flush_interval_s": 2},
        "mqtt": to_plain(lg.mqtt),
        "status": {"listen": "127.0.0.1", "port": status_port, "health_interval_s": 1,
                   "refresh_s": refresh_s, "staff_pin_hash": staff_pin_hash},
        "ble": ble})


class _RunningService:
    """A service's ``run(stop)`` coroutine in its own :class:`LoopThread`."""

    def __init__(self) -> None:
        self.thread = LoopThread()

    def _start(self, run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self._stop = self.thread.call(asyncio.Event)
        self._run = asyncio.run_coroutine_threadsafe(run(self._stop), self.thread.loop)

    def close(self) -> None:
        """Stop the service and its loop."""
        self.thread.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._run.result(30)
        finally:
            self.thread.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunningGateway(_RunningService):
    """``Gateway(cfg).run(stop)`` in a :class:`LoopThread`, as ``bzgw run`` runs it.

    ``close()`` stops the daemon (it flushes and closes the status page) and its loop.
    """

    def __init__(self, cfg: Config, *, clock: Clock | None = None) -> None:
        from gateway.daemon import Gateway

        super().__init__()
        self.gateway = self.thread.call(lambda: Gateway(cfg, clock=clock))
        self._start(self.gateway.run)


class RunningMatcher(_RunningService):
    """``MatcherService.run`` (ingest, acks, status and health) in a :class:`LoopThread`."""

    def __init__(self, lab: Lab, private_key: bytes, store: Store) -> None:
        from matcher.service import MatcherService

        super().__init__()
        self.store = store
        self.service = self.thread.call(lambda: MatcherService(
            store=store, registry=lab.registry, private_key=private_key,
            mqtt=lab.matcher_mqtt["matcher"], client_id="matcher"))
        self._start(self.service.run)
