"""Advert sources behind one protocol, chosen by ``ble.source``.

Backends are imported inside their case, so importing ``ble`` works on hosts without bluepy
(and without D-Bus for replay and simulation).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING

from ble.config import BleConfig
from ble.ios import GattReader, IosResolver
from ble.sources.base import AdvertSource, QueueSource, ScannerStartError, SourceError
from core.clock import Clock

if TYPE_CHECKING:
    from ble.simulator import Crowd

__all__ = ["AdvertSource", "QueueSource", "ScannerStartError", "SourceError", "SourceKind",
           "open_source", "source_kind"]


class SourceKind(StrEnum):
    """The backends."""

    BLEAK = "bleak"
    BLUEPY = "bluepy"
    REPLAY = "replay"
    SIMULATOR = "simulator"


def source_kind(cfg: BleConfig) -> SourceKind:
    """Which backend a config selects."""
    return SourceKind(cfg.source)


def _resolver(cfg: BleConfig, reader: GattReader | None) -> IosResolver | None:
    if not cfg.ios_gatt_read or reader is None or cfg.gatt_reads_per_minute == 0:
        return None
    return IosResolver(reader, reads_per_minute=cfg.gatt_reads_per_minute)


def open_source(cfg: BleConfig, clock: Clock, *, crowd: Crowd | None = None,
                venue: str | None = None, gatt_reader: GattReader | None = None,
                queue_size: int = 4096) -> AdvertSource:
    """Create the advert source the config asks for (not started: iterate to start it).

    Args:
        cfg: the ``ble`` section.
        clock: stamps adverts (radio sources) or is advanced by them (replay, simulator).
        crowd: for ``simulator``: the crowd to use (default: built from ``cfg.simulator``).
        venue: for ``simulator``: the venue the gateway is at (default ``cfg.simulator.venue``).
        gatt_reader: reads iOS Bluezone IDs when ``cfg.ios_gatt_read`` (default: bleak's
            reader for ``bleak``, the crowd's for ``simulator``).
        queue_size: bound of the queue between radio callbacks and the consumer.

    Raises:
        SourceError: the config lacks what the backend needs.
    """
    kind = source_kind(cfg)
    match kind:
        case SourceKind.BLEAK:
            from ble.ios import BleakGattReader
            from ble.sources.bleak_source import BleakSource

            reader = gatt_reader or (BleakGattReader(adapter=cfg.adapter)
                                     if cfg.ios_gatt_read else None)
            return BleakSource(cfg, clock, resolver=_resolver(cfg, reader),
                               queue_size=queue_size)
        case SourceKind.BLUEPY:
            from ble.sources.bluepy_source import BluepySource

            return BluepySource(cfg, clock, resolver=_resolver(cfg, gatt_reader),
                                queue_size=queue_size)
        case SourceKind.REPLAY:
            from ble.sources.replay_source import ReplaySource

            if cfg.replay_file is None:
                raise SourceError("ble.source is replay but no capture is given",
                                  "set ble.replay_file to a btsnoop/btmon/pcapng file")
            return ReplaySource(cfg.replay_file, clock, speed=cfg.replay_speed,
                                resolver=_resolver(cfg, gatt_reader))
        case SourceKind.SIMULATOR:
            from ble.sources.simulator_source import SimulatorSource, crowd_from_settings

            sim = cfg.simulator
            c = crowd if crowd is not None else crowd_from_settings(sim, now=time.time())
            reader = gatt_reader or (c.gatt_reader(clock) if cfg.ios_gatt_read else None)
            return SimulatorSource(c, venue or sim.venue, clock, rate_hz=sim.rate_hz,
                                   realtime=sim.realtime, resolver=_resolver(cfg, reader))
    raise SourceError(f"unknown BLE source {kind!r}", "use bleak, bluepy, replay or simulator")
