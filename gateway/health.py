"""The health document: one dict that the status page, ``/metrics`` and the health topic share.

:func:`build_health` assembles it from the live components (outbox status, pipeline counters,
radio and camera state, the clock, the MQTT link, the disk under the outbox, phones seen now);
:func:`validate_health` checks any document against :data:`SCHEMA` and never raises, so the
matcher can take health from the network; :func:`conditions` derives what is wrong, in a fixed
order of precedence, and :func:`describe_state` words the first one in Vietnamese and English
for staff ("Mất kết nối từ 10:42 / Offline since 10:42", venue local time).

Nothing about a person is in it: counts only, and error texts with anything shaped like a MAC
address masked.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ble.aggregator import LivePhones
from contract.health import (
    CAMERA_STATES,
    HEALTH_VERSION,
    RADIO_STATES,
    conditions,
    describe_state,
    scrub,
)
from core.clock import ClockEpoch

if TYPE_CHECKING:
    from gateway.outbox import OutboxStatus

# The QR stage's source states (qr.sources.base.SourceState) in the health vocabulary.
_CAMERA_ALIASES = {"ok": "capturing", "camera fault": "fault", "ended": "off"}


# -- inputs ------------------------------------------------------------------------------------

class StatsLike(Protocol):
    """What health needs of :class:`gateway.pipeline.PipelineStats`."""

    adverts: int
    checkins: int
    batches: int
    lost_records: int
    last_advert_at: float | None


@dataclass(frozen=True, slots=True)
class Component:
    """State of a radio or a camera: ``state`` from its vocabulary, a short ``detail``."""

    state: str
    detail: str = ""
    restarts: int = 0


class LinkWatch:
    """Remembers when the MQTT link went down, from what each health build observes.

    The sync object only tells whether a session is up now; "offline since" needs the moment
    it went down. Each observation of *up* moves ``last_up``; the first *down* after an up
    becomes ``down_since``. Before the first up this run, the link has been down since start.

    Args:
        started_at: wall time the daemon started.
    """

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.last_up: float | None = None
        self.down_since: float | None = started_at

    def observe(self, connected: bool, now: float, last_sync: float | None = None) -> None:
        """Record the link state seen at ``now`` (``last_sync``: last matcher ack, if any)."""
        if connected:
            self.last_up = now
            self.down_since = None
        elif self.down_since is None:
            # Between the last observed up and now: the later of that and the last ack.
            self.down_since = max(t for t in (self.last_up, last_sync, self.started_at)
                                  if t is not None)
        elif last_sync is not None and last_sync > self.down_since:
            # An ack arrived while nobody looked: the link was up then, so down after it.
            self.down_since = last_sync


# The live phone count runs on the BLE fast path (the aggregator's watcher), so it lives, and
# is compiled, with the aggregator; the status page reads it through this name.
PhonesNow = LivePhones


# -- building ----------------------------------------------------------------------------------

def disk_figures(folder: Path) -> dict[str, Any]:
    """``shutil.disk_usage`` of the outbox folder (or its nearest existing parent)."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        du = shutil.disk_usage(p)
    except OSError as err:
        return {"total_bytes": None, "free_bytes": None, "fill": None, "error": scrub(str(err))}
    fill = (du.total - du.free) / du.total if du.total else None
    return {"total_bytes": du.total, "free_bytes": du.free,
            "fill": round(fill, 4) if fill is not None else None, "error": ""}


