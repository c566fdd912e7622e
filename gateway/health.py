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

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ble.records import Advert, IdKind
from gateway.clock import ClockEpoch
from gateway.errors import BzgwError

if TYPE_CHECKING:
    from gateway.outbox import OutboxStatus

HEALTH_VERSION = 1
# Asia/Ho_Chi_Minh has kept UTC+7 without daylight saving since 1975: a fixed offset needs no
# tz database on the Pi.
VENUE_TZ = timezone(timedelta(hours=7), "ICT")
DISK_WARN = 0.80  # shown as a warning line below the state
DISK_FULL = 0.95  # a state of its own: the outbox will soon drop batches
CONNECT_GRACE_S = 60.0  # right after start "connecting", not yet "offline"
MAX_DOC_BYTES = 64 * 1024  # a health document from the network larger than this is refused
_MAX_TEXT = 200
# BlueZ writes addresses as AA:BB:.. and inside object paths as dev_AA_BB_..
_MAC = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[:_-]){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])")

# What can be wrong, most urgent first: a dead radio or camera loses data now, a full outbox or
# disk will lose it soon, offline and an unsynced clock only delay or blur it.
PRECEDENCE = ("radio_fault", "no_camera", "outbox_full", "disk_full", "offline", "connecting",
              "clock_not_synced", "working")
LABELS: dict[str, tuple[str, str]] = {
    "radio_fault": ("Không thấy Bluetooth", "No Bluetooth radio"),
    "no_camera": ("Không thấy camera", "No camera"),
    "outbox_full": ("Bộ nhớ đệm đầy", "Outbox full"),
    "disk_full": ("Ổ đĩa đầy {pct} %", "Disk {pct} % full"),
    "offline": ("Mất kết nối từ {time}", "Offline since {time}"),
    "connecting": ("Đang kết nối", "Connecting"),
    "clock_not_synced": ("Chưa đồng bộ giờ", "Clock not synced"),
    "working": ("Đang hoạt động", "Working"),
}
RADIO_STATES = frozenset({"starting", "scanning", "restarting", "fault", "off", "finished",
                          "unknown"})
CAMERA_STATES = frozenset({"starting", "capturing", "restarting", "fault", "off", "unknown"})
# The QR stage's source states (qr.sources.base.SourceState) in the health vocabulary.
_CAMERA_ALIASES = {"ok": "capturing", "camera fault": "fault", "ended": "off"}


class HealthError(BzgwError):
    """A health document is malformed.

    Attributes:
        problems: one ``path: what is wrong`` line each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid health document: " + "; ".join(problems[:5]))


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


_PHONE_RANK = {IdKind.OTHER: 0, IdKind.IBEACON: 0, IdKind.APPLE: 1, IdKind.PHONE: 1,
               IdKind.GAEN: 2, IdKind.BLUEZONE_IOS: 3, IdKind.BLUEZONE: 3}


class PhonesNow:
    """Distinct phones heard in the last ``window_s`` seconds, by kind (memory only).

    As in the aggregator, addresses are reduced to a keyed BLAKE2b digest under a random
    per-process key before they are counted; the small address → digest cache that makes
    repeated adverts cheap is emptied every ``window_s``. Both tables are bounded; devices
    beyond the bound are counted as ``untracked``. A device counts as the most specific kind
    it showed (an address seen with a Bluezone ID is Bluezone even if it also sent plain
    adverts).

    Args:
        window_s: the sliding window "now" means.
        max_entries: table bound.
    """

    def __init__(self, window_s: float = 120.0, max_entries: int = 20000) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("window_s and max_entries must be positive")
        self.window_s = window_s
        self.max_entries = max_entries
        self.untracked = 0
        self._key = os.urandom(16)
        self._seen: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        self._digests: dict[str, bytes] = {}
        self._cache_until = -math.inf

    def add(self, adv: Advert) -> None:
        """Account one advert (called per advert: keep it cheap)."""
        if adv.ts >= self._cache_until:
            self._digests.clear()  # an address is held one window at most
            self._cache_until = adv.ts + self.window_s
        digest = self._digests.get(adv.address)
        if digest is None:
            digest = hashlib.blake2b(adv.address.encode(), key=self._key,
                                     digest_size=8).digest()
            if len(self._digests) < self.max_entries:
                self._digests[adv.address] = digest
        rank = _PHONE_RANK.get(adv.kind, 0)
        seen = self._seen
        old = seen.get(digest)
        if old is not None:
            seen.move_to_end(digest)
            seen[digest] = (adv.ts, old[1] if old[1] > rank else rank)
            return
        if len(seen) >= self.max_entries:
            self._expire(adv.ts)
            if len(seen) >= self.max_entries:
                self.untracked += 1
                return
        seen[digest] = (adv.ts, rank)

    def _expire(self, now: float) -> None:
        seen, cutoff = self._seen, now - self.window_s
        while seen:
            first = next(iter(seen.values()))
            if first[0] >= cutoff:
                break
            seen.popitem(last=False)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Counts over ``[now - window_s, now]`` and the Bluezone share of phones."""
        self._expire(now)
        by = [0, 0, 0, 0]
        for _, rank in self._seen.values():
            by[rank] += 1
        phones = by[1] + by[2] + by[3]
        return {"window_s": self.window_s, "phones": phones, "bluezone": by[3], "gaen": by[2],
                "other_phones": by[1], "devices": by[0],
                "bluezone_share": round(by[3] / phones, 4) if phones else None}


