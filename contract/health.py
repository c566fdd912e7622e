"""The health document a gateway publishes and the matcher reads: its schema, its states.

One dict shared by the gateway's status page, ``/metrics`` and health topic, and by the
provincial dashboard. :class:`HealthDoc` is its schema (a msgspec ``Struct``; unknown keys allowed,
so newer gateways can add fields and the sync adds its own block); :func:`validate_health`
checks any document and never raises, so the matcher can take health from the network;
:func:`conditions` derives what is wrong, in a fixed order of precedence, and
:func:`describe_state` words the first one in Vietnamese and English for staff ("Mất kết nối
từ 10:42 / Offline since 10:42", venue local time). The gateway builds documents in
:mod:`gateway.health`.

Nothing about a person is in it: counts only, and error texts with anything shaped like a MAC
address masked.
"""

from __future__ import annotations

import json
import re
import sys
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from core.errors import BzgwError

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


class HealthError(BzgwError):
    """A health document is malformed.

    Attributes:
        problems: one ``path: what is wrong`` line each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid health document: " + "; ".join(problems[:5]))



# -- text ----------------------------------------------------------------------------------

def scrub(text: str | None) -> str:
    """An error text safe to publish: MAC-shaped substrings masked, length bounded."""
    if not text:
        return ""
    return _MAC.sub(lambda m: "**:**:**:**:**:" + m.group(0)[-2:], text)[:_MAX_TEXT]



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

def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# Each leaf's Meta description is the "expected <what>" of its problems, for the dashboard's
# log. msgspec converts strictly here: no "1" for 1, no true for 1.
_FINITE = sys.float_info.max  # `le` of this refuses inf; any `ge`/`gt` refuses NaN
Int = Annotated[int, Meta(ge=0, le=2**63 - 1, description="a non-negative integer")]
Num = Annotated[float, Meta(ge=0, le=_FINITE, description="a non-negative number")]
Time = Annotated[float, Meta(gt=0, le=_FINITE, description="an epoch time in seconds")]
Text = Annotated[str, Meta(max_length=_MAX_TEXT, description="a short string")]
Flag = Annotated[bool, Meta(description="true or false")]
ShortList = Annotated[list[Any], Meta(max_length=len(PRECEDENCE), description="a short list")]


def _one_of(values: frozenset[str] | tuple[str, ...]) -> Meta:
    alternatives = "|".join(re.escape(v) for v in sorted(values))
    return Meta(pattern=rf"^(?:{alternatives})\Z",
                description=f"one of {', '.join(sorted(values))}")


class _Part(msgspec.Struct, frozen=True, kw_only=True):
    pass  # unknown keys are ignored: newer gateways add fields


class OutboxDoc(_Part, frozen=True, kw_only=True):
    depth: Int
    bytes: Int
    max_bytes: Int | None
    fill: Num | None
    oldest_age_s: Num | None
    dropped_batches: Int
    full: Flag


class DiskDoc(_Part, frozen=True, kw_only=True):
    total_bytes: Int | None
    free_bytes: Int | None
    fill: Num | None
    error: Text


class LinkDoc(_Part, frozen=True, kw_only=True):
    connected: Flag
    ever_connected: Flag
    last_sync: Time | None
    offline_since: Time | None


class RadioDoc(_Part, frozen=True, kw_only=True):
    state: Annotated[str, _one_of(RADIO_STATES)]
    detail: Text
    restarts: Int
    adverts: Int
    last_advert_at: Time | None


class CameraDoc(_Part, frozen=True, kw_only=True):
    state: Annotated[str, _one_of(CAMERA_STATES)]
    detail: Text
    restarts: Int


class ClockDoc(_Part, frozen=True, kw_only=True):
    synced: Flag
    source: Text
    uncertainty_s: Num | None


class CountsDoc(_Part, frozen=True, kw_only=True):
    checkins: Int
    batches: Int


class DroppedDoc(_Part, frozen=True, kw_only=True):
    outbox_batches: Int
    lost_records: Int
    feedback_events: Int
    phones_untracked: Int
    # added later: absent from older gateways' documents
    adverts: Int = 0  # source-queue overflow
    malformed_reports: Int = 0
    rejected_batches: Int = 0
    checkins_not_saved: Int = 0


class LoopDoc(_Part, frozen=True, kw_only=True):
    lag_p99_ms: Num | None
    lag_max_ms: Num | None


class PhonesDoc(_Part, frozen=True, kw_only=True):
    window_s: Num
    phones: Int
    bluezone: Int
    gaen: Int
    other_phones: Int
    devices: Int
    bluezone_share: Num | None


class StateDoc(_Part, frozen=True, kw_only=True):
    code: Annotated[str, _one_of(PRECEDENCE)]
    since: Time | None
    vi: Text
    en: Text
    also: ShortList


class HealthDoc(_Part, frozen=True, kw_only=True):
    """The whole document, version :data:`HEALTH_VERSION`."""

    v: Int
    gateway: Text
    ts: Time
    uptime_s: Num
    outbox: OutboxDoc
    disk: DiskDoc
    link: LinkDoc
    radio: RadioDoc
    camera: CameraDoc
    clock: ClockDoc
    counts: CountsDoc
    dropped: DroppedDoc
    phones: PhonesDoc | None
    state: StateDoc
    loop: LoopDoc | None = None  # the daemon's event-loop lag (absent from older gateways)


_AT = re.compile(r"^(?P<msg>.*?) - at `\$(?P<path>[^`]*)`$", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _expected(kind: Any, path: list[str | int]) -> tuple[str | None, bool]:
    """The description of the leaf at ``path`` below ``kind``, and whether it may be null."""
    nullable = False
    for step in [*path, None]:
        nullable = False
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            nullable, kind = len(args) < len(typing.get_args(kind)), args[0]
        metas = [m for m in getattr(kind, "__metadata__", ()) if isinstance(m, Meta)]
        if step is None:
            return next((m.description for m in metas if m.description), None), nullable
        base = typing.get_args(kind)[0] if metas else kind
        if isinstance(base, type) and issubclass(base, msgspec.Struct) and isinstance(step, str):
            kind = next((f.type for f in msgspec.structs.fields(base) if f.name == step), None)
        elif typing.get_origin(base) is list:
            kind = typing.get_args(base)[0]
        else:
            return None, False
    return None, False


def _problem(name: str, value: Any, err: msgspec.ValidationError) -> str:
    m = _AT.match(str(err))
    msg, where = (m.group("msg"), m.group("path")) if m else (str(err), "")
    path: list[str | int] = [name]
    for step in _STEP.finditer(where):
        path.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
    absent = re.match(r"^Object missing required field `([^`]*)`$", msg)
    if absent:
        return ".".join(str(p) for p in [*path, absent.group(1)]) + ": missing"
    at = ".".join(str(p) for p in path)
    for key in path[1:]:
        if isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            value = value.get(key) if isinstance(value, dict) else None
    if msg.startswith(("Expected `object`", "Expected `object |")):
        return f"{at}: expected an object, got {type(value).__name__}"
    what, nullable = _expected(HealthDoc, path)
    if what is None:
        return f"{at}: {msg}"
    return f"{at}: expected {what}{' or null' if nullable else ''}, got {_show(value)}"


def validate_health(doc: object) -> list[str]:
    """Problems of a document against :class:`HealthDoc`; empty when valid. Never raises.

    msgspec stops at a document's first error, so an invalid document is checked again field
    by field: the first problem of each top-level field (``outbox``, ``clock``...) is listed.
    """
    if not isinstance(doc, dict):
        return [f"(top): expected an object, got {type(doc).__name__}"]
    try:
        msgspec.convert(doc, HealthDoc)
    except msgspec.ValidationError:
        pass
    except RecursionError:
        return ["(top): nested too deeply"]
    else:
        if doc["v"] != HEALTH_VERSION:
            return [f"v: unsupported health version {doc['v']} (this reader knows "
                    f"{HEALTH_VERSION})"]
        return []
    problems = []
    for f in msgspec.structs.fields(HealthDoc):
        if f.name not in doc:
            if f.required:
                problems.append(f"{f.name}: missing")
            continue
        try:
            msgspec.convert(doc[f.name], f.type)
        except msgspec.ValidationError as err:
            problems.append(_problem(f.name, doc[f.name], err))
        except RecursionError:
            problems.append(f"{f.name}: nested too deeply")
    return problems or ["(top): not a valid health document"]


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
