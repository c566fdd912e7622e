"""Exposure reports from a :class:`~matcher.match.MatchResult`: JSON, CSV, HTML, public list.

Files written by :func:`write_reports` (all UTF-8):

- ``report.json``: everything, for the health office (contains personal data);
- ``report.csv``: one row per (window, co-present check-in), a window without any check-in
  on one row; opens in a spreadsheet (UTF-8 with BOM);
- ``report.html``: one self-contained page in Vietnamese and English (no external assets,
  every text escaped);
- ``exposure_venues.json`` / ``.csv``: the public list, venue and time window only, windows
  widened to whole quarter hours and merged per venue, nothing about any person.

Times are shown in Vietnam time (UTC+7, no daylight saving) and kept as epoch seconds in JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from matcher.match import VN_TIME as VN
from matcher.match import CoPresent, ExposureWindow, MatchResult

PUBLIC_GRID_S = 900
CSV_COLUMNS = (
    "case", "province", "district", "venue", "venue_name", "start", "end", "dwell_min", "via",
    "proximity", "rssi_max", "gateways", "clock_synced", "clock_corrected",
    "clock_uncertainty_s",
    "other_bluezone_ids", "other_gaen_ids", "peak_bluezone_phones", "peak_gaen_phones",
    "other_phones_max", "contact_time", "contact_kind", "contact_subject", "contact_masked",
    "contact_name", "contact_phone")


def local(ts: float) -> str:
    """``2021-08-12 14:05`` in Vietnam time."""
    return datetime.fromtimestamp(ts, VN).strftime("%Y-%m-%d %H:%M")


def iso(ts: float) -> str:
    """ISO 8601 in Vietnam time with its offset."""
    return datetime.fromtimestamp(ts, VN).isoformat(timespec="seconds")


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no infinity: unbounded becomes null


def _contact(c: CoPresent) -> dict[str, Any]:
    return {"time": c.ts, "time_local": iso(c.ts), "kind": c.kind, "opened": c.opened,
            "subject": c.subject, "masked": c.masked, "fields": c.fields,
            "gateway": c.gateway_id}


def _window(w: ExposureWindow) -> dict[str, Any]:
    return {
        "case": w.case, "venue": {"key": w.venue.key, "province": w.venue.province,
                                  "district": w.venue.district, "code": w.venue.venue,
                                  "name": w.venue.name},
        "start": w.start, "end": w.end, "start_local": iso(w.start), "end_local": iso(w.end),
        "dwell_s": w.dwell_s, "via": w.via, "proximity": w.proximity, "rssi_max": w.rssi_max,
        "sightings": w.sightings, "checkins": w.checkins, "gateways": w.gateways,
        "clock": {"synced": w.clock_synced, "corrected": w.clock_corrected,
                  "uncertainty_s": _num(w.clock_uncertainty_s),
                  "note": clock_note(w)},
        "co_present_checkins": [_contact(c) for c in w.co_present],
        "other_ids": w.other_ids, "peak_phones": w.peak_phones,
        "adoption": {"windows": w.adoption.windows, "max_bluezone": w.adoption.max_bluezone,
                     "max_gaen": w.adoption.max_gaen,
                     "max_other_phones": w.adoption.max_other_phones},
    }


def to_dict(result: MatchResult) -> dict[str, Any]:
    """The whole result as plain JSON-able data."""
    return {
        "format": "bzgw-exposure-report/v1", "source": result.source,
        "input_format": result.format, "signer": result.signer,
        "generated_at": result.generated_at, "generated_local": iso(result.generated_at),
        "params": {"margin_s": result.params.margin_s,
                   "merge_gap_s": result.params.merge_gap_s},
        "skipped_inputs": result.skipped,
        "cases": [{"label": c.label, "kind": c.kind, "ids": c.n_ids, "hits": c.hits,
                   "out_of_window": c.out_of_window, "needs_approval": c.needs_approval,
                   "windows": [_window(w) for w in c.windows]} for c in result.cases],
        "identities": {"opened": result.opened_checkins, "sealed": result.sealed_checkins,
                       "opening": result.opening},
        "exposure_venues": public_venues(result),
    }


def csv_rows(result: MatchResult) -> list[dict[str, Any]]:
    """Rows of ``report.csv``."""
    rows = []
    for w in result.windows:
        base = {
            "case": w.case, "province": w.venue.province, "district": w.venue.district,
            "venue": w.venue.venue, "venue_name": w.venue.name, "start": iso(w.start),
            "end": iso(w.end), "dwell_min": round(w.dwell_s / 60, 1), "via": "+".join(w.via),
            "proximity": w.proximity, "rssi_max": w.rssi_max, "gateways": " ".join(w.gateways),
            "clock_synced": w.clock_synced,
            "clock_corrected": w.clock_corrected,
            "clock_uncertainty_s": _num(w.clock_uncertainty_s),
            "other_bluezone_ids": w.other_ids.get("bluezone", 0),
            "other_gaen_ids": w.other_ids.get("gaen", 0),
            "peak_bluezone_phones": w.peak_phones.get("bluezone", 0),
            "peak_gaen_phones": w.peak_phones.get("gaen", 0),
            "other_phones_max": w.adoption.max_other_phones}
        if not w.co_present:
            rows.append(base)
        for c in w.co_present:
            rows.append({**base, "contact_time": iso(c.ts), "contact_kind": c.kind,
                         "contact_subject": c.subject or "", "contact_masked": c.masked,
                         "contact_name": (c.fields or {}).get("name", ""),
                         "contact_phone": (c.fields or {}).get("phone", "")})
    return rows


def public_venues(result: MatchResult) -> list[dict[str, Any]]:
    """Venues and time windows only, on a quarter-hour grid, merged per venue."""
    spans: dict[tuple[str, str, str, str], list[list[float]]] = {}
    for w in result.windows:
        key = (w.venue.province, w.venue.district, w.venue.venue, w.venue.label)
        a = float(math.floor(w.start / PUBLIC_GRID_S) * PUBLIC_GRID_S)
        b = float(math.ceil(max(w.end, w.start + 1) / PUBLIC_GRID_S) * PUBLIC_GRID_S)
        spans.setdefault(key, []).append([a, b])
    out = []
    for (prov, dist, code, name), items in sorted(spans.items()):
        items.sort()
        merged = [items[0]]
        for a, b in items[1:]:
            if a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            out.append({"province": prov, "district": dist, "venue": code, "name": name,
                        "from": iso(a), "to": iso(b)})
    return sorted(out, key=lambda r: (r["from"], r["venue"]))


# ---------------------------------------------------------------- HTML

_PROX = {"near": ("gần (< 2 m)", "near (< 2 m)"), "medium": ("trung bình", "medium"),
         "far": ("xa", "far"), "unknown": ("không rõ", "unknown")}
_VIA = {"bluezone": ("Bluezone", "Bluezone"), "gaen": ("Thông báo phơi nhiễm", "Exposure "
        "Notification"), "checkin": ("Quét QR", "QR check-in")}
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:70em;padding:1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}.warn{background:#fff4d6;border:1px solid #e0b84f;padding:.5em}
.lang{float:right}.lang button{margin-left:.3em}.muted{color:#666}
html[lang=vi] .en,html[lang=en] .vi{display:none}
"""
_JS = "function setLang(l){document.documentElement.lang=l}"


