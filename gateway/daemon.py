"""``bzgw run``: the gateway daemon.

Wires the stages in one asyncio loop: BLE source → decoder → aggregator and QR source →
recognizer → check-in filter feed the :class:`CapturePipeline` (seal → outbox); the sync task
drains the outbox to the broker; a ticker flushes, enforces retention and pings the systemd
watchdog only while the pipeline makes progress.

Nothing slow runs on the loop: sealing and outbox commits go to the pipeline's worker thread,
QR decoding and check-in storage to another, retention to a third; a probe measures the
loop's lag (health topic, ``/metrics``) so a stall shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ble.aggregator import WindowAggregator
from ble.records import Advert, Report
from contract.custody import IdentitySealer
from contract.sealing import Sealer, load_matcher_public_key, load_signing_key
from core.clock import Clock, ReplayClock
from core.errors import BzgwError, ConfigError
from gateway.clock import TrackedClock
from gateway.config import GatewayConfig as Config
from gateway.feedback import Feedback, FeedbackEvents
from gateway.health import Component, LinkWatch, PhonesNow, build_health
from gateway.looplag import LoopLag
from gateway.notify import Notifier
from gateway.outbox import Outbox
from gateway.pipeline import CapturePipeline

log = logging.getLogger(__name__)


@dataclass
class RadioState:
    """What the BLE side is doing, for health and the status page."""

    state: str = "starting"  # starting | scanning | restarting | fault | off
    detail: str = ""
    restarts: int = 0
    dropped: int = 0  # adverts the source queues overflowed with, over every restart
    malformed: int = 0  # reports refused as malformed, over every restart


@dataclass
class DaemonState:
    """Live state shared with health, metrics and the status page."""

    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    radio: RadioState = field(default_factory=RadioState)
    camera: str = "off"
    last_progress_mono: float = field(default_factory=time.monotonic)


def require(cfg: Config) -> None:
    """Refuse a config that lacks what the daemon needs, naming the missing sections."""
    missing = [name for name in ("gateway", "sealing", "mqtt") if getattr(cfg, name) is None]
    if missing:
        raise ConfigError([("", f"`bzgw run` needs the section(s): {', '.join(missing)}")])
    if (cfg.qr.capturing and cfg.sealing is not None
            and cfg.sealing.identity_keys is None):
        raise ConfigError([("", "sealing -> identity_keys: QR check-ins need the custodians' "
                                "identity keys and a blind key (a person's identity is never "
                                "stored unsealed)")])


class Gateway:
    """The running gateway. ``await Gateway(cfg).run(stop)`` until ``stop`` is set."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None,
                 notifier: Notifier | None = None) -> None:
        require(cfg)
        assert cfg.gateway is not None and cfg.sealing is not None and cfg.mqtt is not None
        self.cfg = cfg
        self.clock: Clock = clock or default_clock(cfg)
        self.notifier = notifier or Notifier.from_env()
        self.state = DaemonState()
        self.outbox = Outbox(cfg.outbox.path, max_bytes=cfg.outbox.max_bytes,
                             max_age_s=cfg.outbox.max_age_days * 86400, clock=self.clock)
        sealer = Sealer(gateway_id=cfg.gateway.id,
                        matcher_public_key=load_matcher_public_key(cfg.sealing.matcher_public_key),
                        signing_key=load_signing_key(cfg.sealing.device_key),
                        suite=cfg.sealing.suite)
        # the live phone count rides on the aggregator's per-address cache: it hears of an
        # address on the slow path only (new payload, or every 10 s), never per repeat; it
        # keeps an address as long as the aggregator does (its adoption window)
        self.phones = PhonesNow(address_cache_s=cfg.ble.count_window_s)
        aggregator = WindowAggregator(cfg.ble.proximity, max_ids=cfg.ble.max_ids_per_window,
                                      count_window_s=cfg.ble.count_window_s,
                                      watcher=self.phones.seen)
        identities = None
        if cfg.sealing.identity_keys is not None and cfg.sealing.blind_key is not None:
            identities = IdentitySealer.from_files(cfg.sealing.identity_keys,
                                                   cfg.sealing.blind_key)
        self.pipeline = CapturePipeline(aggregator=aggregator, sealer=sealer, outbox=self.outbox,
                                        clock=self.clock,
                                        flush_interval_s=cfg.outbox.flush_interval_s,
                                        identities=identities,
                                        background=True)
        self.sync: Any = None
        self.link = LinkWatch(self.state.started_at)
        self.feedback_events = FeedbackEvents()  # staff feedback shown on the status page
        # LED and buzzer answer check-ins: without a QR stage, gpiozero is not even imported
        qr_on = cfg.qr.capturing
        self.feedback = Feedback.from_config(cfg.qr, clock=self.clock.now,
                                             events=self.feedback_events,
                                             enabled=cfg.qr.feedback and qr_on)
        if not qr_on:
            self.feedback.problem = "no QR stage configured"
        self.loop_lag = LoopLag()
        self._source: Any = None  # the running BLE source (for its drop counters)

    def health(self) -> dict[str, Any]:
        """The health document (also published on the health topic); see gateway.health."""
        assert self.cfg.gateway is not None
        radio = self.state.radio
        return build_health(
            gateway_id=self.cfg.gateway.id, now=self.clock.now(),
            uptime_s=time.monotonic() - self.state.started_mono, outbox=self.outbox.status(),
            outbox_max_bytes=self.cfg.outbox.max_bytes, outbox_dir=self.cfg.outbox.path.parent,
            stats=self.pipeline.stats,
            radio=Component(radio.state, radio.detail, radio.restarts),
            camera=Component(self.state.camera), clock=self.clock.epoch(),
            connected=bool(getattr(self.sync, "connected", False)),
            last_sync=getattr(self.sync, "last_sync", None), link=self.link,
            phones=self.phones, feedback_dropped=self.feedback_events.dropped,
            adverts_dropped=radio.dropped + self._source_count("dropped"),
            reports_malformed=radio.malformed + self._source_count("malformed"),
            loop_lag_ms=self.loop_lag.recent())

    def _source_count(self, key: str) -> int:
        if self._source is None:
            return 0
        try:
            v = self._source.diagnostics().get(key, 0)
        except Exception:  # noqa: BLE001 - diagnostics must never break health
            return 0
        return int(v) if isinstance(v, int) else 0

    async def _ble_loop(self) -> None:
        from ble.sources import open_source

        assert self.cfg.gateway is not None
        source = open_source(self.cfg.ble, self.clock, venue=self.cfg.gateway.venue)
        self._source = source
        self.state.radio.state = "scanning"
        resolver = source.resolver
        self.pipeline.aggregator.resolve = resolver.resolve_raw if resolver else None
        try:
            # the one fast path of every backend: raw report batches into the aggregator
            async for batch in source.batches():
                self._on_reports(batch)
        finally:
            self.pipeline.aggregator.resolve = None
            await source.close()
            # keep the counts of this source across a restart
            self.state.radio.dropped += self._source_count("dropped")
            self.state.radio.malformed += self._source_count("malformed")
            self._source = None
            self.state.radio.state = "off"

    async def _qr_loop(self) -> None:
        from qr.checkin import CheckInPipeline
        from qr.sources import open_source

        frames = open_source(self.cfg.qr, clock=self.clock)
        checkins = CheckInPipeline.from_config(self.cfg.qr, sink=self._on_checkin,
                                               feedback=self.feedback)
        unregister = frames.on_status(self._camera_status)
        try:
            await checkins.run(frames, self.clock)
        finally:
            unregister()
            self.state.camera = "off"

    def _camera_status(self, status: Any) -> None:
        self.state.camera = str(status.state.value)

    def _on_checkin(self, checkin: Any) -> None:
        self.pipeline.on_checkin(checkin)
        self.state.last_progress_mono = time.monotonic()

    def _on_reports(self, batch: list[Report]) -> None:
        self.pipeline.on_reports(batch)
        self.state.last_progress_mono = time.monotonic()

    def _on_advert(self, adv: Advert) -> None:
        """One decoded advert (the demo and tests); the phone count hears of it through
        the aggregator's watcher."""
        self.pipeline.on_advert(adv)
        self.state.last_progress_mono = time.monotonic()

    async def _ticker(self, stop: asyncio.Event) -> None:
        watchdog = self.notifier.watchdog_interval()
        period = min(1.0, watchdog / 2) if watchdog else 1.0
        last_retention = 0.0
        while not stop.is_set():
            self.pipeline.poll_clock()
            now = self.clock.now()
            self.pipeline.tick(now)
            if now - last_retention > 3600:
                last_retention = now
                # a write transaction with an fsync: off the loop
                await asyncio.to_thread(self._retention)
            # Ping only while the pipeline moves: a stalled loop makes systemd restart us.
            if not self.stalled():
                self.notifier.watchdog()
            st = self.outbox.status()
            link = "online" if getattr(self.sync, "connected", False) else "offline"
            self.notifier.status(f"radio {self.state.radio.state}, outbox {st.depth} batches, "
                                 f"{link}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    def _retention(self) -> None:
        try:
            self.outbox.enforce_retention(self.clock.now(), self.clock.epoch())
        except BzgwError as err:  # retried next hour; capture goes on
            log.error("retention: %s", err)

    def _ack_time(self, matcher_time: float, sent_mono: float, recv_mono: float) -> None:
        if isinstance(self.clock, TrackedClock):
            self.clock.on_ack_time(matcher_time, sent_mono, recv_mono)

    def stalled(self) -> bool:
        """Whether capture has stopped making progress (then the watchdog stops pinging).

        The BLE source restarts a quiet scanner itself after ``ble.watchdog_s``; silence far
        beyond that means the radio stack is stuck and a service restart is the next step.
        """
        if not self.cfg.ble.enabled or self.state.radio.state in ("off", "finished"):
            return False
        quiet = time.monotonic() - self.state.last_progress_mono
        return quiet > max(self.cfg.ble.watchdog_s * 10, 1800)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then flush everything captured and exit."""
        from mqtt.sync import GatewaySync

        assert self.cfg.mqtt is not None and self.cfg.gateway is not None
        self.sync = GatewaySync(self.outbox, self.cfg.mqtt, self.cfg.gateway,
                                health=self.health,
                                health_interval_s=self.cfg.status.health_interval_s,
                                on_ack_time=self._ack_time)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._ticker(stop), name="ticker"),
            asyncio.create_task(self.sync.run(stop), name="sync"),
            asyncio.create_task(self.loop_lag.run(stop), name="looplag"),
        ]
        if self.cfg.ble.enabled:
            finite = isinstance(self.clock, ReplayClock)
            tasks.append(asyncio.create_task(
                self._supervise("ble", self._ble_loop, stop, finite=finite), name="ble"))
        if self.cfg.ble.beacon.enabled:
            tasks.append(asyncio.create_task(self._beacon(stop), name="beacon"))
        if self.cfg.status.enabled:
            tasks.append(asyncio.create_task(self._status_page(stop), name="status"))
        if self.cfg.qr.capturing:  # frame sources, decoders (numpy, zxing-cpp) imported then
            finite = self.cfg.qr.source == "video"
            tasks.append(asyncio.create_task(
                self._supervise("qr", self._qr_loop, stop, finite=finite), name="qr"))
        self.notifier.ready()
        log.info("gateway %s running", self.cfg.gateway.id)
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            for t in tasks:
                if t.get_name() != "sync":
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.pipeline.flush(final=True)
            await asyncio.to_thread(self.pipeline.close)  # seal and commit what is queued
            self.feedback.close()
            p99 = self.loop_lag.run_p99_ms()
            log.info("event loop lag over the run: p99 %s ms, max %.1f ms (%d probes); "
                     "adverts dropped %d", "n/a" if p99 is None else f"{p99:.0f}",
                     self.loop_lag.max_ms, self.loop_lag.samples,
                     self.state.radio.dropped + self._source_count("dropped"))

    async def _beacon(self, stop: asyncio.Event) -> None:
        from ble.beacon import Beacon

        beacon = Beacon(self.cfg.ble.beacon, adapter=self.cfg.ble.adapter)
        try:
            await beacon.open()
            await beacon.run(stop)
        except BzgwError as err:  # a radio that cannot advertise must not stop capture
            log.error("%s", err)
        finally:
            await beacon.close()

    async def _status_page(self, stop: asyncio.Event) -> None:
        from gateway.metrics import GatewayMetrics
        from gateway.status import StatusPage, serve_status

        assert self.cfg.gateway is not None
        page = StatusPage(self.health, recent=self.feedback_events.recent,
                          metrics=GatewayMetrics(self.health, sync=self.sync.stats),
                          title=self.cfg.gateway.venue_name or self.cfg.gateway.venue,
                          refresh_s=self.cfg.status.refresh_s,
                          staff_pin_hash=self.cfg.status.staff_pin_hash,
                          staff_session_s=self.cfg.status.staff_session_minutes * 60,
                          metrics_allow=self.cfg.status.metrics_allow)
        try:
            await serve_status(page, host=self.cfg.status.listen, port=self.cfg.status.port,
                               stop=stop)
        except BzgwError as err:  # a busy port must not stop capture
            log.error("%s", err)

    async def _supervise(self, name: str, fn: Callable[[], Awaitable[None]],
                         stop: asyncio.Event, *, finite: bool = False) -> None:
        """Restart a source that fails, with backoff; never let it kill the daemon.

        A ``finite`` source (a capture file, a simulation not paced in real time) that ends
        normally is done; a live radio or camera that ends is restarted.
        """
        delay = 1.0
        while not stop.is_set():
            try:
                await fn()
                if finite:
                    log.info("%s source finished", name)
                    if name == "ble":
                        self.state.radio.state = "finished"
                        # a capture or simulation that ended sends nothing more: seal all
                        # sightings now rather than when their ID slot would have ended
                        self.pipeline.flush(final=True)
                    return
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a source failure must not stop capture
                if name == "ble":
                    self.state.radio.state = "fault"
                    self.state.radio.detail = str(err)
                    self.state.radio.restarts += 1
                log.error("%s source failed (%s); restarting in %.0f s", name, err, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 60.0)


def default_clock(cfg: Config) -> Clock:
    """Capture time in replay (and a simulator not paced in real time), else the tracked
    system clock, whose epochs survive daemon restarts in ``clock.json`` beside the outbox."""
    if cfg.ble.source == "replay" or (cfg.ble.source == "simulator"
                                      and not cfg.ble.simulator.realtime):
        return ReplayClock()
    return TrackedClock(state_path=cfg.outbox.path.parent / "clock.json")


def run_daemon(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    asyncio.run(main())
