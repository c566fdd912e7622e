"""Drops are counted and shown; a check-in the outbox cannot take is never "accepted".

The daemon object is real (its pipeline seals in a worker thread, the QR stage runs decode
and storage off the loop); the outbox it writes to is a real SQLite file capped small so it
fills like a full SD card.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from browser import ServedApp, gateway_config
from test_qr_checkin import CCCD, frame

from bzgw.lab import Lab
from contract.health import validate_health
from core.errors import OutboxFullError
from gateway.clock import TrackedClock
from gateway.daemon import Gateway
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox
from gateway.status import StatusPage, view
from qr.checkin import CheckInPipeline
from qr.decoder import Decoder
from qr.recognizers import Recognizer


@dataclass
class Frame:
    image: np.ndarray
    ts: float | None = None


async def frames(*images: np.ndarray) -> AsyncIterator[Frame]:
    for im in images:
        yield Frame(im)


def fill(outbox: Outbox) -> list[int]:
    stored = []
    with pytest.raises(OutboxFullError):
        for _ in range(100):
            stored.append(outbox.append(lambda s: s.to_bytes(4, "big") * 2000))
    return stored


def test_a_checkin_the_full_outbox_cannot_take_is_signalled_not_saved(
        lab: Lab, tmp_path: Path) -> None:
    gw = Gateway(gateway_config(tmp_path / "gw", lab, status_port=0),
                 clock=TrackedClock(synced=lambda: True))
    small = Outbox(tmp_path / "small.db", max_bytes=1 << 30, max_age_s=86400,
                   clock=gw.clock, max_file_bytes=64 * 1024)
    own = gw.outbox
    gw.pipeline.outbox = gw.outbox = small
    try:
        stored = fill(small)
        checkins = CheckInPipeline(recognizer=Recognizer(), sink=gw._on_checkin,
                                   decoder=Decoder(budget_ms=200), feedback=gw.feedback,
                                   repeat_s=0.0)
        asyncio.run(checkins.run(frames(frame(CCCD)), gw.clock))
        told = [e["state"] for e in gw.feedback_events.recent(10)]
        assert told == ["not saved"]  # never "accepted"
        doc = gw.health()
        assert validate_health(doc) == []
        assert doc["dropped"]["checkins_not_saved"] == 1 and doc["counts"]["checkins"] == 0
        assert doc["dropped"]["lost_records"] == 1 and doc["outbox"]["full"]
        metrics = GatewayMetrics(gw.health).render().decode()
        assert "bzgw_checkins_not_saved_total 1.0" in metrics
        assert "bzgw_lost_records_total 1.0" in metrics
        page = view(doc, [])
        assert page["dropped"] == "2" and "1 lượt quét / check-ins" in page["dropped_detail"]

        # room again (the matcher acked): the same code shown again is stored and accepted
        small.settle(stored[:4])
        time.sleep(0.01)
        asyncio.run(checkins.run(frames(frame(CCCD)), gw.clock))
        assert [e["state"] for e in gw.feedback_events.recent(10)] == ["accepted", "not saved"]
        assert gw.health()["counts"]["checkins"] == 1
        assert small.status().depth == len(stored) - 4 + 1
    finally:
        gw.pipeline.close()
        small.close()
        own.close()


def test_source_queue_overflow_is_counted_and_shown(lab: Lab, tmp_path: Path) -> None:
    from ble.records import Advert
    from ble.sources.base import QueueSource
    from contract.records import IdKind

    gw = Gateway(gateway_config(tmp_path / "gw", lab, status_port=0))
    try:
        src = QueueSource(queue_size=4)  # a radio whose consumer stalled
        for i in range(10):
            src._put(Advert(time.time(), f"AA:BB:CC:DD:EE:{i:02X}", 1, -60, IdKind.OTHER, None,
                            None, None))
        gw._source = src
        doc = gw.health()
        assert validate_health(doc) == []
        assert doc["dropped"]["adverts"] == 6
        assert "bzgw_adverts_dropped_total 6.0" in GatewayMetrics(gw.health).render().decode()
        with ServedApp(StatusPage(gw.health, title="x").app) as srv:
            import urllib.request

            html = urllib.request.urlopen(srv.url, timeout=10).read().decode()
        assert '<span id="dropped" class="v bad">6</span>' in html
        assert "6 quảng bá / adverts" in html
    finally:
        gw.pipeline.close()
        gw.outbox.close()
