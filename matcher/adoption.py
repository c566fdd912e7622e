"""Bluezone adoption by venue, district or province: what provinces report upward.

The figures come from the gateways' adoption counts (``adoption_counts``: one row per
gateway and counting window, normally 15 minutes). In each window a gateway counts distinct
Bluezone IDs, distinct EN RPIs and distinct other phones:

* a Bluezone phone changes its ID on the same 15-minute UTC grid as the window and its MAC
  address with it, so it is one Bluezone phone per window however often it rotates;
* an EN phone changes address and RPI together every 10-20 minutes, off the grid: it can
  count as 2 (rarely 3) in one window, so EN phones are over-counted;
* other phones are counted by address, which they rotate about every 15 minutes: mostly
  once, sometimes twice.

"Phones seen" is the sum of those per-window counts: *phone-windows*, so a phone that stays
an hour counts four times and a phone that passes by counts once. It is not the number of
different people, which cannot be known: no identifier survives a window (by design), and
phones with Bluetooth off, or iPhones whose apps are asleep, are not heard at all. The rate
``Bluezone / phones seen`` is therefore the Bluezone share of phone presence at the unit's
venues, weighted by time spent there. Several gateways at one venue add up (as on the
dashboard): where their ranges overlap a phone is counted by each, which leaves the rate
as it is. Days are calendar days in Vietnam time (UTC+7) with at least one count.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

from core.errors import BzgwError
from matcher.rows import VenueInfo
from matcher.store import Store

VN = timezone(timedelta(hours=7), "ICT")
VN_OFFSET_S = 7 * 3600
DAY = 86400
NO_DISTRICT = "(không rõ / unknown)"


class By(StrEnum):
    """The unit a report row stands for."""

    VENUE = "venue"
    DISTRICT = "district"
    PROVINCE = "province"


@dataclass
class AdoptionRow:
    """Counts of one unit over the report's period."""

    province: str
    district: str = ""
    venue: str = ""
    name: str = ""
    venues: set[int] = field(default_factory=set)
    days: set[int] = field(default_factory=set)  # day numbers (Vietnam time)
    phones: int = 0  # phone-windows: see the module docstring
    bluezone: int = 0
    gaen: int = 0

    @property
    def rate(self) -> float | None:
        """Bluezone share of phones seen, in percent; ``None`` without phones."""
        return 100.0 * self.bluezone / self.phones if self.phones else None

    @property
    def unit(self) -> str:
        """``province``, ``province/district`` or ``province/venue``."""
        if self.venue:
            return f"{self.province}/{self.venue}"
        return f"{self.province}/{self.district}" if self.district else self.province


def day_range(start: date | None, end: date | None) -> tuple[float, float]:
    """Epoch seconds ``[since, until)`` of the Vietnam days ``start``..``end`` inclusive.

    Raises:
        BzgwError: ``end`` before ``start``.
    """
    if start is not None and end is not None and end < start:
        raise BzgwError(f"--to {end} is before --from {start}")
    since = (datetime(start.year, start.month, start.day, tzinfo=VN).timestamp()
             if start else 0.0)
    until = (datetime(end.year, end.month, end.day, tzinfo=VN).timestamp() + DAY
             if end else float(2**62))
    return since, until


