"""Parsers for the inner F0 files (after :mod:`matcher.f0` has verified their signature).

Each returns :class:`~matcher.f0.F0Case` objects or raises
:class:`~core.errors.F0InputError` naming the entry and field that is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import TYPE_CHECKING, Any

from ble.ids import BLUEZONE_DEFAULT_MAX, DAY, EN_ROLLING_PERIOD, next_daily_key
from contract.identity import normalize_cccd, normalize_phone
from core.errors import F0InputError
from matcher import en_export
from matcher.ids import bluezone_block, bluezone_count, en_block

if TYPE_CHECKING:
    from matcher.f0 import F0Case

EN_TOLERANCE_S = 7200.0  # the EN spec's ±2 h: an RPI may be seen up to 2 h outside its slot
MAX_SPAN_DAYS = 60  # no F0 window is longer than the longest retention the matcher allows
MS_THRESHOLD = 100_000_000_000  # a "seconds" value this large is milliseconds (Android)


def _case(**kw: Any) -> F0Case:
    from matcher.f0 import F0Case

    return F0Case(**kw)


def _int(v: object, where: str) -> int:
    if isinstance(v, bool):
        raise F0InputError(f"{where}: expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise F0InputError(f"{where}: expected an integer, got {type(v).__name__}")


def _epoch(v: object, where: str) -> int:
    t = _int(v, where)
    if t < 0:
        raise F0InputError(f"{where}: negative time")
    return t // 1000 if t >= MS_THRESHOLD else t


def _hex32(v: object, where: str) -> bytes:
    if not isinstance(v, str):
        raise F0InputError(f"{where}: expected 64 hex digits")
    try:
        raw = bytes.fromhex(v.strip())
    except ValueError as err:
        raise F0InputError(f"{where}: not hex") from err
    if len(raw) != 32:
        raise F0InputError(f"{where}: must be 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def _obj(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise F0InputError(f"{where}: expected an object")
    return v


def bluezone_infof(doc: object, label: str) -> list[F0Case]:
    """The push shape: ``{"data": [{"daily_key", "time_start", "time_end", "max"}]}``."""
    d = _obj(doc, "bluezone-infof")
    if "data" not in d and "InfoF" in d:  # the push carries InfoF as a JSON string
        inner = d["InfoF"]
        try:
            d = _obj(json.loads(inner) if isinstance(inner, str) else inner, "InfoF")
        except ValueError as err:
            raise F0InputError(f"InfoF: not valid JSON: {err}") from err
    entries = d.get("data")
    if not isinstance(entries, list) or not entries:
        raise F0InputError("bluezone-infof: \"data\" must be a non-empty list")
    parsed: list[tuple[bytes, int, int, int]] = []
    names: list[str] = []
    for i, e in enumerate(entries):
        where = f"bluezone-infof data[{i}]"
        e = _obj(e, where)
        dk = _hex32(e.get("daily_key"), f"{where}.daily_key")
        t0 = _epoch(e.get("time_start"), f"{where}.time_start")
        t1 = _epoch(e.get("time_end"), f"{where}.time_end")
        mx = _int(e.get("max", BLUEZONE_DEFAULT_MAX), f"{where}.max")
        if mx <= 0 or DAY % mx:
            raise F0InputError(f"{where}.max: must divide 86400 evenly, got {mx}")
        if t1 < t0:
            raise F0InputError(f"{where}: time_end is before time_start")
        if t1 - t0 > MAX_SPAN_DAYS * DAY:
            raise F0InputError(f"{where}: window of {(t1 - t0) / DAY:.0f} days is longer "
                               f"than {MAX_SPAN_DAYS}")
        parsed.append((dk, t0, t1, mx))
        names.append(str(e.get("label") or (label if len(entries) == 1 else
                                            f"{label} #{i + 1}")))
    # One derivation for every entry: large inputs are spread over the cores.
    block = bluezone_block(parsed, workers=os.cpu_count() or 1)
    cases, at = [], 0
    for (_dk, t0, t1, mx), name in zip(parsed, names, strict=True):
        n = bluezone_count(t0, t1, mx)
        cases.append(_case(label=name, kind="bluezone", block=block.slice(at, at + n),
                           tolerance_s=float(DAY // mx)))
        at += n
    return cases


def bluezone_upload(doc: object, label: str, now: float, window_days: float) -> list[F0Case]:
    """An F0's upload ``{"base_id", "time"}``: IDs from the window before ``now``."""
    d = _obj(doc, "bluezone-upload")
    if "InfoF" in d:
        try:
            d = _obj(json.loads(d["InfoF"]) if isinstance(d["InfoF"], str) else d["InfoF"],
                     "InfoF")
        except ValueError as err:
            raise F0InputError(f"InfoF: not valid JSON: {err}") from err
    base = _hex32(d.get("base_id"), "bluezone-upload.base_id")
    d0 = _epoch(d.get("time"), "bluezone-upload.time")
    mx = _int(d.get("max", BLUEZONE_DEFAULT_MAX), "bluezone-upload.max")
    if mx <= 0 or DAY % mx:
        raise F0InputError(f"bluezone-upload.max: must divide 86400 evenly, got {mx}")
    if d0 % DAY:
        raise F0InputError("bluezone-upload.time: must be a UTC midnight (the base key's day)")
    if d0 > now:
        raise F0InputError("bluezone-upload.time is after the matching time")
    first_day = max(d0, int((now - window_days * DAY) // DAY * DAY))
    dk = base
    for _ in range((first_day - d0) // DAY):  # the chain only runs forward
        dk = next_daily_key(dk)
    return [_case(label=label, kind="bluezone",
                  block=bluezone_block([(dk, first_day, int(now), mx)]),
                  tolerance_s=float(DAY // mx))]


def _teks_to_case(teks: list[en_export.Tek], label: str) -> F0Case:
    return _case(label=label, kind="gaen",
                 block=en_block([(t.key, t.rolling_start, t.rolling_period) for t in teks]),
                 tolerance_s=EN_TOLERANCE_S)


def gaen_export(payload: bytes, label: str) -> tuple[list[F0Case], int]:
    """A key export zip (its signature is the envelope's or was checked by the caller)."""
    export_bin, _sig = en_export.read_export_zip(payload)
    exp = en_export.parse_export_bin(export_bin)
    usable = [t for t in exp.keys + exp.revised_keys if t.rolling_start + t.rolling_period
              <= 2**32]
    skipped = exp.skipped + len(exp.keys) + len(exp.revised_keys) - len(usable)
    if not usable:
        raise F0InputError("key export holds no usable key")
    return [_teks_to_case(usable, label)], skipped


def _tek_field(e: dict[str, Any], *names: str) -> object:
    return next((e[n] for n in names if n in e), None)


def gaen_json(doc: object, label: str) -> tuple[list[F0Case], int]:
    """A JSON TEK list (publish-API or export field names)."""
    d = _obj(doc, "gaen-json")
    entries = d.get("temporaryExposureKeys", d.get("keys"))
    if not isinstance(entries, list) or not entries:
        raise F0InputError("gaen-json: \"temporaryExposureKeys\" (or \"keys\") must be a "
                           "non-empty list")
    teks = []
    for i, e in enumerate(entries):
        where = f"gaen-json key[{i}]"
        e = _obj(e, where)
        raw = _tek_field(e, "key", "key_data", "keyData")
        if not isinstance(raw, str):
            raise F0InputError(f"{where}.key: expected base64 (or hex) of 16 bytes")
        try:
            key = bytes.fromhex(raw) if len(raw) == 32 else base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as err:
            raise F0InputError(f"{where}.key: neither base64 nor hex") from err
        if len(key) != 16:
            raise F0InputError(f"{where}.key: must be 16 bytes, got {len(key)}")
        start = _int(_tek_field(e, "rollingStartNumber", "rolling_start_interval_number",
                                "rollingStartIntervalNumber"), f"{where}.rollingStartNumber")
        period = _int(_tek_field(e, "rollingPeriod", "rolling_period") or EN_ROLLING_PERIOD,
                      f"{where}.rollingPeriod")
        if not 1 <= period <= EN_ROLLING_PERIOD:
            raise F0InputError(f"{where}.rollingPeriod: must be 1..144, got {period}")
        if not 0 <= start <= 2**32 - period:
            raise F0InputError(f"{where}.rollingStartNumber: out of range")
        teks.append(en_export.Tek(key, start, period))
    return [_teks_to_case(teks, label)], 0


def identities(doc: object, label: str) -> list[F0Case]:
    """``{"identities": [{"case", "cccd" | "phone" | "subject", "since", "until"}]}``."""
    d = _obj(doc, "identity")
    entries = d.get("identities")
    if not isinstance(entries, list) or not entries:
        raise F0InputError("identity: \"identities\" must be a non-empty list")
    cases = []
    for i, e in enumerate(entries):
        where = f"identity[{i}]"
        e = _obj(e, where)
        subjects: list[str] = []
        phones: list[str] = []
        if "cccd" in e:
            c = normalize_cccd(str(e["cccd"]))
            if c is None:
                raise F0InputError(f"{where}.cccd: must be 12 digits (or a 9-digit old ID)")
            subjects.append(c)
        if "phone" in e:
            p = normalize_phone(str(e["phone"]))
            if p is None:
                raise F0InputError(f"{where}.phone: not a phone number")
            phones.append(p)
        if "subject" in e:
            s = e["subject"]
            if not isinstance(s, str) or not s or len(s) > 200:
                raise F0InputError(f"{where}.subject: must be a non-empty string")
            subjects.append(s)
        if not subjects and not phones:
            raise F0InputError(f"{where}: needs a cccd, phone or subject")
        since = _epoch(e["since"], f"{where}.since") if "since" in e else None
        until = _epoch(e["until"], f"{where}.until") if "until" in e else None
        if since is not None and until is not None and until < since:
            raise F0InputError(f"{where}: until is before since")
        name = str(e.get("case") or (label if len(entries) == 1 else f"{label} #{i + 1}"))
        cases.append(_case(label=name, kind="identity", subjects=tuple(subjects),
                           phones=tuple(phones), since=since, until=until,
                           tolerance_s=0.0))
    return cases
