"""Prometheus metrics of one gateway, read from its health document at scrape time.

Each daemon owns a :class:`GatewayMetrics` with its **own** ``CollectorRegistry`` (never the
process-global one), so two gateways in one process (tests, the demo) do not collide. The
collector calls the health provider on every scrape: metrics and ``/health`` can never
disagree, and nothing is updated on the capture path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from contract.health import CAMERA_STATES, PRECEDENCE, RADIO_STATES

CONTENT_TYPE = CONTENT_TYPE_LATEST
HealthProvider = Callable[[], Mapping[str, Any]]
SyncProvider = Callable[[], Mapping[str, Any]]


def _num(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def _at(doc: Mapping[str, Any], path: str) -> float | None:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return _num(cur)


# (metric name, documentation, path in the health document)
_GAUGES = (
    ("bzgw_uptime_seconds", "Seconds since the daemon started.", "uptime_s"),
    ("bzgw_outbox_depth_batches", "Sealed batches waiting for the matcher's ack.",
     "outbox.depth"),
    ("bzgw_outbox_bytes", "Bytes of sealed batches in the outbox.", "outbox.bytes"),
    ("bzgw_outbox_fill_ratio", "Outbox bytes over its bound.", "outbox.fill"),
    ("bzgw_outbox_oldest_age_seconds", "Age of the oldest unacknowledged batch.",
     "outbox.oldest_age_s"),
    ("bzgw_outbox_full", "1 when the last outbox write failed for lack of space.",
     "outbox.full"),
    ("bzgw_disk_fill_ratio", "Used share of the disk holding the outbox.", "disk.fill"),
    ("bzgw_disk_free_bytes", "Free bytes on the disk holding the outbox.", "disk.free_bytes"),
    ("bzgw_mqtt_connected", "1 while an MQTT session to the broker is up.", "link.connected"),
    ("bzgw_last_sync_timestamp_seconds", "Wall time of the last matcher ack.",
     "link.last_sync"),
    ("bzgw_clock_synced", "1 when the wall clock is known good.", "clock.synced"),
    ("bzgw_clock_uncertainty_seconds", "Half-width of the clock's error bound.",
     "clock.uncertainty_s"),
    ("bzgw_last_advert_timestamp_seconds", "Wall time of the last BLE advert.",
     "radio.last_advert_at"),
    ("bzgw_bluezone_share_ratio", "Share of phones heard now that run Bluezone.",
     "phones.bluezone_share"),
    ("bzgw_loop_lag_p99_seconds", "99th percentile of the event loop's lag, last minute.",
     "loop.lag_p99_ms", 1e-3),
    ("bzgw_loop_lag_max_seconds", "Largest event loop lag in the last minute.",
     "loop.lag_max_ms", 1e-3),
)
_COUNTERS = (
    ("bzgw_adverts", "BLE adverts decoded.", "radio.adverts"),
    ("bzgw_radio_restarts", "Restarts of the BLE source.", "radio.restarts"),
    ("bzgw_camera_restarts", "Restarts of the camera source.", "camera.restarts"),
    ("bzgw_checkins", "QR check-ins accepted.", "counts.checkins"),
    ("bzgw_batches", "Batches sealed into the outbox.", "counts.batches"),
    ("bzgw_outbox_dropped_batches", "Batches dropped by the outbox bounds.",
     "dropped.outbox_batches"),
    ("bzgw_lost_records", "Records that could not be stored (outbox full).",
     "dropped.lost_records"),
    ("bzgw_feedback_events_dropped", "Staff feedback events dropped from the bounded list.",
     "dropped.feedback_events"),
    ("bzgw_phones_untracked", "Adverts from devices beyond the live phone table's bound.",
     "dropped.phones_untracked"),
    ("bzgw_adverts_dropped", "Adverts dropped because the BLE source queue was full.",
     "dropped.adverts"),
    ("bzgw_malformed_reports", "Radio reports refused as malformed.",
     "dropped.malformed_reports"),
    ("bzgw_rejected_batches", "Batches the matcher rejected (deleted, never resent).",
     "dropped.rejected_batches"),
    ("bzgw_checkins_not_saved", "Check-ins staff were told could not be saved.",
     "dropped.checkins_not_saved"),
)
_PHONE_KINDS = ("bluezone", "gaen", "other_phones", "devices")


class _HealthCollector(Collector):
    def __init__(self, health: HealthProvider, sync: SyncProvider | None) -> None:
        self._health = health
        self._sync = sync

    def describe(self) -> list[Metric]:
        # Registering must not call the provider (the daemon may not be running yet).
        return []

    def collect(self) -> Iterator[Metric]:
        doc = self._health()
        yield InfoMetricFamily("bzgw_gateway", "This gateway.",
                               value={"gateway": str(doc.get("gateway", ""))})
        state = doc.get("state") if isinstance(doc.get("state"), Mapping) else {}
        assert isinstance(state, Mapping)
        yield StateSetMetricFamily("bzgw_state", "What staff see on the status page.",
                                   value={c: state.get("code") == c for c in PRECEDENCE})
        for name, states, path in (("bzgw_radio_state", RADIO_STATES, "radio"),
                                   ("bzgw_camera_state", CAMERA_STATES, "camera")):
            part = doc.get(path)
            now = part.get("state") if isinstance(part, Mapping) else None
            yield StateSetMetricFamily(name, f"State of the {path}.",
                                       value={s: s == now for s in sorted(states)})
        for name, text, path, *scale in _GAUGES:
            v = _at(doc, path)
            if v is not None:
                yield GaugeMetricFamily(name, text, value=v * (scale[0] if scale else 1))
        for name, text, path in _COUNTERS:
            v = _at(doc, path)
            if v is not None:
                yield CounterMetricFamily(name, text, value=v)
        phones = GaugeMetricFamily("bzgw_phones_now", "Distinct devices heard in the live "
                                   "window, by kind.", labels=["kind"])
        for kind in _PHONE_KINDS:
            v = _at(doc, f"phones.{kind}")
            if v is not None:
                phones.add_metric([kind], v)
        yield phones
        if self._sync is not None:
            events = CounterMetricFamily("bzgw_sync_events", "MQTT sync events by kind.",
                                         labels=["event"])
            for key, value in sorted(self._sync().items()):
                v = _num(value)
                if v is not None and not isinstance(value, bool) and key not in (
                        "inflight", "last_sync"):
                    events.add_metric([key], v)
            yield events


class GatewayMetrics:
    """One gateway's metrics in a registry of its own.

    Args:
        health: returns the current health document.
        sync: returns the sync's counters (``GatewaySync.stats``), if there is a sync.
    """

    def __init__(self, health: HealthProvider, sync: SyncProvider | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HealthCollector(health, sync))

    def render(self) -> bytes:
        """The text exposition format (``Content-Type``: :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