def adoption_rows(store: Store, by: By | str, *, since: float = 0.0,
                  until: float = float(2**62),
                  venues: Sequence[VenueInfo] | None = None) -> list[AdoptionRow]:
    """One row per unit with counts in ``[since, until)`` (window starts), sorted by unit.

    Args:
        store: the matcher store.
        by: venue, district or province.
        since: epoch seconds, inclusive.
        until: epoch seconds, exclusive.
        venues: only these venues (default: every venue).
    """
    by = By(by)
    known = {v.id: v for v in (store.venues() if venues is None else venues)}
    if not known:
        return []
    # One grouped query per venue and day; the units are summed here (few rows).
    rows = store.db.execute(
        f"SELECT venue_id, (window_start + {VN_OFFSET_S}) / {DAY} AS day, SUM(bluezone), "
        "SUM(gaen), SUM(other_phones) FROM adoption_counts "
        "WHERE window_start >= ? AND window_start < ? GROUP BY venue_id, day",
        (math.floor(since), math.ceil(min(until, 2**62))))
    units: dict[tuple[str, ...], AdoptionRow] = {}
    for vid, day, bz, en, other in rows:
        v = known.get(int(vid))
        if v is None:
            continue
        key = ((v.province, v.venue) if by is By.VENUE else
               (v.province, v.district) if by is By.DISTRICT else (v.province,))
        row = units.get(key)
        if row is None:
            row = units[key] = (
                AdoptionRow(v.province, v.district, v.venue, v.label) if by is By.VENUE else
                AdoptionRow(v.province, v.district) if by is By.DISTRICT else
                AdoptionRow(v.province))
        bz, en, other = int(bz), int(en), int(other)
        row.venues.add(v.id)
        row.days.add(int(day))
        row.bluezone += bz
        row.gaen += en
        row.phones += bz + en + other
    return [units[k] for k in sorted(units)]


def total(rows: Iterable[AdoptionRow]) -> AdoptionRow:
    """All rows together (the report's last line)."""
    out = AdoptionRow(province="")
    for r in rows:
        out.venues |= r.venues
        out.days |= r.days
        out.phones += r.phones
        out.bluezone += r.bluezone
        out.gaen += r.gaen
    return out


# -- files ----------------------------------------------------------------------------------------

UNIT_HEADERS = {
    By.VENUE: ["Tỉnh / Province", "Quận, huyện / District", "Mã địa điểm / Venue code",
               "Địa điểm / Venue"],
    By.DISTRICT: ["Tỉnh / Province", "Quận, huyện / District", "Số địa điểm / Venues"],
    By.PROVINCE: ["Tỉnh / Province", "Số quận, huyện / Districts", "Số địa điểm / Venues"],
}
COUNT_HEADERS = ["Số ngày / Days", "Lượt điện thoại / Phones seen",
                 "Lượt Bluezone / Bluezone phones", "Lượt EN / EN phones",
                 "Tỷ lệ Bluezone (%) / Bluezone rate (%)"]
TOTAL_LABEL = "Tổng / Total"


def table(rows: Sequence[AdoptionRow], by: By | str, venues: Sequence[VenueInfo]
          ) -> tuple[list[str], list[list[str | int | float | None]]]:
    """Header and body (a total line last) as the CSV and XLSX files hold them.

    The rate is a number rounded to 2 decimals, ``None`` for a unit without phones.
    """
    by = By(by)
    by_id = {v.id: v for v in venues}

    def districts(r: AdoptionRow) -> int:
        return len({(by_id[v].province, by_id[v].district) for v in r.venues if v in by_id})

    def counts(r: AdoptionRow) -> list[str | int | float | None]:
        rate = r.rate
        return [len(r.days), r.phones, r.bluezone, r.gaen,
                None if rate is None else round(rate, 2)]

    body: list[list[str | int | float | None]] = []
    for r in rows:
        district = r.district or NO_DISTRICT
        unit: list[str | int | float | None] = (
            [r.province, district, r.venue, r.name] if by is By.VENUE else
            [r.province, district, len(r.venues)] if by is By.DISTRICT else
            [r.province, districts(r), len(r.venues)])
        body.append([*unit, *counts(r)])
    t = total(rows)
    unit = ([TOTAL_LABEL, "", "", ""] if by is By.VENUE else
            [TOTAL_LABEL, "", len(t.venues)] if by is By.DISTRICT else
            [TOTAL_LABEL, districts(t), len(t.venues)])
    body.append([*unit, *counts(t)])
    return [*UNIT_HEADERS[by], *COUNT_HEADERS], body


def period_label(rows: Sequence[AdoptionRow], start: date | None, end: date | None) -> str:
    """``YYYYMMDD-YYYYMMDD`` of the period asked for, else of the days with data."""
    days = sorted(set().union(*(r.days for r in rows))) if rows else []
    first = start or (date(1970, 1, 1) + timedelta(days=days[0]) if days else None)
    last = end or (date(1970, 1, 1) + timedelta(days=days[-1]) if days else None)
    if first is None or last is None:
        return "empty"
    return f"{first:%Y%m%d}-{last:%Y%m%d}"