def _component(c: Component, states: frozenset[str],
               aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A radio or camera in the document's vocabulary; anything else is "unknown" with the
    original word kept in the detail, so a new state upstream never makes a document
    invalid."""
    state = (aliases or {}).get(c.state, c.state)
    detail = c.detail
    if state not in states:
        state, detail = "unknown", f"state {c.state!r}" + (f": {detail}" if detail else "")
    return {"state": state, "detail": scrub(detail), "restarts": c.restarts}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def build_health(*, gateway_id: str, now: float, uptime_s: float, outbox: OutboxStatus,
                 outbox_max_bytes: int | None, outbox_dir: Path, stats: StatsLike,
                 radio: Component, camera: Component, clock: ClockEpoch, connected: bool,
                 last_sync: float | None, link: LinkWatch | None = None,
                 phones: PhonesNow | None = None, feedback_dropped: int = 0,
                 disk: Mapping[str, Any] | None = None, adverts_dropped: int = 0,
                 reports_malformed: int = 0,
                 loop_lag_ms: tuple[float | None, float | None] = (None, None),
                 ) -> dict[str, Any]:
    """The health document (see :data:`SCHEMA`), including its derived ``state``.

    Args:
        gateway_id: this gateway.
        now: wall time of the document.
        uptime_s: seconds since the daemon started.
        outbox: the outbox's current status.
        outbox_max_bytes: the outbox byte bound (for the fill ratio), if known.
        outbox_dir: folder of the outbox file (its disk is the one that fills).
        stats: pipeline counters.
        radio: BLE radio state.
        camera: camera state.
        clock: the clock epoch ``now`` rests on.
        connected: whether an MQTT session is up.
        last_sync: wall time of the last matcher ack.
        link: transition memory for "offline since"; without it, offline since last sync.
        phones: the live phone counter.
        feedback_dropped: staff feedback events dropped from the bounded list.
        disk: precomputed disk figures (tests); measured from ``outbox_dir`` otherwise.
        adverts_dropped: adverts the BLE source's queue overflowed with.
        reports_malformed: radio reports refused as malformed.
        loop_lag_ms: the event loop's lag (p99, max) over the last minute, when measured.
    """
    if link is not None:
        link.observe(connected, now, last_sync)
        offline_since = None if connected else link.down_since
        ever = link.last_up is not None
    else:
        offline_since = None if connected else (last_sync if last_sync is not None
                                                else now - uptime_s)
        ever = connected or last_sync is not None
    oldest = outbox.oldest_created_at
    doc: dict[str, Any] = {
        "v": HEALTH_VERSION,
        "gateway": gateway_id,
        "ts": round(now, 3),
        "uptime_s": round(max(uptime_s, 0.0), 1),
        "outbox": {
            "depth": outbox.depth, "bytes": outbox.bytes,
            "max_bytes": outbox_max_bytes,
            "fill": round(outbox.bytes / outbox_max_bytes, 4) if outbox_max_bytes else None,
            "oldest_age_s": round(max(now - oldest, 0.0), 1) if oldest is not None else None,
            "dropped_batches": outbox.dropped_batches, "full": bool(outbox.full)},
        "disk": dict(disk) if disk is not None else disk_figures(outbox_dir),
        "link": {"connected": bool(connected), "ever_connected": ever,
                 "last_sync": last_sync, "offline_since": offline_since},
        "radio": {**_component(radio, RADIO_STATES), "adverts": stats.adverts,
                  "last_advert_at": stats.last_advert_at},
        "camera": _component(camera, CAMERA_STATES, _CAMERA_ALIASES),
        "clock": {"synced": bool(clock.synced), "source": str(clock.source),
                  "uncertainty_s": _finite(clock.uncertainty)},
        "counts": {"checkins": stats.checkins, "batches": stats.batches},
        "dropped": {"outbox_batches": outbox.dropped_batches,
                    "lost_records": stats.lost_records,
                    "feedback_events": feedback_dropped,
                    "phones_untracked": phones.untracked if phones else 0,
                    "adverts": adverts_dropped, "malformed_reports": reports_malformed,
                    "rejected_batches": outbox.rejected,
                    "checkins_not_saved": getattr(stats, "checkins_not_stored", 0)},
        "loop": {"lag_p99_ms": _finite(loop_lag_ms[0]), "lag_max_ms": _finite(loop_lag_ms[1])},
        "phones": phones.snapshot(now) if phones is not None else None,
    }
    doc["state"] = describe_state(conditions(doc), now)
    return doc
