"""What the provincial dashboard reads, and the consumer that keeps gateway status and health.

Gateways publish a retained ``status`` (``online``; the last will says ``offline``) and a
periodic ``health`` document (:mod:`gateway.health`). :func:`consume_message` checks each one
against the registry and the schema and stores it (``Store.set_status`` / ``set_health``);
anything else is counted in the store's ingest counters, never raised, because it comes from
the network. The read side turns stored rows into :class:`GatewayView` rows, per-venue
adoption series (one grouped query, both dialects) and the exposure-venues list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from contract import names
from contract.health import HealthError, conditions, describe_state, parse_health
from contract.registry import Registry
from matcher.rows import GatewayState, VenueInfo
from matcher.store import Store
from mqtt import topics
from mqtt.client import Message, MqttClient

log = logging.getLogger(__name__)

STATUS_STATES = ("online", "offline")
MAX_STATUS_BYTES = 4096
_CODE = names.VENUE_RE  # venue, province and district codes


# -- consumer (status and health topics) --------------------------------------------------------

def _status_of(payload: bytes) -> tuple[str, float | None] | None:
    """``(state, ts)`` of a status payload: the sync's JSON, or bare ``online``/``offline``."""
    if len(payload) > MAX_STATUS_BYTES:
        return None
    text = payload.decode("utf-8", "replace").strip()
    if text in STATUS_STATES:
        return text, None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("state") not in STATUS_STATES:
        return None
    ts = doc.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return str(doc["state"]), float(ts)
    return str(doc["state"]), None


def consume_message(store: Store, registry: Registry, topic: str, payload: bytes, *,
                    retained: bool = False, at: float | None = None) -> str:
    """Store one status or health message; return what happened.

    Args:
        store: the matcher's store.
        registry: known gateways (a topic's gateway must be registered at that venue).
        topic: ``bz/v1/{p}/{v}/{g}/status`` or ``.../health``.
        payload: the message body.
        retained: the broker delivered a retained message (stale by an unknown amount).
        at: receive time (default now).

    Returns:
        ``status``, ``health``, ``unchanged`` (a retained status equal to the stored one),
        ``ignored`` (another topic), or the counted reason: ``unknown_gateway``,
        ``topic_mismatch``, ``bad_status``, ``bad_health``.
    """
    now = time.time() if at is None else at
    parts = topics.parse(topic)
    if parts is None or parts[3] not in ("status", "health"):
        return "ignored"
    province, venue, gw, leaf = parts
    entry = registry.gateways.get(gw)
    if entry is None:
        store.count(f"{leaf}_unknown_gateway", gw)
        return "unknown_gateway"
    if (entry.province, entry.venue) != (province, venue):
        store.count(f"{leaf}_topic_mismatch", gw)
        return "topic_mismatch"
    if leaf == "status":
        got = _status_of(payload)
        if got is None:
            store.count("bad_status", gw)
            return "bad_status"
        state, ts = got
        if retained:
            known = store.db.scalar("SELECT status FROM gateways WHERE gateway_id = ?", (gw,))
            if known == state:
                return "unchanged"  # a matcher restart re-reads the same retained status
            # A retained status was true at least since it was published.
            since = ts if ts is not None and ts <= now else now
        else:
            # The will's ts is from when it was set (connect time): receipt time is better.
            since = now
        store.set_status(entry, state, at=since)
        return "status"
    try:
        doc = parse_health(payload)
    except HealthError as err:
        store.count("bad_health", gw)
        log.warning("health from %s refused: %s", gw, err)
        return "bad_health"
    if doc.get("gateway") != gw:
        store.count("health_topic_mismatch", gw)
        return "topic_mismatch"
    store.set_health(entry, doc, at=now)
    return "health"


async def consume_gateway_reports(client: MqttClient, store: Store, registry: Registry,
                                  stop: asyncio.Event) -> None:
    """Subscribe ``client`` to every status and health topic and store them until ``stop``."""
    await client.subscribe(topics.ALL_STATUS)
    await client.subscribe(topics.ALL_HEALTH)

    async def loop() -> None:
        msg: Message
        async for msg in client.messages():
            consume_message(store, registry, msg.topic, msg.payload, retained=msg.retain)

    task = asyncio.create_task(loop())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, waiter):
            t.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


# -- gateways -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Filters:
    """Dashboard filters; empty strings mean "all"."""

    province: str = ""
    district: str = ""
    venue: str = ""

    def match(self, v: VenueInfo) -> bool:
        """Whether a venue passes the filters."""
        return ((not self.province or v.province == self.province)
                and (not self.district or v.district == self.district)
                and (not self.venue or v.venue == self.venue))


def parse_filters(query: Mapping[str, str]) -> tuple[Filters, list[str]]:
    """Filters from query parameters; malformed values are dropped and reported."""
    got: dict[str, str] = {}
    problems = []
    for key in ("province", "district", "venue"):
        value = query.get(key, "").strip()
        if value and not _CODE.match(value):
            problems.append(f"{key}: not a code")
            continue
        got[key] = value
    return Filters(**got), problems


