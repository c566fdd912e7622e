"""The provincial dashboard against stores filled through the real capture and ingest path."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from browser import SITE_GATEWAYS, ServedApp, Site, build_site
from webclient import FAST_HASHER, WebClient

from bzgw.labrecords import temp_store
from core.errors import BzgwError
from matcher.config import MatcherConfig
from matcher.dashboard import Dashboard, adoption_svg, start_dashboard
from matcher.dashboard_auth import DashboardAuth
from matcher.dashboard_queries import (
    AdoptionPoint,
    adoption_series,
    exposure_venues,
    load_exposure_venues,
)
from matcher.store import open_store
from matcher.users import UserStore

NOW = float(int(time.time()) // 60 * 60)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("site")
    store = open_store(f"sqlite:///{tmp / 'matcher.db'}")
    yield build_site(tmp, store, now=NOW)
    store.close()


def dashboard(site: Site, **kw: Any) -> Dashboard:
    return Dashboard(site.store, exposures=lambda: load_exposure_venues(site.reports),
                     clock=lambda: site.now, **kw)


def expected_series(site: Site, bucket: int = 3600) -> dict[str, dict[int, tuple[int, int]]]:
    """Bluezone and phones per venue and bucket, summed from what the gateways sealed."""
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for venue, counts in site.counts.items():
        per = out.setdefault(venue, {})
        for c in counts:
            if c.window_start < site.now - 86400:
                continue
            b = c.window_start // bucket * bucket
            bz, ph = per.get(b, (0, 0))
            per[b] = (bz + c.bluezone, ph + c.phones)
    return out


def series_as_counts(store: Any, site: Site) -> dict[str, dict[int, tuple[int, int]]]:
    venues = {v.id: v.venue for v in store.venues()}
    got = adoption_series(store, list(venues), since=site.now - 86400, until=site.now)
    return {venues[vid]: {p.t: (p.bluezone, p.phones) for p in pts}
            for vid, pts in got.items()}


# -- queries --------------------------------------------------------------------------------------

def test_adoption_series_is_what_the_gateways_sealed(site: Site) -> None:
    want = expected_series(site)
    assert sum(len(v) for v in want.values()) >= 12  # hours of data at three venues
    assert series_as_counts(site.store, site) == want
    # the busy market has the highest share, the bus station the lowest (crowd mixes)
    share = {v: sum(b for b, _ in pts.values()) / sum(p for _, p in pts.values())
             for v, pts in want.items()}
    assert share["cho-dong-xuan"] > share["cho-ben-thanh"] > share["ben-xe-kim-ma"]


def test_adoption_series_on_postgresql(site: Site, pg_url: str, tmp_path: Path) -> None:
    with temp_store("postgres", tmp_path, pg_url) as store:
        build_site(tmp_path, store, now=NOW)
        assert series_as_counts(store, site) == expected_series(site)
        page = Dashboard(store, clock=lambda: NOW).page({"province": "hn", "days": "1"})
        assert sorted(g.gateway_id for g in page.gateways) == ["gw-a", "gw-b"]


def test_gateway_rows_show_links_and_states(site: Site) -> None:
    page = dashboard(site).page({"days": "1"})
    rows = {g.gateway_id: g for g in page.gateways}
    assert rows["gw-a"].link == "online" and rows["gw-a"].state is not None
    assert rows["gw-a"].state["code"] == "working"
    assert rows["gw-b"].link == "offline" and rows["gw-b"].link_since == NOW - 2400
    assert rows["gw-c"].state is not None and rows["gw-c"].state["code"] == "no_camera"
    assert [a["code"] for a in rows["gw-c"].state["also"]] == ["clock_not_synced"]
    assert rows["gw-c"].clock_synced is False and rows["gw-a"].outbox_depth == 3
    assert all(g.batches > 20 and g.last_batch_at == NOW - 600 for g in rows.values())
    # an online gateway that stops reporting health turns "silent"
    later = Dashboard(site.store, clock=lambda: NOW + 3600).page({})
    assert {g.gateway_id: g.link for g in later.gateways} == {
        "gw-a": "silent", "gw-b": "offline", "gw-c": "silent"}


def test_filters_by_province_district_and_venue(site: Site) -> None:
    d = dashboard(site)
    by = {q: sorted(g.gateway_id for g in d.page(dict(q)).gateways) for q in (
        (("province", "hn"),), (("district", "quan-1"),), (("venue", "ben-xe-kim-ma"),),
        (("province", "hcm"), ("venue", "ben-xe-kim-ma")))}
    assert by == {(("province", "hn"),): ["gw-a", "gw-b"],
                  (("district", "quan-1"),): ["gw-c"],
                  (("venue", "ben-xe-kim-ma"),): ["gw-b"],
                  (("province", "hcm"), ("venue", "ben-xe-kim-ma")): []}
    hn = d.page({"province": "hn"})
    assert sorted(hn.series) == sorted(v.id for v in hn.venues if v.province == "hn")
    assert [e.venue for e in hn.exposures] == ["cho-dong-xuan"]
    assert d.page({"province": "hcm"}).exposures == []


def test_bad_query_values_are_reported_not_used(site: Site) -> None:
    d = dashboard(site)
    p = d.page({"province": "<script>alert(1)</script>", "days": "many"})
    assert p.notes == ["province: not a code", "days: not a number"]
    assert len(p.gateways) == 3 and p.days == 7
    assert d.page({"days": "999"}).days == 21
    html = d.render(p)
    assert "<script>" not in html and "province: not a code" in html
    none = d.page({"province": "dn"})
    assert none.gateways == [] and "No venue matches the filters" in none.notes[0]


def test_exposure_list_comes_from_the_match_report(site: Site, tmp_path: Path) -> None:
    got = load_exposure_venues(site.reports)
    assert len(got) == 1 and got[0].venue == "cho-dong-xuan" and got[0].name == "Chợ Đồng Xuân"
    public = json.loads((site.reports / "case-1" / "exposure_venues.json").read_text())
    assert got[0].start == datetime.fromisoformat(public["venues"][0]["from"]).timestamp()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "exposure_venues.json").write_text("{broken")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "exposure_venues.json").write_text(json.dumps({"venues": [
        {"province": "hn", "venue": "a", "from": "2021-08-12T10:00:00+07:00",
         "to": "2021-08-12T10:15:00+07:00"},
        {"province": "hn", "venue": "b", "from": "2021-08-12T10:00:00", "to": "x"},  # no zone
        "junk", {"venue": "c"}]}))
    assert [e.venue for e in load_exposure_venues(tmp_path)] == ["a"]
    assert exposure_venues(None) == [] and exposure_venues([1, None]) == []


# -- chart ----------------------------------------------------------------------------------------

def test_chart_points_sit_at_their_share() -> None:
    t0 = 1_628_730_000  # a whole hour
    series = {1: [AdoptionPoint(t0, 5, 3, 2), AdoptionPoint(t0 + 3600, 0, 0, 0),
                  AdoptionPoint(t0 + 7200, 9, 1, 0)],
              2: [AdoptionPoint(t0, 1, 1, 2)]}
    svg = adoption_svg(series, {1: "Chợ <A>", 2: "B"}, since=t0, until=t0 + 4 * 3600)
    root = ET.fromstring(svg[:svg.index("<ul")])
    paths = root.findall(f"{SVG}path")
    assert [p.get("data-venue") for p in paths] == ["1", "2"]
    # the empty hour is a gap: the line lifts the pen (two moves) instead of dropping to 0
    assert paths[0].get("d", "").count("M") == 2 and paths[0].get("d", "").count("L") == 0
    dots = root.findall(f"{SVG}circle")
    ys = [float(c.get("cy", "nan")) for c in dots]
    top, height = 10, 260 - 10 - 30
    assert ys == pytest.approx([top + (1 - 0.5) * height, top + (1 - 0.9) * height,
                                top + (1 - 0.25) * height])
    titles = [c.find(f"{SVG}title").text for c in dots]  # type: ignore[union-attr]
    assert titles[0].startswith("Chợ <A> ") and titles[0].endswith(": 50 % (5/10)")
    assert "Chợ &lt;A&gt;" in svg  # escaped in the markup, readable in the tooltip
    empty = adoption_svg({}, {}, since=t0, until=t0 + 3600)
    assert "No data yet" in empty


# -- served ---------------------------------------------------------------------------------------

def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_served_page_and_json_api(site: Site, tmp_path: Path) -> None:
    users = UserStore(tmp_path / "users.db", hasher=FAST_HASHER)
    users.add("viewer.1", "viewer", "xem bang dieu khien")
    auth = DashboardAuth(users, audit=None, secure=False)
    with ServedApp(lambda: dashboard(site, auth=auth).app()) as srv:
        assert fetch(srv.url + "api/dashboard.json")[0] == 401
        client = WebClient(srv.url)
        form = client.get("login")
        client.post("login", {"csrf": form.field("csrf"), "user": "viewer.1",
                              "password": "xem bang dieu khien"})

        def fetch_in(url: str) -> tuple[int, dict[str, str], bytes]:
            r = client.get(url[len(srv.url):])
            return r.status, r.headers, r.body

        status, headers, body = fetch_in(srv.url + "?province=hn&days=1")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        html = body.decode()
        assert 'data-gateway="gw-a"' in html and 'data-gateway="gw-c"' not in html
        assert "<script" not in html and "http://" not in html.replace(
            "http://www.w3.org/2000/svg", "")
        status, headers, body = fetch_in(srv.url + "api/dashboard.json?days=1")
        doc = json.loads(body)
        assert status == 200 and doc["days"] == 1
        assert {g["gateway"]: g["link"] for g in doc["gateways"]} == {
            "gw-a": "online", "gw-b": "offline", "gw-c": "online"}
        assert sorted(doc["adoption"]) == sorted(f"{p}/{v}" for _, p, _, v, _, _ in
                                                 SITE_GATEWAYS)
        assert doc["exposures"][0]["venue"] == "cho-dong-xuan"
        assert fetch_in(srv.url + "nothing")[0] == 404
    users.close()


def test_start_dashboard_on_the_configured_port(site: Site, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = MatcherConfig(private_key=tmp_path / "k", registry=tmp_path / "r",
                        dashboard_listen="127.0.0.1", dashboard_port=port,
                        users_db=tmp_path / "users.db", dashboard_secure_cookies=False)
    with UserStore(cfg.users_db, hasher=FAST_HASHER) as users:
        users.add("viewer.1", "viewer", "xem bang dieu khien")
    calls: list[str] = []

    async def run_db(fn: Any, *args: Any) -> Any:
        calls.append(fn.__name__)
        return fn(*args)

    def browse() -> tuple[int, bytes, int, str]:
        client = WebClient(f"http://127.0.0.1:{port}/")
        first = client.get("")  # redirected to the login form
        page = client.post("login", {"csrf": first.field("csrf"), "user": "viewer.1",
                                     "password": "xem bang dieu khien"})
        return page.status, page.body, first.status, first.url

    async def main() -> tuple[int, bytes, int, str]:
        runner = await start_dashboard(site.store, cfg, run_db=run_db)
        try:
            with pytest.raises(BzgwError, match="cannot listen"):
                await start_dashboard(site.store, cfg)  # the port is taken now
            return await asyncio.to_thread(browse)
        finally:
            await runner.cleanup()

    status, body, first_status, first_url = asyncio.run(main())
    assert first_status == 200 and "/login?next=" in first_url and calls == ["page"]
    assert status == 200 and b"gw-b" in body  # store reads went through the owner's runner
