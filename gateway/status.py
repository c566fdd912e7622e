"""The venue status page: one big state for staff, figures, last check-ins; ``/health`` and
``/metrics`` for people with a laptop.

Served on the Pi's LAN (``status.listen``/``status.port``) in the daemon's loop by the small
HTTP/1.1 server of :mod:`gateway.httpserver` (h11; not aiohttp, which costs ~10 MB on the Pi).
The page is rendered complete on the server (it works without JavaScript, with a meta
refresh), then a small inline script refreshes it from ``/health`` and ``/checkins``. CSS and
script are inlined from ``gateway/static/`` and allowed by hash in the Content-Security-Policy:
the page loads nothing from anywhere, which suits a venue LAN without internet.

Routes: ``/`` (HTML), ``/health`` (the health document), ``/checkins`` (recent staff feedback:
time, outcome, masked identity only), ``/metrics`` (Prometheus text format), ``POST /pin`` and
``POST /lock``.

Who sees what: anyone on the venue LAN sees the working state and the counts (the page and
``/health``: no person in them). The last check-ins, masked as they are, are for staff: the page
lists them, and ``/checkins`` answers, only in a session opened with the staff PIN
(``status.staff_pin_hash``, an Argon2id hash; no hash configured: never). Wrong PINs are
throttled per address and for everyone together (a PIN is short: a LAN full of addresses must
not be able to try them all). ``/metrics`` answers only the networks of ``status.metrics_allow``
(default: the Pi itself): a scraper cannot enter a PIN, and the venue's guest Wi-Fi has no
business reading the gateway's internals; a monitoring host is added there by address.
The PIN cookie is HttpOnly and SameSite=Strict but not Secure: the page is plain HTTP on the
venue LAN (no certificate a venue tablet would trust), which is also why it ends after
``status.staff_session_minutes``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from string import Template
from typing import Any

from contract.health import DISK_FULL, DISK_WARN, VENUE_TZ
from core.auth import Session, Sessions, Throttle, new_token, same_token, verify_secret
from core.errors import BzgwError
from gateway.httpserver import App, HTTPError, Request, Response, Server, serve
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
STAFF_COOKIE = "bzgw_staff"
FORM_COOKIE = "bzgw_pin_form"
MAX_BODY = 4096  # the PIN and lock forms are a few dozen bytes
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


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
        "checkins": view_rows(checkins), "updated": _clock(float(doc["ts"]), seconds=True),
        "gateway": esc(str(doc.get("gateway", ""))),
    }


def view_rows(checkins: Sequence[Mapping[str, Any]]) -> str:
    """The check-in list items (already HTML-escaped); ``status.js`` mirrors it."""
    esc = html.escape
    rows = []
    for c in checkins:
        vi, en, cls = CHECKIN_MARKS[c["state"]]
        masked = f" {esc(c['masked'])}" if c["masked"] else ""
        rows.append(f'<li><span class="t">{_clock(c["ts"])}</span>'
                    f'<span class="{cls}">{esc(vi)} / {esc(en)}</span>{masked}</li>')
    return "".join(rows)


class StatusPage:
    """The status page's routes and what they answer.

    Args:
        health: returns the current health document (``Gateway.health``).
        recent: returns the newest ``n`` staff feedback events (``FeedbackEvents.recent``).
        metrics: the daemon's metrics (``/metrics`` answers 404 without them).
        title: venue name shown in the header.
        refresh_s: how often the page refreshes itself.
        staff_pin_hash: Argon2id hash of the staff PIN; empty: check-ins are never shown.
        staff_session_s: how long an entered PIN lasts.
        metrics_allow: networks that may read ``/metrics``.
        pin_throttle: wrong PINs per address (default: 5 free, then 2 s doubling to 15 min)
            and, under the key ``"*"``, for everyone (20 free).
        clock: wall time (sessions, throttles).
    """

    def __init__(self, health: HealthProvider, *, recent: RecentProvider | None = None,
                 metrics: GatewayMetrics | None = None, title: str = "",
                 refresh_s: float = 5.0, staff_pin_hash: str = "",
                 staff_session_s: float = 3600.0,
                 metrics_allow: Sequence[str] = ("127.0.0.1/32", "::1/128"),
                 pin_throttle: tuple[Throttle, Throttle] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.health = health
        self.recent = recent
        self.metrics = metrics
        self.title = title or "Trạm ghi nhận / Venue gateway"
        self.refresh_s = refresh_s
        self.staff_pin_hash = staff_pin_hash
        self.sessions = Sessions(ttl_s=staff_session_s, max_sessions=64, clock=clock)
        self.metrics_allow = [ipaddress.ip_network(n, strict=False) for n in metrics_allow]
        self.addr_throttle, self.all_throttle = pin_throttle or (
            Throttle(free=5, clock=clock), Throttle(free=20, clock=clock))
        self._hashing = asyncio.Semaphore(1)  # an Argon2 check takes 64 MiB and a core
        css, js = _asset("status.css"), _asset("status.js")
        self._page = Template(_asset("status.html"))
        self._assets = {"css": css, "js": js}
        self._csp = ("default-src 'none'; "
                     f"script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
                     "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                     "form-action 'self'; frame-ancestors 'none'")

    def app(self) -> App:
        """A new application with the page's routes (serve it with :func:`start_status`)."""
        app = App(headers=HEADERS, max_body=MAX_BODY)
        app.get("/", self._index)
        app.get("/health", self._health)
        app.get("/checkins", self._checkins)
        app.get("/metrics", self._metrics)
        app.post("/pin", self._pin)
        app.post("/lock", self._lock)
        return app

    def staff(self, request: Request) -> Session | None:
        """The request's PIN session, if any."""
        return self.sessions.get(request.cookies.get(STAFF_COOKIE))

    def _doc(self) -> Mapping[str, Any]:
        try:
            return self.health()
        except (BzgwError, OSError) as err:
            log.error("health unavailable: %s", err)
            raise HTTPError(Response.json({"error": f"health unavailable: {err}"},
                                          status=503)) from err

    def _checkin_list(self) -> list[dict[str, Any]]:
        return checkin_rows(self.recent(RECENT_N * 4))[:RECENT_N] if self.recent else []

    async def _index(self, request: Request) -> Response:
        return self._render(request, self.staff(request))

    def _render(self, request: Request, staff: Session | None, *, error: str = "",
                status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        values = view(self._doc(), self._checkin_list() if staff else [])
        # one form token per browser (double-submit): several open tabs all keep working
        form_token = request.cookies.get(FORM_COOKIE) or new_token()
        body = self._page.substitute(values, title=html.escape(self.title),
                                     refresh_s=f"{self.refresh_s:g}",
                                     # without the script the whole page reloads: not too often
                                     reload_s=f"{max(self.refresh_s, 5.0):g}",
                                     unlocked="1" if staff else "0",
                                     staff=self._staff_html(staff, form_token, error,
                                                            values["checkins"]),
                                     **self._assets)
        resp = Response.text(body, content_type="text/html", status=status,
                             headers={"Content-Security-Policy": self._csp, **(headers or {})})
        if staff is None and self.staff_pin_hash:
            resp.set_cookie(FORM_COOKIE, form_token, max_age=3600)
        return resp

    def _staff_html(self, staff: Session | None, form_token: str, error: str,
                    rows: str) -> str:
        if staff is not None:
            return (f'<ol id="checkins">{rows}</ol>'
                    '<form method="post" action="lock" class="staff-form" id="lock-form">'
                    f'<input type="hidden" name="csrf" value="{staff.csrf}">'
                    '<button type="submit" id="lock">Khoá / Lock</button></form>')
        if not self.staff_pin_hash:
            return ('<p class="staff-note" id="staff-note">Chưa cài mã PIN nhân viên / No '
                    "staff PIN is set up (status.staff_pin_hash)</p>")
        err = f'<p class="staff-error" id="pin-error">{html.escape(error)}</p>' if error else ""
        return (f'{err}<form method="post" action="pin" class="staff-form" id="pin-form">'
                f'<input type="hidden" name="csrf" value="{form_token}">'
                '<label>Mã PIN nhân viên / Staff PIN <input name="pin" id="pin" '
                'type="password" inputmode="numeric" autocomplete="off" maxlength="12" '
                'required></label><button type="submit" id="unlock">Mở / Show</button></form>')

    async def _pin(self, request: Request) -> Response:
        form = request.form()
        if not same_token(str(form.get("csrf", "")), request.cookies.get(FORM_COOKIE)):
            return self._render(request, None, status=403,
                                error="Biểu mẫu đã hết hạn / The form expired: try again")
        addr = request.remote or ""
        wait = max(self.addr_throttle.wait_s(addr), self.all_throttle.wait_s("*"))
        if wait > 0:
            secs = int(wait) + 1
            return self._render(request, None, status=429, headers={"Retry-After": str(secs)},
                                error=f"Sai quá nhiều lần, thử lại sau {secs} giây / Too many "
                                      f"wrong PINs: try again in {secs} s")
        pin = str(form.get("pin", ""))[:64]
        async with self._hashing:
            ok = bool(self.staff_pin_hash) and await asyncio.to_thread(
                verify_secret, self.staff_pin_hash, pin)
        if not ok:
            locked = max(self.addr_throttle.fail(addr), self.all_throttle.fail("*"))
            log.warning("wrong staff PIN from %s%s", addr,
                        f"; next try in {locked:.0f} s" if locked else "")
            return self._render(request, None, status=401, error="Sai mã PIN / Wrong PIN")
        self.addr_throttle.clear(addr)
        token, _ = self.sessions.create("staff", "staff")
        resp = Response.redirect("./")
        resp.set_cookie(STAFF_COOKIE, token, max_age=int(self.sessions.ttl_s))
        resp.del_cookie(FORM_COOKIE)
        return resp

    async def _lock(self, request: Request) -> Response:
        token = request.cookies.get(STAFF_COOKIE)
        s = self.sessions.get(token)
        form = request.form()
        if s is None or not same_token(str(form.get("csrf", "")), s.csrf):
            return Response.error(403, "no PIN session or a wrong form token")
        self.sessions.drop(token)
        resp = Response.redirect("./")
        resp.del_cookie(STAFF_COOKIE)
        return resp

    async def _health(self, request: Request) -> Response:
        return Response.json(self._doc(), dumps=_dumps)

    async def _checkins(self, request: Request) -> Response:
        if self.staff(request) is None:
            return Response.json({"error": "staff PIN required"}, status=401)
        return Response.json(self._checkin_list(), dumps=_dumps)

    def _metrics_allowed(self, request: Request) -> bool:
        try:
            addr = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.metrics_allow)

    async def _metrics(self, request: Request) -> Response:
        if not self._metrics_allowed(request):
            return Response.error(403, "metrics are served to status.metrics_allow only")
        if self.metrics is None:
            return Response.error(404, "metrics are not enabled")
        try:
            body = self.metrics.render()  # the collector builds a health document
        except (BzgwError, OSError) as err:
            log.error("metrics unavailable: %s", err)
            return Response.error(503, f"metrics unavailable: {err}")
        return Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


async def start_status(page: StatusPage, *, host: str, port: int) -> Server:
    """Serve ``page`` on ``host:port`` (port 0: any free port); ``await server.close()``.

    Raises:
        BzgwError: the address cannot be bound (in use, not an address of this machine).
    """
    try:
        return await serve(page.app(), host=host, port=port)
    except OSError as err:
        raise BzgwError(f"status page cannot listen on {host}:{port}: {err}") from err


def bound_port(server: Server) -> int:
    """The TCP port a started server listens on."""
    return server.port


async def serve_status(page: StatusPage, *, host: str, port: int,
                       stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set (the daemon's task)."""
    server = await start_status(page, host=host, port=port)
    log.info("status page on http://%s:%d/", host, bound_port(server))
    try:
        await stop.wait()
    finally:
        await server.close()

