"""The venue status page: one big state for staff, figures, last check-ins; ``/health`` and
``/metrics`` for people with a laptop.

Served on the Pi's LAN (``status.listen``/``status.port``) by aiohttp in the daemon's loop.
The page is rendered complete on the server (it works without JavaScript, with a meta
refresh), then a small inline script refreshes it from ``/health`` and ``/checkins``. CSS and
script are inlined from ``gateway/static/`` and allowed by hash in the Content-Security-Policy:
the page loads nothing from anywhere, which suits a venue LAN without internet.

Routes: ``/`` (HTML), ``/health`` (the health document), ``/checkins`` (recent staff feedback:
time, outcome, masked identity only), ``/metrics`` (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

from contract.health import DISK_FULL, DISK_WARN, VENUE_TZ
from core.errors import BzgwError
from gateway.metrics import CONTENT_TYPE, GatewayMetrics

log = logging.getLogger(__name__)

HealthProvider = Callable[[], Mapping[str, Any]]
RecentProvider = Callable[[int], Sequence[Mapping[str, Any]]]
CHECKIN_MARKS: dict[str, tuple[str, str, str]] = {
    "accepted": ("Đã ghi nhận", "Accepted", "ok"),
    "already checked in": ("Đã quét rồi", "Already checked in", "again"),
    "unreadable": ("Không đọc được", "Unreadable", "no"),
    "not saved": ("Chưa lưu được, quét lại", "Not saved, scan again", "no"),
}
RECENT_N = 8


def _asset(name: str) -> str:
    return resources.files("gateway").joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _clock(ts: float, seconds: bool = False) -> str:
    return datetime.fromtimestamp(ts, VENUE_TZ).strftime("%H:%M:%S" if seconds else "%H:%M")


def _pct(x: object) -> str:
    # half up, as the script's Math.round (Python's round() would round half to even)
    return f"{math.floor(float(x) * 100 + 0.5)} %" if isinstance(x, int | float) else "–"


def checkin_rows(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Staff feedback events reduced to what the page shows: check-ins only, masked only."""
    out = []
    for e in events:
        state = e.get("state")
        if state in CHECKIN_MARKS and isinstance(e.get("ts"), int | float):
            out.append({"ts": e["ts"], "state": state, "masked": str(e.get("masked") or "")})
    return out


# What the "dropped" figure adds up, with its short label; status.js mirrors it.
DROPPED_PARTS = (("adverts", "quảng bá / adverts"), ("lost_records", "bản ghi / records"),
                 ("checkins_not_saved", "lượt quét / check-ins"),
                 ("outbox_batches", "lô / batches"))


def dropped_view(dropped: Mapping[str, Any]) -> dict[str, str]:
    """The dropped figure: a total (0 is the only good value) and its non-zero parts."""
    parts = [(int(dropped.get(k) or 0), label) for k, label in DROPPED_PARTS]
    total = sum(n for n, _ in parts)
    return {"dropped": str(total), "dropped_class": "bad" if total else "",
            "dropped_detail": html.escape(" · ".join(f"{n} {label}" for n, label in parts
                                                     if n))}