def write_csv(path: Path, header: Sequence[str],
              body: Sequence[Sequence[str | int | float | None]]) -> Path:
    """UTF-8 with a byte-order mark, so Excel shows Vietnamese text as written."""
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in body:
            w.writerow(["" if c is None else f"{c:.2f}" if isinstance(c, float) else c
                        for c in row])
    return path


def write_xlsx(path: Path, header: Sequence[str],
               body: Sequence[Sequence[str | int | float | None]], *, title: str,
               method: str) -> Path:
    """One sheet of figures (numbers as numbers, the rate as ``0.00``) and one of method."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Tỷ lệ - Rate"
    ws.append(list(header))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in body:
        ws.append(list(row))
    ws.freeze_panes = "A2"
    rate_col = len(header)
    for r in range(2, len(body) + 2):
        ws.cell(row=r, column=rate_col).number_format = "0.00"
    for r in ws.iter_rows(min_row=len(body) + 1, max_row=len(body) + 1):  # the total line
        for cell in r:
            cell.font = Font(bold=True)
    for i, h in enumerate(header, start=1):
        width = max([len(h), *(len(str(row[i - 1] or "")) for row in body)])
        ws.column_dimensions[get_column_letter(i)].width = min(48, width + 2)
    info = wb.create_sheet("Phương pháp - Method")
    info.append([title])
    info["A1"].font = Font(bold=True)
    for para in method.split("\n\n"):
        info.append([" ".join(para.split())])
    info.column_dimensions["A"].width = 120
    wb.save(path)
    return path


METHOD = """Nguồn: số đếm của các trạm tại địa điểm, theo cửa sổ 15 phút. Mỗi điện thoại Bluezone \
được đếm một lần mỗi cửa sổ dù đổi địa chỉ MAC. "Lượt điện thoại" là tổng số đếm theo cửa sổ: \
một điện thoại ở lại một giờ được tính bốn lượt; đây không phải số người khác nhau. Điện thoại \
tắt Bluetooth không được nghe thấy. Tỷ lệ = lượt Bluezone / lượt điện thoại.

Source: the venue gateways' counts per 15-minute window. A Bluezone phone is counted once per \
window despite MAC address rotation. "Phones seen" sums the per-window counts (phone-windows): \
a phone staying an hour counts four times; it is not a number of different people, which \
cannot be known since no identifier is kept across windows. Phones with Bluetooth off are not \
heard. EN phones may count twice in a window (their IDs change off the window grid). \
Rate = Bluezone phones / phones seen, i.e. the Bluezone share of time-weighted phone presence. \
Days are Vietnam-time calendar days with data."""


def write_adoption_report(store: Store, by: By | str, out: Path, *,
                          start: date | None = None, end: date | None = None
                          ) -> tuple[list[AdoptionRow], dict[str, Path]]:
    """Write ``adoption-BY-PERIOD.csv`` and ``.xlsx`` into ``out``.

    Returns:
        The rows (without the total) and the files written, by kind.

    Raises:
        BzgwError: ``end`` before ``start``, or ``out`` cannot be written.
    """
    by = By(by)
    since, until = day_range(start, end)
    venues = store.venues()
    rows = adoption_rows(store, by, since=since, until=until, venues=venues)
    header, body = table(rows, by, venues)
    period = period_label(rows, start, end)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"adoption-{by}-{period}"
        title = (f"Tỷ lệ cài đặt Bluezone theo {by} / Bluezone adoption by {by}, "
                 f"{period}")
        return rows, {"csv": write_csv(stem.with_suffix(".csv"), header, body),
                      "xlsx": write_xlsx(stem.with_suffix(".xlsx"), header, body,
                                         title=title, method=METHOD)}
    except OSError as err:
        raise BzgwError(f"cannot write the adoption report into {out}: {err}") from err
