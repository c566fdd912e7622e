"""Retention ages batches by their clock epochs, not by a wall clock that was stale.

A Pi has no RTC: it boots with the wall clock of its last shutdown (or 1970) and syncs
minutes or days later. Batches sealed meanwhile carry wall times far in the past; ageing them
by those times would drop them the moment the clock syncs.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.aggregator import WindowAggregator
from bzgw.lab import gateway_identity_files
from contract.custody import IdentitySealer
from contract.records import CheckInKind
from contract.sealing import Sealer, generate_matcher_keypair
from gateway.clock import TrackedClock
from gateway.outbox import Outbox
from gateway.pipeline import CapturePipeline
from qr.records import ScannedCheckIn

DAY = 86400.0
TRUE_BOOT = 1_750_000_000.0  # true wall time when the Pi booted
STALE = 30 * DAY  # the wall clock after boot lags by a month (fake-hwclock of a shelved Pi)


class Pi:
    """One boot of a Pi: true time = ``boot_at + mono``; its wall clock may lag."""

    def __init__(self, boot_id: str, boot_at: float, lag: float) -> None:
        self.boot_id, self.boot_at, self.lag = boot_id, boot_at, lag
        self.mono = 5.0
        self.synced = False

    def clock(self) -> TrackedClock:
        return TrackedClock(wall=lambda: self.boot_at + self.mono - self.lag,
                            mono=lambda: self.mono, synced=lambda: self.synced,
                            boot_id=self.boot_id)

    def sync(self) -> None:
        self.lag, self.synced = 0.0, True


def checkin(clock: TrackedClock, n: int) -> ScannedCheckIn:
    return ScannedCheckIn(ts=clock.now(), clock=clock.epoch(), kind=CheckInKind.OPAQUE,
                          subject=f"token-{n}", masked="to***")


def pipeline(path: Path, clock: TrackedClock, *, background: bool) -> CapturePipeline:
    _priv, pub = generate_matcher_keypair()
    outbox = Outbox(path, max_bytes=1 << 24, max_age_s=14 * DAY, clock=clock)
    sealer = Sealer(gateway_id="gw-1", matcher_public_key=pub,
                    signing_key=Ed25519PrivateKey.generate())
    return CapturePipeline(aggregator=WindowAggregator(), sealer=sealer, outbox=outbox,
                           clock=clock, background=background,
                           identities=IdentitySealer.from_files(
                               *gateway_identity_files(path.parent, path.parent / "gw")))


def test_batches_sealed_before_the_clock_synced_are_not_dropped_early(tmp_path: Path) -> None:
    pi = Pi("boot-1", TRUE_BOOT, STALE)
    clock = pi.clock()
    pipe = pipeline(tmp_path / "o.db", clock, background=True)
    try:
        stale = [pipe.on_checkin(checkin(clock, i)) for i in range(3)]
        pi.mono += 3600
        pi.sync()
        assert pipe.poll_clock()  # a new, synchronised epoch
        pipe.drain()
        fresh = pipe.on_checkin(checkin(clock, 9))
        ob = pipe.outbox
        # a month "old" by the stale wall clock, an hour old in truth: nothing goes
        assert ob.enforce_retention() == 0
        assert [i.seq for i in ob.pending(10)] == [*stale, fresh]
        # the correction also moved the bookkeeping: the oldest batch is an hour old
        oldest = ob.status().oldest_created_at
        assert oldest is not None and abs(clock.now() - oldest - 3600) < 1
        pi.mono += 14 * DAY - 3600 - 60  # just under 14 days after the first batches
        assert ob.enforce_retention() == 0
        pi.mono += 120  # just over
        assert ob.enforce_retention() == 3
        assert [i.seq for i in ob.pending(10)] == [fresh]
        assert ob.status().dropped_batches == 3
    finally:
        pipe.close()
        pipe.outbox.close()


def test_an_earlier_unsynced_boot_is_aged_from_this_boot_at_least(tmp_path: Path) -> None:
    first = Pi("boot-1", TRUE_BOOT, STALE)
    clock = first.clock()
    pipe = pipeline(tmp_path / "o.db", clock, background=False)
    kept = pipe.on_checkin(checkin(clock, 1))  # sealed with a stale clock, never synced
    pipe.outbox.close()

    # Rebooted two days later; this boot's clock is synchronised at once.
    second = Pi("boot-2", TRUE_BOOT + 2 * DAY, 0.0)
    second.sync()
    clock2 = second.clock()
    ob = Outbox(tmp_path / "o.db", max_bytes=1 << 24, max_age_s=14 * DAY, clock=clock2)
    try:
        # by its own wall time the batch is 32 days old: it must still be kept
        assert ob.enforce_retention() == 0
        assert [i.seq for i in ob.pending(5)] == [kept]
        second.mono += 14 * DAY + 1  # this boot alone has now lasted the retention
        assert ob.enforce_retention() == 1
        assert ob.pending(5) == []
    finally:
        ob.close()


def test_an_earlier_synced_boot_is_aged_by_its_wall_time(tmp_path: Path) -> None:
    first = Pi("boot-1", TRUE_BOOT, 0.0)
    first.sync()
    clock = first.clock()
    pipe = pipeline(tmp_path / "o.db", clock, background=False)
    seq = pipe.on_checkin(checkin(clock, 1))
    pipe.outbox.close()

    second = Pi("boot-2", TRUE_BOOT + 10 * DAY, 0.0)
    second.sync()
    ob = Outbox(tmp_path / "o.db", max_bytes=1 << 24, max_age_s=14 * DAY,
                clock=second.clock())
    try:
        assert ob.enforce_retention() == 0
        assert [i.seq for i in ob.pending(5)] == [seq]
        second.mono += 4 * DAY + 10  # 14 days after the batch, though only 4 of this boot
        assert ob.enforce_retention() == 1
    finally:
        ob.close()