# -- building ----------------------------------------------------------------------------------

def scrub(text: str | None) -> str:
    """An error text safe to publish: MAC-shaped substrings masked, length bounded."""
    if not text:
        return ""
    return _MAC.sub(lambda m: "**:**:**:**:**:" + m.group(0)[-2:], text)[:_MAX_TEXT]


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


# -- state -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Condition:
    """One thing that is wrong (or ``working``), with what its label needs."""

    code: str
    since: float | None = None
    fill: float | None = None


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(p)
    return cur


def conditions(doc: Mapping[str, Any]) -> list[Condition]:
    """Everything wrong in a health document, most urgent first; ``[working]`` if nothing.

    Works on any mapping (missing or odd fields count as "not wrong"), so the matcher can call
    it on a stored document from an older gateway.
    """
    out: list[Condition] = []
    if _get(doc, "radio", "state") == "fault":
        out.append(Condition("radio_fault"))
    if _get(doc, "camera", "state") == "fault":
        out.append(Condition("no_camera"))
    if _get(doc, "outbox", "full") is True:
        out.append(Condition("outbox_full"))
    fill = _get(doc, "disk", "fill")
    if isinstance(fill, int | float) and not isinstance(fill, bool) and fill >= DISK_FULL:
        out.append(Condition("disk_full", fill=float(fill)))
    if _get(doc, "link", "connected") is False:
        uptime = _get(doc, "uptime_s")
        never = _get(doc, "link", "ever_connected") is False
        if never and isinstance(uptime, int | float) and uptime < CONNECT_GRACE_S:
            out.append(Condition("connecting"))
        else:
            since = _get(doc, "link", "offline_since")
            out.append(Condition("offline", since=since if isinstance(since, int | float)
                                 else None))
    if _get(doc, "clock", "synced") is False:
        out.append(Condition("clock_not_synced"))
    out.sort(key=lambda c: PRECEDENCE.index(c.code))
    return out or [Condition("working")]


def venue_time(ts: float, now: float | None = None) -> str:
    """``10:42`` in venue local time; ``10:42 12/03`` when not the same local day as ``now``."""
    t = datetime.fromtimestamp(ts, VENUE_TZ)
    ref = datetime.fromtimestamp(time.time() if now is None else now, VENUE_TZ)
    return t.strftime("%H:%M") if t.date() == ref.date() else t.strftime("%H:%M %d/%m")


def label(cond: Condition, now: float | None = None) -> tuple[str, str]:
    """``(vietnamese, english)`` text of a condition."""
    vi, en = LABELS[cond.code]
    when = venue_time(cond.since, now) if cond.since is not None else "?"
    pct = f"{cond.fill * 100:.0f}" if cond.fill is not None else "?"
    return vi.format(time=when, pct=pct), en.format(time=when, pct=pct)


def describe_state(conds: list[Condition], now: float | None = None) -> dict[str, Any]:
    """The ``state`` block: the top condition's code, time and labels, and the others."""
    top = conds[0]
    vi, en = label(top, now)
    also = []
    for c in conds[1:]:
        cvi, cen = label(c, now)
        also.append({"code": c.code, "vi": cvi, "en": cen})
    return {"code": top.code, "since": top.since, "vi": vi, "en": en, "also": also}


# -- schema ------------------------------------------------------------------------------------