@dataclass(frozen=True, slots=True)
class GatewayView:
    """One dashboard row."""

    gateway_id: str
    venue: VenueInfo
    link: str  # online | offline | silent (online, health overdue) | unknown
    link_since: float | None
    state: dict[str, Any] | None  # the health ``state`` block, recomputed here
    last_batch_at: float | None
    batches: int
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    disk_fill: float | None
    clock_synced: bool | None
    health_at: float | None


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _part(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key)
    return v if isinstance(v, Mapping) else {}


def gateway_view(g: GatewayState, now: float, stale_after_s: float) -> GatewayView:
    """A stored gateway as the dashboard shows it."""
    h = g.health or {}
    if g.status == "offline":
        link, since = "offline", g.status_at
    elif g.status == "online":
        stale = g.health_at is None or now - g.health_at > stale_after_s
        link, since = ("silent", g.health_at) if stale and g.health_at else ("online",
                                                                           g.status_at)
    else:
        link, since = "unknown", None
    # Recomputed rather than trusted: the gateway's own words may be older than its status.
    state = describe_state(conditions(h), now) if g.health else None
    outbox, disk, clock = (_part(h, k) for k in ("outbox", "disk", "clock"))
    depth = _num(outbox.get("depth"))
    synced = clock.get("synced")
    return GatewayView(
        gateway_id=g.gateway_id, venue=g.venue, link=link, link_since=since, state=state,
        last_batch_at=g.last_batch_at, batches=g.batches,
        outbox_depth=int(depth) if depth is not None else None,
        outbox_oldest_age_s=_num(outbox.get("oldest_age_s")),
        disk_fill=_num(disk.get("fill")),
        clock_synced=synced if isinstance(synced, bool) else None, health_at=g.health_at)


def list_gateways(store: Store, filters: Filters, *, now: float,
                  stale_after_s: float = 900.0) -> list[GatewayView]:
    """Dashboard rows for every gateway whose venue passes ``filters``."""
    return [gateway_view(g, now, stale_after_s) for g in store.gateways()
            if filters.match(g.venue)]


# -- adoption -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AdoptionPoint:
    """Counts summed over one time bucket at one venue."""

    t: int
    bluezone: int
    gaen: int
    other_phones: int

    @property
    def phones(self) -> int:
        """Every phone counted."""
        return self.bluezone + self.gaen + self.other_phones

    @property
    def share(self) -> float | None:
        """Bluezone share of phones, ``None`` without phones."""
        return self.bluezone / self.phones if self.phones else None


def adoption_series(store: Store, venue_ids: Sequence[int], *, since: float, until: float,
                    bucket_s: int = 3600) -> dict[int, list[AdoptionPoint]]:
    """Adoption counts per venue and time bucket (oldest first), in one grouped query.

    Windows are assigned to the bucket their start falls in; several gateways at one venue
    add up (the share stays a share).
    """
    if bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    out: dict[int, list[AdoptionPoint]] = {v: [] for v in venue_ids}
    if not venue_ids:
        return out
    marks = ", ".join("?" for _ in venue_ids)
    b = int(bucket_s)  # an int literal in the SQL: integer division on both dialects
    rows = store.db.execute(
        f"SELECT venue_id, (window_start / {b}) * {b} AS bucket, SUM(bluezone), SUM(gaen), "
        f"SUM(other_phones) FROM adoption_counts WHERE venue_id IN ({marks}) AND "
        "window_start >= ? AND window_start < ? GROUP BY venue_id, bucket "
        "ORDER BY venue_id, bucket", (*venue_ids, int(since), math.ceil(until)))
    for vid, bucket, bz, en, other in rows:
        out[int(vid)].append(AdoptionPoint(int(bucket), int(bz), int(en), int(other)))
    return out


# -- exposure venues ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExposureVenue:
    """A venue and time window where a confirmed case was (the public list)."""

    province: str
    district: str
    venue: str
    name: str
    start: float
    end: float


def _when(v: object) -> float | None:
    """Epoch seconds from a number or an ISO 8601 time with its offset."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    if isinstance(v, str):
        try:
            t = datetime.fromisoformat(v)
        except ValueError:
            return None
        return t.timestamp() if t.tzinfo is not None else None
    return None


def exposure_venues(items: object) -> list[ExposureVenue]:
    """Items of a public list (``matcher.report.public_venues``), newest first.

    Items without a province, venue code and a zoned ``from``/``to`` are skipped.
    """
    out = set()
    for it in items if isinstance(items, list) else []:
        if not isinstance(it, dict):
            continue
        start, end = _when(it.get("from")), _when(it.get("to"))
        p, v = it.get("province"), it.get("venue")
        if start is None or end is None or not isinstance(p, str) or not isinstance(v, str):
            continue
        out.add(ExposureVenue(province=p, district=str(it.get("district") or ""), venue=v,
                              name=str(it.get("name") or v), start=start, end=end))
    return sorted(out, key=lambda e: (-e.start, e.province, e.venue))


def load_exposure_venues(path: Path) -> list[ExposureVenue]:
    """The public exposure-venues lists under ``path`` (a file, or a folder searched for
    ``exposure_venues.json``), merged; unreadable files are logged and skipped.
    """
    files = [path] if path.is_file() else sorted(path.glob("**/exposure_venues.json"))
    items: list[Any] = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("exposure venues %s unreadable: %s", f, err)
            continue
        got = data.get("venues") if isinstance(data, dict) else data
        if isinstance(got, list):
            items.extend(got)
    return exposure_venues(items)
