"""The provincial dashboard: gateways online/offline, backlogs, adoption over time, exposures.

An aiohttp application served by the matcher (``bzgw matcher serve`` calls
:func:`start_dashboard` on ``matcher.dashboard_listen``/``dashboard_port``). Pages are rendered
on the server, the adoption chart included (inline SVG, no chart library, no script at all),
and filtered by province, district and venue through ordinary GET forms, so the page works in
any browser of a health office and can be bookmarked. ``/api/dashboard.json`` returns the same
data. The store's connection belongs to one thread: the matcher service passes its own
``run_db`` (its store worker), so dashboard reads queue with ingest instead of racing it;
without one, reads run on the loop's thread. Each view is a handful of grouped queries
(timed in ``bench/bench_dashboard.py``). Every route needs a login
(:mod:`matcher.dashboard_auth`): the application is never built without one.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from string import Template
from typing import Any, TypeVar

from aiohttp import web

from contract.health import DISK_FULL, DISK_WARN, VENUE_TZ
from core.errors import BzgwError
from matcher.adoption import NO_DISTRICT, AdoptionRow, adoption_rows
from matcher.audit import AuditLog
from matcher.config import MatcherConfig
from matcher.dashboard_auth import DashboardAuth
from matcher.dashboard_queries import (
    AdoptionPoint,
    ExposureVenue,
    Filters,
    GatewayView,
    adoption_series,
    list_gateways,
    parse_filters,
)
from matcher.rows import VenueInfo
from matcher.store import Store
from matcher.users import UserStore

ExposureProvider = Callable[[], Sequence[ExposureVenue]]
T = TypeVar("T")
DbRunner = Callable[..., Awaitable[Any]]
DAYS = (1, 3, 7, 14, 21)
MAX_SERIES = 8  # more lines than this are unreadable: the busiest venues are drawn
LINK_LABELS = {"online": "Trực tuyến / Online", "offline": "Mất kết nối / Offline",
               "silent": "Im lặng / Silent", "unknown": "Chưa rõ / Unknown"}
_W, _H, _L, _R, _T, _B = 760, 260, 44, 12, 10, 30  # chart size and margins


def _asset(name: str) -> str:
    return resources.files("matcher").joinpath("static", name).read_text(encoding="utf-8")


def _when(ts: float | None) -> str:
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, VENUE_TZ).strftime("%d/%m %H:%M")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.0f} %"


def _age(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


@dataclass(frozen=True)
class Page:
    """Everything one dashboard view shows (also the JSON API's content)."""

    now: float
    filters: Filters
    days: int
    venues: list[VenueInfo]
    gateways: list[GatewayView]
    series: dict[int, list[AdoptionPoint]]
    drawn: list[int]  # venue ids drawn in the chart, busiest first
    districts: list[AdoptionRow]  # Bluezone rate per district (as ``report adoption``)
    exposures: list[ExposureVenue]
    notes: list[str]


class Dashboard:
    """The dashboard application over a store.

    Args:
        store: the matcher's store (read only here).
        exposures: returns the published exposure-venues list.
        stale_after_s: an online gateway without health for this long is shown "silent".
        bucket_s: adoption chart resolution.
        refresh_s: page self-refresh period.
        run_db: ``await run_db(fn, *args)`` runs a store call on the thread that owns the
            store's connection (``MatcherService._db``); default: inline.
        clock: wall time (tests pin it).
        auth: users, sessions and throttles; :meth:`app` needs it.
    """

    def __init__(self, store: Store, *, exposures: ExposureProvider | None = None,
                 stale_after_s: float = 900.0, bucket_s: int = 3600, refresh_s: int = 60,
                 run_db: DbRunner | None = None,
                 clock: Callable[[], float] = time.time,
                 auth: DashboardAuth | None = None) -> None:
        self.store = store
        self.auth = auth
        self.run_db = run_db or _inline
        self.exposures = exposures
        self.stale_after_s = stale_after_s
        self.bucket_s = bucket_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._css = _asset("dashboard.css")
        self._page = Template(_asset("dashboard.html"))
        digest = base64.b64encode(hashlib.sha256(self._css.encode()).digest()).decode()
        self._csp = (f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'self' data:;"
                     " form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

    def app(self) -> web.Application:
        """A new application with the dashboard's routes, every one behind a login.

        Raises:
            ValueError: no ``auth``: the dashboard is never served without logins.
        """
        if self.auth is None:
            raise ValueError("the dashboard needs users and sessions (auth=DashboardAuth)")
        app = web.Application(client_max_size=64 * 1024)  # forms only, no uploads
        self.auth.install(app, self._shell)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/dashboard.json", self._json)
        return app

    def _shell(self, title: str, account: str, body: str) -> web.Response:
        """A page of the dashboard's frame (login, users, reports) with its policy."""
        text = ('<!doctype html><html lang="vi"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
                f'<style>{self._css}</style></head><body><header><span class="brand">bzgw'
                f'</span> <a href="/" class="home">Bảng điều khiển tỉnh / Provincial '
                f'dashboard</a> {account}</header><main>{body}</main></body></html>')
        return web.Response(text=text, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": self._csp})

    # -- data -------------------------------------------------------------------------------
    def page(self, query: Mapping[str, str]) -> Page:
        """Collect one view's data for the query parameters."""
        now = self.clock()
        filters, notes = parse_filters(query)
        try:
            days = int(query.get("days", "7"))
        except ValueError:
            days, notes = 7, [*notes, "days: not a number"]
        if days not in DAYS:
            days = min(DAYS, key=lambda d: abs(d - days))
        venues = self.store.venues()
        shown = [v for v in venues if filters.match(v)]
        if not shown and (filters.province or filters.district or filters.venue):
            notes.append("Không có địa điểm nào khớp bộ lọc / No venue matches the filters")
        gateways = list_gateways(self.store, filters, now=now, stale_after_s=self.stale_after_s)
        since = now - days * 86400
        series = adoption_series(self.store, [v.id for v in shown], since=since, until=now,
                                 bucket_s=self.bucket_s)
        districts = adoption_rows(self.store, "district", since=since, until=now,
                                  venues=shown)
        busiest = sorted((vid for vid, pts in series.items() if pts),
                         key=lambda vid: -sum(p.phones for p in series[vid]))
        keys = {v.key for v in shown}
        exposures = [e for e in (self.exposures() if self.exposures else ())
                     if f"{e.province}/{e.venue}" in keys and e.end >= since]
        return Page(now=now, filters=filters, days=days, venues=venues, gateways=gateways,
                    series=series, drawn=busiest[:MAX_SERIES], districts=districts,
                    exposures=exposures,
                    notes=notes)

    # -- handlers ---------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        p: Page = await self.run_db(self.page, dict(request.query))
        account = self.auth.account_html(self.auth.session(request)) if self.auth else ""
        return web.Response(text=self.render(p, account), content_type="text/html",
                            charset="utf-8",
                            headers={"Content-Security-Policy": self._csp,
                                     "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff"})

    async def _json(self, request: web.Request) -> web.Response:
        p: Page = await self.run_db(self.page, dict(request.query))
        return web.json_response(page_json(p))

    # -- rendering --------------------------------------------------------------------------
    def render(self, p: Page, account: str = "") -> str:
        """The HTML page (``account``: the header's user and logout form)."""
        by_id = {v.id: v for v in p.venues}
        links = [g.link for g in p.gateways]
        with_data = sum(1 for s in p.series.values() if s)
        note = (f"Vẽ {len(p.drawn)} địa điểm đông nhất trên {with_data} / Drawing the "
                f"{len(p.drawn)} busiest of {with_data} venues."
                if len(p.drawn) < with_data else "")
        return self._page.substitute(
            css=self._css, refresh_s=self.refresh_s, updated=_when(p.now), account=account,
            province_options=_options(sorted({v.province for v in p.venues}),
                                      p.filters.province),
            district_options=_options(sorted({v.district for v in p.venues if v.district and (
                not p.filters.province or v.province == p.filters.province)}),
                p.filters.district),
            venue_options=_options(
                [(v.venue, f"{v.label} ({v.province})") for v in p.venues
                 if not p.filters.province or v.province == p.filters.province],
                p.filters.venue),
            days_options="".join(
                f'<option value="{d}"{" selected" if d == p.days else ""}>{d}</option>'
                for d in DAYS),
            notes="".join(f'<p class="notes">{html.escape(n)}</p>' for n in p.notes),
            n_online=links.count("online"), n_offline=links.count("offline"),
            n_silent=links.count("silent"), n_unknown=links.count("unknown"),
            n_backlog=sum(g.outbox_depth or 0 for g in p.gateways),
            gateway_rows="".join(_gateway_row(g, p.now) for g in p.gateways)
            or '<tr><td colspan="8" class="muted">Không có trạm / No gateways</td></tr>',
            bucket_label="giờ / hour" if self.bucket_s == 3600 else f"{self.bucket_s} s",
            chart_note=html.escape(note),
            chart=adoption_svg({vid: p.series[vid] for vid in p.drawn},
                               {vid: by_id[vid].label for vid in p.drawn},
                               since=p.now - p.days * 86400, until=p.now,
                               bucket_s=self.bucket_s),
            # the venues drawn only: a province's every hour is for /api/dashboard.json
            adoption_table=_adoption_table({vid: p.series[vid] for vid in p.drawn}, by_id),
            district_rows="".join(_district_row(r) for r in p.districts)
            or '<tr><td colspan="6" class="muted">Không có số liệu / No data</td></tr>',
            exposure_rows="".join(
                f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.province)}</td>"
                f"<td>{html.escape(e.district)}</td><td>{_when(e.start)}</td>"
                f"<td>{_when(e.end)}</td></tr>" for e in p.exposures)
            or '<tr><td colspan="5" class="muted">Không có / None</td></tr>')


def _options(values: Sequence[str | tuple[str, str]], selected: str) -> str:
    out = ['<option value="">Tất cả / All</option>']
    for v in values:
        value, text = (v, v) if isinstance(v, str) else v
        sel = " selected" if value == selected else ""
        out.append(f'<option value="{html.escape(value)}"{sel}>{html.escape(text)}</option>')
    return "".join(out)


def _gateway_row(g: GatewayView, now: float) -> str:
    esc = html.escape
    since = f' <span class="muted">{_when(g.link_since)}</span>' if g.link_since else ""
    if g.state is None:
        state = '<span class="muted">–</span>'
    else:
        code = g.state["code"]
        cls = ("st-working" if code == "working" else
               "st-warn" if code in ("clock_not_synced", "connecting") else "st-bad")
        if g.link in ("offline", "silent"):  # what it said last, not what it is now
            cls = "muted"
        state = f'<span class="{cls}">{esc(g.state["vi"])} / {esc(g.state["en"])}</span>'
        if cls == "muted":
            state += ' <span class="muted">(lần cuối / last known)</span>'
    outbox = ("–" if g.outbox_depth is None else
              f"{g.outbox_depth} <span class=\"muted\">{_age(g.outbox_oldest_age_s)}</span>")
    clock = {True: "✓", False: "Chưa đồng bộ / not synced", None: "–"}[g.clock_synced]
    disk_cls = ("st-bad" if (g.disk_fill or 0) >= DISK_FULL else
                "st-warn" if (g.disk_fill or 0) >= DISK_WARN else "")
    venue = f"{esc(g.venue.label)} <span class=\"muted\">{esc(g.venue.district)}</span>"
    return (f'<tr data-gateway="{esc(g.gateway_id)}" data-link="{g.link}">'
            f"<td>{esc(g.gateway_id)}</td><td>{venue}</td>"
            f'<td><span class="link-{g.link}">{LINK_LABELS[g.link]}</span>{since}</td>'
            f"<td>{state}</td><td>{_when(g.last_batch_at)}</td>"
            f'<td class="num">{outbox}</td><td>{clock}</td>'
            f'<td class="num {disk_cls}">{_pct(g.disk_fill)}</td></tr>')


def _district_row(r: AdoptionRow) -> str:
    rate = "–" if r.rate is None else f"{r.rate:.2f} %"
    return (f"<tr><td>{html.escape(r.province)}</td>"
            f"<td>{html.escape(r.district or NO_DISTRICT)}</td>"
            f'<td class="num">{len(r.venues)}</td><td class="num">{r.phones:,}</td>'
            f'<td class="num">{r.bluezone:,}</td><td class="num">{rate}</td></tr>')


def _adoption_table(series: dict[int, list[AdoptionPoint]], by_id: dict[int, VenueInfo]) -> str:
    rows = []
    for vid, pts in series.items():
        for pt in pts:
            rows.append(f"<tr><td>{html.escape(by_id[vid].label)}</td><td>{_when(pt.t)}</td>"
                        f'<td class="num">{pt.bluezone}</td><td class="num">{pt.phones}</td>'
                        f'<td class="num">{_pct(pt.share)}</td></tr>')
    head = ("<thead><tr><th>Địa điểm / Venue</th><th>Giờ / Time</th><th>Bluezone</th>"
            "<th>Điện thoại / Phones</th><th>Tỷ lệ / Share</th></tr></thead>")
    return f'<table id="adoption-data">{head}<tbody>{"".join(rows)}</tbody></table>'


def adoption_svg(series: Mapping[int, Sequence[AdoptionPoint]], names: Mapping[int, str], *,
                 since: float, until: float, bucket_s: int = 3600) -> str:
    """An inline SVG line chart of Bluezone share (0–100 %) per venue over ``[since, until]``.

    Buckets without phones are gaps, not zeros. Each point carries a ``<title>`` with the
    venue, time, share and counts; a legend follows the chart.
    """
    pw, ph = _W - _L - _R, _H - _T - _B
    span = max(until - since, 1.0)

    def x(t: float) -> float:
        return _L + (t - since) / span * pw

    def y(share: float) -> float:
        return _T + (1 - share) * ph

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" '
             f'aria-label="Bluezone share over time" xmlns="http://www.w3.org/2000/svg">']
    for q in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{y(q):.1f}" '
                     f'y2="{y(q):.1f}"/><text class="axis" x="{_L - 6}" y="{y(q) + 4:.1f}" '
                     f'text-anchor="end">{q * 100:.0f}%</text>')
    for t, text in _ticks(since, until):
        parts.append(f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_T}" '
                     f'y2="{_T + ph}"/><text class="axis" x="{x(t):.1f}" y="{_H - 10}" '
                     f'text-anchor="middle">{text}</text>')
    legend = []
    for i, (vid, pts) in enumerate(series.items()):
        cls = f"c{i % MAX_SERIES}"
        name = html.escape(names.get(vid, str(vid)))
        d, pen = [], "M"
        dots = []
        for pt in pts:
            share = pt.share
            if share is None:
                pen = "M"
                continue
            px, py = x(min(max(pt.t + bucket_s / 2, since), until)), y(share)
            d.append(f"{pen}{px:.1f},{py:.1f}")
            pen = "L"
            dots.append(f'<circle class="{cls}" cx="{px:.1f}" cy="{py:.1f}" r="2.5">'
                        f"<title>{name} {_when(pt.t)}: {share * 100:.0f} % "
                        f"({pt.bluezone}/{pt.phones})</title></circle>")
        parts.append(f'<path class="line {cls}" data-venue="{vid}" d="{" ".join(d)}"/>')
        parts.extend(dots)
        legend.append(f'<li><span class="swatch {cls}"></span>{name}</li>')
    if not series:
        parts.append(f'<text class="axis" x="{_L + pw / 2}" y="{_T + ph / 2}" '
                     'text-anchor="middle">Chưa có số liệu / No data yet</text>')
    parts.append("</svg>")
    return "".join(parts) + f'<ul class="legend">{"".join(legend)}</ul>'


