"""Adoption reports (CSV with BOM, XLSX) against stores filled through the real capture path."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import SITE_GATEWAYS, Site, build_site
from click.testing import CliRunner
from openpyxl import load_workbook

from bzgw.cli import cli
from bzgw.labrecords import temp_store
from matcher.adoption import adoption_rows, day_range
from matcher.dashboard import Dashboard
from matcher.store import open_store

# 6 hours of crowds ending 2 h before NOW, across midnight in Vietnam (4 May 2021 00:00 ICT is
# 3 May 17:00 UTC): every venue has data on two Vietnam days.
VN_MIDNIGHT = 1_620_061_200
NOW = float(VN_MIDNIGHT + 4 * 3600)
DISTRICT = {venue: (p, d) for _g, p, d, venue, _n, _c in SITE_GATEWAYS}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("adoption")
    store = open_store(f"sqlite:///{tmp / 'matcher.db'}")
    yield build_site(tmp, store, now=NOW)
    store.close()


def expected(site: Site, unit: str, since: float = 0, until: float = 2**62
             ) -> dict[str, tuple[int, int, int, int]]:
    """(days, phones, bluezone, en) per unit, summed from what the gateways sealed."""
    days: dict[str, set[int]] = defaultdict(set)
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for venue, counts in site.counts.items():
        province, district = DISTRICT[venue]
        key = {"venue": f"{province}/{venue}", "district": f"{province}/{district}",
               "province": province}[unit]
        for c in counts:
            if not since <= c.window_start < until:
                continue
            days[key].add((c.window_start + 7 * 3600) // 86400)
            s = sums[key]
            s[0] += c.bluezone + c.gaen + c.other_phones
            s[1] += c.bluezone
            s[2] += c.gaen
    return {k: (len(days[k]), *v) for k, v in sums.items()}  # type: ignore[misc]


def as_numbers(rows: list) -> dict[str, tuple[int, int, int, int]]:  # type: ignore[type-arg]
    return {r.unit: (len(r.days), r.phones, r.bluezone, r.gaen) for r in rows}


@pytest.mark.parametrize("unit", ["venue", "district", "province"])
def test_rows_are_what_the_gateways_sealed(site: Site, unit: str) -> None:
    want = expected(site, unit)
    assert as_numbers(adoption_rows(site.store, unit)) == want
    assert all(days == 2 for days, *_ in want.values())  # the crowds span Vietnam midnight
    if unit == "province":
        assert set(want) == {"hn", "hcm"}


def test_rates_follow_the_crowds(site: Site) -> None:
    rate = {r.unit: r.rate for r in adoption_rows(site.store, "venue")}
    # the market's crowd is mostly Bluezone, the bus station's mostly not (tests/browser.py)
    assert rate["hn/cho-dong-xuan"] > rate["hcm/cho-ben-thanh"] > rate["hn/ben-xe-kim-ma"]
    for r in adoption_rows(site.store, "district"):
        assert r.rate == pytest.approx(100 * r.bluezone / r.phones)


def test_a_period_takes_whole_vietnam_days(site: Site) -> None:
    from datetime import date

    since, until = day_range(date(2021, 5, 4), date(2021, 5, 4))
    assert (since, until) == (VN_MIDNIGHT, VN_MIDNIGHT + 86400)
    got = as_numbers(adoption_rows(site.store, "district", since=since, until=until))
    assert got == expected(site, "district", since, until)
    assert got and all(days == 1 for days, *_ in got.values())
    assert adoption_rows(site.store, "district", since=0, until=VN_MIDNIGHT - 3 * 86400) == []


def _read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads the file as UTF-8
    return list(csv.reader(raw.decode("utf-8-sig").splitlines()))


def test_cli_writes_csv_and_xlsx_with_vietnamese_headers(site: Site, tmp_path: Path) -> None:
    db = site.store.db
    url = f"sqlite:///{db.path}" if hasattr(db, "path") else None  # type: ignore[attr-defined]
    assert url is not None
    out = tmp_path / "reports"
    res = CliRunner().invoke(cli, ["matcher", "report", "adoption", "--db", url, "--by",
                                   "district", "--from", "2021-05-03", "--to", "2021-05-04",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    csv_path = out / "adoption-district-20210503-20210504.csv"
    xlsx_path = csv_path.with_suffix(".xlsx")
    assert str(csv_path) in res.output and str(xlsx_path) in res.output
    header, *body = _read_csv(csv_path)
    assert header[:2] == ["Tỉnh / Province", "Quận, huyện / District"]
    rate_col = next(i for i, h in enumerate(header) if "rate" in h.lower())
    assert "Tỷ lệ" in header[rate_col] and "%" in header[rate_col]
    want = expected(site, "district")
    by_unit = {f"{r[0]}/{r[1]}": r for r in body[:-1]}
    assert set(by_unit) == set(want)
    for unit, (days, phones, bz, en) in want.items():
        r = by_unit[unit]
        assert [int(x) for x in r[3:7]] == [days, phones, bz, en]
        assert float(r[rate_col]) == pytest.approx(100 * bz / phones, abs=0.005)
    total = body[-1]
    assert total[0] == "Tổng / Total"
    assert int(total[4]) == sum(v[1] for v in want.values())
    # the workbook holds the same table, numbers as numbers
    wb = load_workbook(xlsx_path)
    sheet = wb.worksheets[0]
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert cells[0] == header
    for got, text in zip(cells[1:], body, strict=True):
        assert isinstance(got[4], int) and got[4] == int(text[4])
        assert got[rate_col] == pytest.approx(float(text[rate_col]))
    assert sheet.cell(row=2, column=rate_col + 1).number_format == "0.00"
    assert "Bluezone" in str(wb.worksheets[1]["A3"].value)  # the method, in English too


def test_cli_by_venue_names_the_venues(site: Site, tmp_path: Path) -> None:
    url = f"sqlite:///{site.store.db.path}"  # type: ignore[attr-defined]
    res = CliRunner().invoke(cli, ["matcher", "report", "adoption", "--db", url, "--by",
                                   "venue", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (path,) = tmp_path.glob("adoption-venue-*.csv")
    assert path.name == "adoption-venue-20210503-20210504.csv"  # the days with data
    header, *body = _read_csv(path)
    assert header[2:4] == ["Mã địa điểm / Venue code", "Địa điểm / Venue"]
    names = {r[2]: r[3] for r in body[:-1]}
    assert names == {"cho-dong-xuan": "Chợ Đồng Xuân", "ben-xe-kim-ma": "Bến xe Kim Mã",
                     "cho-ben-thanh": "Chợ Bến Thành"}


def test_cli_refuses_a_period_that_ends_before_it_starts(site: Site, tmp_path: Path) -> None:
    url = f"sqlite:///{site.store.db.path}"  # type: ignore[attr-defined]
    res = CliRunner().invoke(cli, ["matcher", "report", "adoption", "--db", url, "--from",
                                   "2021-05-04", "--to", "2021-05-01", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "before" in res.output
    assert list(tmp_path.iterdir()) == []


def test_dashboard_shows_the_same_district_rates(site: Site) -> None:
    page = Dashboard(site.store, clock=lambda: NOW).page({"days": "1"})
    want = {r.unit: r for r in adoption_rows(site.store, "district", since=NOW - 86400,
                                              until=NOW)}
    assert {r.unit: (r.phones, r.bluezone) for r in page.districts} == {
        k: (r.phones, r.bluezone) for k, r in want.items()}
    html = Dashboard(site.store, clock=lambda: NOW).render(page)
    table = html[html.index('id="district-rates"'):]
    table = table[:table.index("</table>")]
    for r in want.values():
        assert r.rate is not None
        assert f"{r.rate:.2f} %" in table and r.district in table


def test_rows_on_postgresql(site: Site, pg_url: str, tmp_path: Path) -> None:
    with temp_store("postgres", tmp_path, pg_url) as store:
        build_site(tmp_path, store, now=NOW)
        for unit in ("venue", "district", "province"):
            assert as_numbers(adoption_rows(store, unit)) == expected(site, unit)