def view(doc: Mapping[str, Any], checkins: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Template values (already HTML-escaped) for a health document; ``status.js`` mirrors it."""
    esc = html.escape
    st = doc["state"]
    phones = doc.get("phones")
    fill = doc["disk"].get("fill")
    disk_class = ("bad" if isinstance(fill, int | float) and fill >= DISK_FULL else
                  "warn" if isinstance(fill, int | float) and fill >= DISK_WARN else "")
    also = "".join(f"<li>{esc(a['vi'])} / {esc(a['en'])}</li>" for a in st.get("also", ()))
    rows = []
    for c in checkins:
        vi, en, cls = CHECKIN_MARKS[c["state"]]
        masked = f" {esc(c['masked'])}" if c["masked"] else ""
        rows.append(f'<li><span class="t">{_clock(c["ts"])}</span>'
                    f'<span class="{cls}">{esc(vi)} / {esc(en)}</span>{masked}</li>')
    last_sync = doc["link"].get("last_sync")
    outbox = doc["outbox"]
    return {
        "code": esc(st["code"]), "state_vi": esc(st["vi"]), "state_en": esc(st["en"]),
        "also": also,
        "phones": str(phones["phones"]) if phones else "–",
        "share": _pct(phones["bluezone_share"]) if phones else "–",
        "disk": _pct(fill), "disk_class": disk_class,
        "disk_value": f"{min(float(fill), 1.0):.4f}" if isinstance(fill, int | float) else "0",
        "outbox": str(int(outbox["depth"])),
        "outbox_fill": f"lô / batches · {_pct(outbox.get('fill'))} đầy / full",
        "outbox_value": (f"{min(float(outbox['fill']), 1.0):.4f}"
                         if isinstance(outbox.get("fill"), int | float) else "0"),
        "last_sync": _clock(last_sync) if isinstance(last_sync, int | float) else "chưa / never",
        **dropped_view(doc.get("dropped") or {}),
        "checkins": "".join(rows), "updated": _clock(float(doc["ts"]), seconds=True),
        "gateway": esc(str(doc.get("gateway", ""))),
    }


class StatusPage:
    """The aiohttp application of the status page.

    Args:
        health: returns the current health document (``Gateway.health``).
        recent: returns the newest ``n`` staff feedback events (``FeedbackEvents.recent``).
        metrics: the daemon's metrics (``/metrics`` answers 404 without them).
        title: venue name shown in the header.
        refresh_s: how often the page refreshes itself.
    """

    def __init__(self, health: HealthProvider, *, recent: RecentProvider | None = None,
                 metrics: GatewayMetrics | None = None, title: str = "",
                 refresh_s: float = 5.0) -> None:
        self.health = health
        self.recent = recent
        self.metrics = metrics
        self.title = title or "Trạm ghi nhận / Venue gateway"
        self.refresh_s = refresh_s
        css, js = _asset("status.css"), _asset("status.js")
        self._page = Template(_asset("status.html"))
        self._assets = {"css": css, "js": js}
        self._csp = ("default-src 'none'; "
                     f"script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
                     "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                     "form-action 'none'; frame-ancestors 'none'")

    def app(self) -> web.Application:
        """A new application with the page's routes."""
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self._index)
        app.router.add_get("/health", self._health)
        app.router.add_get("/checkins", self._checkins)
        app.router.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    def _doc(self) -> Mapping[str, Any]:
        try:
            return self.health()
        except (BzgwError, OSError) as err:
            log.error("health unavailable: %s", err)
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"health unavailable: {err}"}),
                content_type="application/json") from err

    def _checkin_list(self) -> list[dict[str, Any]]:
        return checkin_rows(self.recent(RECENT_N * 4))[:RECENT_N] if self.recent else []

    async def _index(self, request: web.Request) -> web.Response:
        values = view(self._doc(), self._checkin_list())
        body = self._page.substitute(values, title=html.escape(self.title),
                                     refresh_s=f"{self.refresh_s:g}",
                                     # without the script the whole page reloads: not too often
                                     reload_s=f"{max(self.refresh_s, 5.0):g}", **self._assets)
        return web.Response(text=body, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": self._csp})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self._doc(), dumps=_dumps)

    async def _checkins(self, request: web.Request) -> web.Response:
        return web.json_response(self._checkin_list(), dumps=_dumps)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            raise web.HTTPNotFound(text="metrics are not enabled")
        try:
            body = self.metrics.render()  # the collector builds a health document
        except (BzgwError, OSError) as err:
            log.error("metrics unavailable: %s", err)
            raise web.HTTPServiceUnavailable(text=f"metrics unavailable: {err}") from err
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


async def start_status(page: StatusPage, *, host: str, port: int) -> web.AppRunner:
    """Serve ``page`` on ``host:port`` (port 0: any free port); ``await runner.cleanup()``.

    Raises:
        BzgwError: the address cannot be bound (in use, not an address of this machine).
    """
    runner = web.AppRunner(page.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise BzgwError(f"status page cannot listen on {host}:{port}: {err}") from err
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    addr = runner.addresses[0]
    return int(addr[1])


async def serve_status(page: StatusPage, *, host: str, port: int,
                       stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set (the daemon's task)."""
    runner = await start_status(page, host=host, port=port)
    log.info("status page on http://%s:%d/", host, bound_port(runner))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()