def _ticks(since: float, until: float) -> list[tuple[float, str]]:
    """Venue-local midnights (several days) or every 3 hours (one day)."""
    step = 86400 if until - since > 2 * 86400 else 3 * 3600
    offset = VENUE_TZ.utcoffset(None).total_seconds()
    first = ((since + offset) // step + 1) * step - offset
    fmt = "%d/%m" if step == 86400 else "%H:%M"
    out = []
    t = first
    while t < until:
        out.append((t, datetime.fromtimestamp(t, VENUE_TZ).strftime(fmt)))
        t += step
    return out


def page_json(p: Page) -> dict[str, Any]:
    """The JSON form of a page."""
    by_id = {v.id: v for v in p.venues}
    return {
        "generated_at": p.now, "days": p.days, "notes": p.notes,
        "filters": {"province": p.filters.province, "district": p.filters.district,
                    "venue": p.filters.venue},
        "gateways": [{
            "gateway": g.gateway_id, "province": g.venue.province, "venue": g.venue.venue,
            "district": g.venue.district, "link": g.link, "link_since": g.link_since,
            "state": g.state, "last_batch_at": g.last_batch_at, "batches": g.batches,
            "outbox_depth": g.outbox_depth, "outbox_oldest_age_s": g.outbox_oldest_age_s,
            "disk_fill": g.disk_fill, "clock_synced": g.clock_synced,
            "health_at": g.health_at} for g in p.gateways],
        "adoption": {by_id[vid].key: [[pt.t, pt.bluezone, pt.gaen, pt.other_phones]
                                      for pt in pts] for vid, pts in p.series.items() if pts},
        "district_rates": [{"province": r.province, "district": r.district,
                            "venues": len(r.venues), "days": len(r.days), "phones": r.phones,
                            "bluezone": r.bluezone, "gaen": r.gaen,
                            "rate_pct": None if r.rate is None else round(r.rate, 2)}
                           for r in p.districts],
        "exposures": [{"province": e.province, "district": e.district, "venue": e.venue,
                       "name": e.name, "start": e.start, "end": e.end}
                      for e in p.exposures],
    }


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def auth_from_config(cfg: MatcherConfig, audit: AuditLog | None) -> DashboardAuth:
    """The dashboard's logins as the ``matcher`` section configures them."""
    return DashboardAuth(UserStore(cfg.users_db), audit=audit,
                         secure=cfg.dashboard_secure_cookies,
                         session_s=cfg.dashboard_session_hours * 3600,
                         idle_s=cfg.dashboard_idle_minutes * 60,
                         trusted_proxies=cfg.dashboard_trusted_proxies,
                         reports_dir=cfg.reports_dir)


async def start_dashboard(store: Store, cfg: MatcherConfig, *,
                          exposures: ExposureProvider | None = None,
                          run_db: DbRunner | None = None,
                          auth: DashboardAuth | None = None,
                          audit: AuditLog | None = None) -> web.AppRunner:
    """Serve the dashboard on ``cfg.dashboard_listen:cfg.dashboard_port``.

    Args:
        store: the matcher's store.
        cfg: the ``matcher`` section (listen address and port, users, cookies).
        auth: logins (default: from ``cfg``, logging to ``audit``).
        audit: the matcher's audit log (logins, failed logins, logouts, user changes).
        exposures: returns the exposure venues to list (e.g. ``lambda:
            load_exposure_venues(reports_dir)``).
        run_db: runs store calls on the thread owning the store (``MatcherService._db``).

    Returns the started runner; stop it with ``await runner.cleanup()``.

    Raises:
        BzgwError: the address cannot be bound.
    """
    dash = Dashboard(store, exposures=exposures, run_db=run_db,
                     auth=auth or auth_from_config(cfg, audit))
    runner = web.AppRunner(dash.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.dashboard_listen, cfg.dashboard_port).start()
    except OSError as err:
        await runner.cleanup()
        raise BzgwError(f"dashboard cannot listen on {cfg.dashboard_listen}:"
                        f"{cfg.dashboard_port}: {err}") from err
    return runner
