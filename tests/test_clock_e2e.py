"""Gateway time without an RTC, end to end: capture → seal → matcher → exposure report.

The F0 phone is at the venue 09:00-09:40 (true time). The gateway's clock is wrong in
different ways; only its wall clock, monotonic clock and sync flag are faked. Each scenario
checks the exposure window the matcher reports: right, or marked uncertain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.aggregator import WindowAggregator
from ble.config import ProximityThresholds
from ble.simulator import Crowd, Visit
from contract.registry import GatewayEntry, Registry
from contract.sealing import Sealer, generate_matcher_keypair, open_batch, signing_public_hex
from gateway.clock import TrackedClock
from gateway.outbox import Outbox
from gateway.pipeline import CapturePipeline
from matcher.f0 import Signer, key_id, load_f0, sign_f0
from matcher.match import ExposureWindow, match_f0
from matcher.store import open_store

DAY = 86400
DAY0 = 1_627_776_000  # 2021-08-01 00:00 UTC
ARRIVE, LEAVE = DAY0 + 9 * 3600, DAY0 + 9 * 3600 + 2400
BOOT = DAY0 + 8 * 3600 + 1800  # the Pi is plugged in at 08:30 true time


class Machine:
    """The Pi's clocks. True time = ``mono + BOOT``; its wall clock = ``mono + wall_offset``."""

    def __init__(self, wall_offset: float) -> None:
        self.mono_t = 0.0
        self.wall_offset = wall_offset
        self.synced = False

    def clock(self) -> TrackedClock:
        return TrackedClock(wall=lambda: self.mono_t + self.wall_offset, mono=lambda: self.mono_t,
                            synced=lambda: self.synced, boot_id="boot-1")


Event = Callable[[Machine, TrackedClock], None]


def run(tmp_path: Path, machine: Machine, events: dict[float, Event]) -> ExposureWindow | None:
    """Capture 08:30-10:30 true time, apply ``events`` at true times, match the F0."""
    crowd = Crowd(seed=3, start=BOOT, duration_s=7200)
    case = crowd.add_bluezone_phone([Visit("market", ARRIVE, LEAVE, distance_m=1.0)])
    crowd.add_bluezone_phones(10, ["market"])
    clock = machine.clock()
    priv, pub = generate_matcher_keypair()
    device = Ed25519PrivateKey.generate()
    entry = GatewayEntry(id="gw-1", province="hn", venue="market",
                         signing_key=signing_public_hex(device))
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 26, max_age_s=1e12, clock=clock)
    pipe = CapturePipeline(
        aggregator=WindowAggregator(ProximityThresholds(), max_ids=1000, count_window_s=900),
        sealer=Sealer(gateway_id="gw-1", matcher_public_key=pub, signing_key=device),
        outbox=outbox, clock=clock, flush_interval_s=60)
    pending = sorted(events.items())
    last_poll = -1
    for adv in crowd.adverts("market", BOOT, BOOT + 7200, rate_hz=0.5):
        machine.mono_t = adv.ts - BOOT
        while pending and pending[0][0] <= adv.ts:
            pending.pop(0)[1](machine, clock)
        if int(machine.mono_t) != last_poll:  # the daemon's ticker, once a second
            last_poll = int(machine.mono_t)
            pipe.poll_clock()
        pipe.on_advert(type(adv)(clock.now(), adv.address, adv.address_type, adv.rssi,
                                 adv.kind, adv.ident, adv.aem, adv.tx_power))
    pipe.flush(final=True)
    store = open_store(f"sqlite:///{tmp_path / 'matcher.db'}")
    registry = Registry(gateways={"gw-1": entry})
    for item in outbox.pending(10_000):
        header, batch = open_batch(item.data, registry=registry, private_key=priv)
        store.add_batch(entry, header, batch)
    f0 = tmp_path / "f0.json"
    f0.write_text(json.dumps({"data": [{"daily_key": case.daily_key(DAY0).hex(),
                                        "time_start": DAY0, "time_end": DAY0 + DAY - 1,
                                        "max": 96}]}))
    authority = Ed25519PrivateKey.generate()
    signed = sign_f0(f0, authority, out=tmp_path / "f0.signed.json")
    k = authority.public_key()
    result = match_f0(store, load_f0(signed, [Signer(key_id(k), k, "test")]))
    windows = result.windows
    assert len(windows) <= 1
    return windows[0] if windows else None


def assert_right(w: ExposureWindow | None, slack: float = 60.0) -> None:
    assert w is not None and w.venue.venue == "market"
    assert ARRIVE - slack <= w.start <= ARRIVE + 120
    assert LEAVE - 120 <= w.end <= LEAVE + slack


def ntp_sync(machine: Machine, clock: TrackedClock) -> None:
    machine.wall_offset, machine.synced = BOOT, True


def test_boot_at_1970_then_sync_after_ten_minutes(tmp_path: Path) -> None:
    w = run(tmp_path, Machine(wall_offset=0.0), {BOOT + 600: ntp_sync})
    assert_right(w)
    assert w is not None and w.clock_uncertainty_s == 0.0
    # The visit began after the sync here; the early 1970 records were re-timed too:
    store = open_store(f"sqlite:///{tmp_path / 'matcher.db'}")
    assert store.db.scalar("SELECT MIN(first_seen) FROM sightings") >= BOOT - 1


def test_sync_arrives_during_the_visit(tmp_path: Path) -> None:
    w = run(tmp_path, Machine(wall_offset=0.0), {ARRIVE + 1200: ntp_sync})
    assert_right(w)
    assert w is not None and w.clock_corrected and w.clock_uncertainty_s == 0.0


def test_clock_jumps_forward_and_back_before_sync(tmp_path: Path) -> None:
    def forward(m: Machine, c: TrackedClock) -> None:
        m.wall_offset += 3 * 3600

    def back(m: Machine, c: TrackedClock) -> None:
        m.wall_offset -= 5 * 3600

    w = run(tmp_path, Machine(wall_offset=BOOT - 1200),
            {ARRIVE - 600: forward, ARRIVE + 900: back, LEAVE + 1200: ntp_sync})
    assert_right(w)
    assert w is not None and w.clock_corrected


def test_never_synced_but_ack_times_bound_the_clock(tmp_path: Path) -> None:
    def ack(m: Machine, c: TrackedClock) -> None:
        # a batch sent at mono t, acked 0.8 s later; the matcher's true time in between
        c.on_ack_time(BOOT + m.mono_t + 0.3, sent_mono=m.mono_t, recv_mono=m.mono_t + 0.8)

    w = run(tmp_path, Machine(wall_offset=BOOT - 1200), {LEAVE + 600: ack})
    assert_right(w, slack=60.0)
    assert w is not None and w.clock_corrected and not w.clock_synced
    assert 0 < w.clock_uncertainty_s <= 0.5


def test_twenty_minute_skew_never_corrected_is_marked_uncertain(tmp_path: Path) -> None:
    w = run(tmp_path, Machine(wall_offset=BOOT - 1200), {})
    assert w is not None and w.venue.venue == "market"
    assert not w.clock_synced and not w.clock_corrected
    assert math.isinf(w.clock_uncertainty_s)  # reported, but honestly marked uncertain
    assert abs(w.start - (ARRIVE - 1200)) < 120  # the gateway's own (wrong) times, as stated