# Leaf types: "int" (>= 0), "num" (finite, >= 0), "time" (finite epoch s > 0), "str" (<= 200
# characters), "bool", "list" (short); a trailing "?" allows null; a frozenset is an enum of
# strings; a dict is a nested object (null only where wrapped in Nullable). Unknown keys are
# allowed (the sync adds its own "sync" block; newer gateways add fields).
@dataclass(frozen=True)
class Nullable:
    """An object that may be null."""

    spec: dict[str, Any]


SCHEMA: dict[str, Any] = {
    "v": "int", "gateway": "str", "ts": "time", "uptime_s": "num",
    "outbox": {"depth": "int", "bytes": "int", "max_bytes": "int?", "fill": "num?",
               "oldest_age_s": "num?", "dropped_batches": "int", "full": "bool"},
    "disk": {"total_bytes": "int?", "free_bytes": "int?", "fill": "num?", "error": "str"},
    "link": {"connected": "bool", "ever_connected": "bool", "last_sync": "time?",
             "offline_since": "time?"},
    "radio": {"state": RADIO_STATES, "detail": "str", "restarts": "int", "adverts": "int",
              "last_advert_at": "time?"},
    "camera": {"state": CAMERA_STATES, "detail": "str", "restarts": "int"},
    "clock": {"synced": "bool", "source": "str", "uncertainty_s": "num?"},
    "counts": {"checkins": "int", "batches": "int"},
    "dropped": {"outbox_batches": "int", "lost_records": "int", "feedback_events": "int",
                "phones_untracked": "int", "adverts": "int", "malformed_reports": "int",
                "rejected_batches": "int", "checkins_not_saved": "int"},
    "loop": {"lag_p99_ms": "num?", "lag_max_ms": "num?"},
    "phones": Nullable({"window_s": "num", "phones": "int", "bluezone": "int", "gaen": "int",
                        "other_phones": "int", "devices": "int", "bluezone_share": "num?"}),
    "state": {"code": frozenset(PRECEDENCE), "since": "time?", "vi": "str", "en": "str",
              "also": "list"},
}


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


_LEAVES = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
            "a non-negative integer"),
    "num": (lambda v: _is_num(v) and v >= 0, "a non-negative number"),
    "time": (lambda v: _is_num(v) and v > 0, "an epoch time in seconds"),
    "str": (lambda v: isinstance(v, str) and len(v) <= _MAX_TEXT, "a short string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list": (lambda v: isinstance(v, list) and len(v) <= len(PRECEDENCE), "a short list"),
}


def _check(value: object, spec: Any, path: str, out: list[str]) -> None:
    if isinstance(spec, Nullable):
        if value is not None:
            _check(value, spec.spec, path, out)
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            out.append(f"{path or '(top)'}: expected an object, got {type(value).__name__}")
            return
        for key, sub in spec.items():
            if key not in value:
                out.append(f"{path + '.' if path else ''}{key}: missing")
            else:
                _check(value[key], sub, f"{path + '.' if path else ''}{key}", out)
        return
    if isinstance(spec, frozenset):
        if not (isinstance(value, str) and value in spec):
            out.append(f"{path}: expected one of {', '.join(sorted(spec))}, got {_show(value)}")
        return
    nullable = spec.endswith("?")
    test, what = _LEAVES[spec.rstrip("?")]
    if value is None and nullable:
        return
    if not test(value):
        out.append(f"{path}: expected {what}{' or null' if nullable else ''}, "
                   f"got {_show(value)}")


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_health(doc: object) -> list[str]:
    """Every problem of a document against :data:`SCHEMA`; empty when valid. Never raises."""
    out: list[str] = []
    _check(doc, SCHEMA, "", out)
    if not out and isinstance(doc, dict) and doc["v"] != HEALTH_VERSION:
        out.append(f"v: unsupported health version {doc['v']} (this reader knows "
                   f"{HEALTH_VERSION})")
    return out


def parse_health(payload: bytes | str) -> dict[str, Any]:
    """Decode and validate a health document received from the network.

    Raises:
        HealthError: too large, not JSON, or not valid against the schema.
    """
    if len(payload) > MAX_DOC_BYTES:
        raise HealthError([f"(top): {len(payload)} bytes is over the {MAX_DOC_BYTES} limit"])
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise HealthError([f"(top): not JSON: {err}"]) from err
    problems = validate_health(doc)
    if problems:
        raise HealthError(problems)
    assert isinstance(doc, dict)
    return doc