def _t(vi: str, en: str) -> str:
    """Both languages; CSS shows the selected one."""
    return f'<span class="vi">{escape(vi)}</span><span class="en">{escape(en)}</span>'


_CONFIDENTIAL = _t("MẬT: có dữ liệu cá nhân, chỉ dùng cho truy vết.",
                   "CONFIDENTIAL: contains personal data, for contact tracing only.")


def _span(a: float, b: float) -> str:
    la, lb = local(a), local(b)
    return f"{la} – {lb[11:] if la[:10] == lb[:10] else lb}"


def _dur(s: float) -> str:
    m = round(s / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def clock_note(w: ExposureWindow) -> str:
    """What the window's times rest on, in plain English (for JSON and CSV readers)."""
    if not math.isfinite(w.clock_uncertainty_s):
        return ("time uncertain: the gateway's clock was never synchronised for these records; "
                "the venue is right, the times may not be")
    if w.clock_corrected:
        return (f"times corrected after capture from the gateway's later clock sync, "
                f"±{w.clock_uncertainty_s:.1f} s")
    if not w.clock_synced:
        return f"gateway clock estimated from matcher acks, ±{w.clock_uncertainty_s:.1f} s"
    return "gateway clock synchronised"


def _window_rows(w: ExposureWindow) -> str:
    prox = _t(*_PROX.get(w.proximity, (w.proximity, w.proximity)))
    via = ", ".join(_t(*_VIA.get(v, (v, v))) for v in w.via)
    clock = (_t("đồng bộ", "synced") if w.clock_synced else _t("chưa đồng bộ", "not synced"))
    if w.clock_corrected:
        clock += ", " + _t("đã hiệu chỉnh", "corrected")
    if not math.isfinite(w.clock_uncertainty_s):
        clock += " ±∞ (" + _t("giờ không xác định", "time unknown") + ")"
    elif w.clock_uncertainty_s:
        clock += f" ±{w.clock_uncertainty_s:.0f} s"
    others = (f"Bluezone {w.other_ids.get('bluezone', 0)} / EN {w.other_ids.get('gaen', 0)}"
              f" ({_t('đỉnh', 'peak')} {w.peak_phones.get('bluezone', 0)}/"
              f"{w.peak_phones.get('gaen', 0)}); {_t('điện thoại khác', 'other phones')} ≤ "
              f"{w.adoption.max_other_phones}")
    return (f"<tr><td>{escape(w.venue.label)}<br><span class=muted>{escape(w.venue.key)}"
            f"</span></td><td>{escape(_span(w.start, w.end))}</td>"
            f"<td>{escape(_dur(w.dwell_s))}</td><td>{via}</td><td>{prox}"
            f"{'' if w.rssi_max is None else f' ({w.rssi_max} dBm)'}</td><td>{clock}</td>"
            f"<td>{len(w.co_present)}</td><td>{others}</td></tr>")


def _contacts(w: ExposureWindow) -> str:
    if not w.co_present:
        return ""
    sealed = _t("niêm phong: cần phê duyệt", "sealed: needs approval")
    rows = "".join(
        f"<tr><td>{escape(local(c.ts))}</td><td>{escape(c.kind)}</td>"
        f"<td>{escape(c.subject) if c.subject is not None else escape(c.masked)}</td>"
        f"<td>{escape((c.fields or {}).get('name', '')) if c.opened else sealed}</td>"
        f"<td>{escape((c.fields or {}).get('phone', ''))}</td>"
        f"<td>{escape(c.gateway_id)}</td></tr>" for c in w.co_present)
    head = "".join(f"<th>{_t(vi, en)}</th>" for vi, en in (
        ("Thời điểm", "Time"), ("Loại", "Kind"), ("Số giấy tờ", "ID number"),
        ("Họ tên", "Name"), ("Điện thoại", "Phone"), ("Thiết bị", "Gateway")))
    title = _t(f"Người check-in cùng lúc tại {w.venue.label}, {local(w.start)}",
               f"Co-present check-ins at {w.venue.label}, {local(w.start)}")
    return f"<h3>{title}</h3><table><tr>{head}</tr>{rows}</table>"


def render_html(result: MatchResult) -> str:
    """The bilingual report page."""
    head = "".join(f"<th>{_t(vi, en)}</th>" for vi, en in (
        ("Địa điểm", "Venue"), ("Thời gian", "Time window"), ("Lưu lại", "Dwell"),
        ("Phát hiện qua", "Detected via"), ("Khoảng cách", "Proximity"), ("Đồng hồ", "Clock"),
        ("Check-in cùng lúc", "Co-present check-ins"), ("Điện thoại khác", "Other phones")))
    parts = []
    for c in result.cases:
        summary = _t(f"{c.n_ids} mã, {c.hits} lần khớp, {c.out_of_window} ngoài khung giờ",
                     f"{c.n_ids} IDs, {c.hits} hits, {c.out_of_window} outside their window")
        parts.append(f"<h2>{_t('Ca', 'Case')} {escape(c.label)} <span class=muted>"
                     f"({escape(c.kind)}; {summary})</span></h2>")
        if c.needs_approval:
            parts.append("<p class=warn>" + _t(
                "Tra cứu theo danh tính cần phê duyệt của các bên giữ khóa.",
                "An identity lookup needs the custodians’ approval.") + "</p>")
            continue
        if not c.windows:
            parts.append(f"<p>{_t('Không tìm thấy lần có mặt nào.', 'No exposure found.')}</p>")
            continue
        rows = "".join(_window_rows(w) for w in c.windows)
        parts.append(f"<table><tr>{head}</tr>{rows}</table>")
        parts.extend(_contacts(w) for w in c.windows)
    pub = public_venues(result)
    pub_rows = "".join(f"<tr><td>{escape(v['name'])}</td><td>{escape(v['province'])}"
                       f"{' / ' + escape(v['district']) if v['district'] else ''}</td>"
                       f"<td>{escape(v['from'][:16].replace('T', ' '))} – "
                       f"{escape(v['to'][11:16])}</td></tr>" for v in pub)
    pub_head = "".join(f"<th>{_t(vi, en)}</th>" for vi, en in (
        ("Địa điểm", "Venue"), ("Tỉnh / huyện", "Province / district"),
        ("Thời gian", "Time window")))
    meta = (f"<p class=muted>{_t('Nguồn', 'Source')}: {escape(result.source)} "
            f"({escape(result.format)}), {_t('người ký', 'signer')}: {escape(result.signer)}, "
            f"{_t('tạo lúc', 'generated')}: {escape(local(result.generated_at))} (UTC+7), "
            f"{_t('biên', 'margin')} ±{result.params.margin_s / 60:.0f} min"
            f"{'' if not result.skipped else f', {result.skipped} skipped'}</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"vi\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Báo cáo phơi nhiễm F0 / F0 exposure report</title>"
        f"<style>{_CSS}</style><noscript><style>html .en,html .vi{{display:inline}}</style>"
        f"</noscript><script>{_JS}</script></head><body>"
        "<div class=lang><button type=button onclick=\"setLang('vi')\">Tiếng Việt</button>"
        "<button type=button onclick=\"setLang('en')\">English</button></div>"
        f"<h1>{_t('Báo cáo phơi nhiễm F0', 'F0 exposure report')}</h1>{meta}"
        f"<p class=warn>{_CONFIDENTIAL}</p>"
        + "".join(parts)
        + f"<h2>{_t('Địa điểm có nguy cơ (công bố công khai)', 'Exposure venues (public list)')}"
        f"</h2><table><tr>{pub_head}</tr>{pub_rows}</table></body></html>\n")


# ---------------------------------------------------------------- files


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return "\ufeff" + buf.getvalue()  # BOM: spreadsheets then read Vietnamese text as UTF-8


def write_reports(result: MatchResult, out_dir: Path) -> dict[str, Path]:
    """Write every report file into ``out_dir``; return their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub = public_venues(result)
    files = {
        "json": ("report.json", json.dumps(to_dict(result), ensure_ascii=False, indent=1)),
        "csv": ("report.csv", _csv(csv_rows(result), CSV_COLUMNS)),
        "html": ("report.html", render_html(result)),
        "public_json": ("exposure_venues.json", json.dumps(
            {"generated": iso(result.generated_at), "venues": pub}, ensure_ascii=False,
            indent=1)),
        "public_csv": ("exposure_venues.csv", _csv(pub, ("province", "district", "venue",
                                                         "name", "from", "to"))),
    }
    paths = {}
    for key, (name, text) in files.items():
        p = out / name
        p.write_text(text, encoding="utf-8")
        paths[key] = p
    return paths


def utc(ts: float) -> str:
    """ISO 8601 in UTC (for logs)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
