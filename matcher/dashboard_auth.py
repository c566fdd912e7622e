"""Logins for the provincial dashboard: every route but ``/login`` needs a session.

- ``GET /login`` shows the form, ``POST /login`` checks the password (Argon2id, in a thread,
  at most two at a time) and starts a session; ``POST /logout`` ends it.
- The session cookie is random, HttpOnly, SameSite=Strict, ``Secure`` (and ``__Host-``
  prefixed) unless ``matcher.dashboard_secure_cookies`` is false; sessions end after
  ``dashboard_session_hours``, after ``dashboard_idle_minutes`` unused, and at once when the
  user is disabled or their password changes (every request re-reads the user).
- Every POST carries the session's CSRF token; the login form, before any session, a
  double-submit token (cookie and field).
- Failed logins are throttled per user name and per client address (behind a trusted reverse
  proxy: its ``X-Forwarded-For``); a throttled attempt is answered 429 without checking the
  password.
- Without a session, pages redirect to the login form (303) and the JSON API answers 401;
  a role too low for a route answers 403.
- Logins, failed logins, logouts, user changes and report downloads go to the audit log;
  never a password, and never the name typed for an unknown user (it may be a password typed
  in the wrong field).

Roles (``matcher.users``): ``viewer`` sees the dashboard and its JSON; ``health_officer`` also
downloads match reports (``/reports``); ``admin`` also lists and disables users (``/users``).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from core.auth import Session, Sessions, Throttle, new_token, same_token
from matcher.audit import AuditLog
from matcher.users import UserError, UserStore, role_at_least

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = frozenset({"/login"})
REPORT_FILES = {"report.json": "application/json", "report.csv": "text/csv",
                "report.html": "text/html"}


class DashboardAuth:
    """Users, sessions and throttles of one dashboard process.

    Args:
        users: the users file.
        audit: where logins and user changes are logged (``None``: nowhere, tests only).
        secure: mark cookies ``Secure`` (served through HTTPS).
        session_s, idle_s: absolute and idle lifetime of a session.
        trusted_proxies: peers whose ``X-Forwarded-For`` is believed.
        reports_dir: match reports health officers may download.
        user_throttle, addr_throttle: failed-login throttles (default: 5 free tries, then
            2 s doubling up to 15 min per user; 20 free tries per address).
        clock: wall time (sessions, throttles).
    """

    def __init__(self, users: UserStore, *, audit: AuditLog | None, secure: bool = True,
                 session_s: float = 8 * 3600, idle_s: float = 1800,
                 trusted_proxies: tuple[str, ...] | list[str] = ("127.0.0.1", "::1"),
                 reports_dir: Path | None = None,
                 user_throttle: Throttle | None = None, addr_throttle: Throttle | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.users = users
        self.audit = audit
        self.secure = secure
        self.sessions = Sessions(ttl_s=session_s, idle_s=idle_s, clock=clock)
        self.trusted = frozenset(trusted_proxies)
        self.reports_dir = reports_dir
        self.user_throttle = user_throttle or Throttle(free=5, clock=clock)
        self.addr_throttle = addr_throttle or Throttle(free=20, clock=clock)
        self.cookie = "__Host-bzgw_session" if secure else "bzgw_session"
        self.login_cookie = "__Host-bzgw_login" if secure else "bzgw_login"
        self._hashing = asyncio.Semaphore(2)  # 64 MiB and a core per Argon2 check
        self._shell: Callable[[str, str, str], web.Response] | None = None

    def install(self, app: web.Application,
                shell: Callable[[str, str, str], web.Response]) -> None:
        """Add the middleware and the login, logout, users and reports routes to ``app``.

        ``shell(title, account_html, body_html)`` renders a page in the dashboard's frame.
        """
        self._shell = shell
        app.middlewares.append(self._middleware)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/users", self._users_page)
        app.router.add_post("/users/disable", self._disable)
        app.router.add_get("/reports", self._reports_page)
        app.router.add_get("/reports/{name}/{file}", self._report_file)

    # -- who is asking ------------------------------------------------------------------------
    def client_addr(self, request: web.Request) -> str:
        """The client's address: the peer, or what a trusted proxy says the peer was."""
        peer = request.remote or ""
        xff = request.headers.get("X-Forwarded-For", "")
        if peer in self.trusted and xff:
            hops = [h.strip() for h in xff.split(",") if h.strip()]
            for hop in reversed(hops):
                if hop not in self.trusted:
                    return hop
        return peer

    def session(self, request: web.Request) -> Session | None:
        """The request's live session; ends it when its user was disabled or changed."""
        token = request.cookies.get(self.cookie)
        s = self.sessions.get(token)
        if s is None:
            return None
        user = self.users.get(s.user)
        if user is None or user.disabled or user.stamp != s.stamp:
            self.sessions.drop(token)
            return None
        return s

    def current(self, request: web.Request) -> Session:
        """The session of a request the middleware let through."""
        s = self.session(request)
        if s is None:  # ended between the middleware and the handler
            raise web.HTTPUnauthorized(text="login required")
        return s

    def account_html(self, s: Session | None) -> str:
        """The header's "who am I, log out" part for a page of session ``s``."""
        if s is None:
            return ""
        esc = html.escape
        links = ""
        if role_at_least(s.role, "health_officer"):
            links += ' <a href="/reports" id="nav-reports">Báo cáo / Reports</a>'
        if role_at_least(s.role, "admin"):
            links += ' <a href="/users" id="nav-users">Người dùng / Users</a>'
        return (f'<span class="account" id="account"><span id="whoami">{esc(s.user)}</span> '
                f'({esc(s.role)}){links} <form method="post" action="/logout">'
                f'<input type="hidden" name="csrf" value="{esc(s.csrf)}">'
                '<button type="submit" id="logout">Đăng xuất / Log out</button></form></span>')

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC:
            resp = await handler(request)
        else:
            s = self.session(request)
            if s is None:
                return _unauthenticated(request)
            need = _needed_role(request.path)
            if not role_at_least(s.role, need):
                raise web.HTTPForbidden(text=f"this page needs the {need} role")
            if request.method not in ("GET", "HEAD"):
                form = await request.post()
                token = request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))
                if not same_token(token, s.csrf):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the "
                                                 "page and try again")
            resp = await handler(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    # -- login and logout ---------------------------------------------------------------------
    def _form(self, *, next_url: str, error: str = "", user: str = "",
              status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        assert self._shell is not None
        token = new_token()
        esc = html.escape
        err = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
        body = (f'<section class="login"><h2>Đăng nhập / Log in</h2>{err}'
                '<form method="post" action="/login" id="login-form">'
                f'<input type="hidden" name="csrf" value="{token}">'
                f'<input type="hidden" name="next" value="{esc(next_url)}">'
                '<label>Tên đăng nhập / User name <input name="user" id="user" '
                f'autocomplete="username" required value="{esc(user)}"></label>'
                '<label>Mật khẩu / Password <input name="password" id="password" '
                'type="password" autocomplete="current-password" required></label>'
                '<button type="submit" id="login">Đăng nhập / Log in</button></form></section>')
        resp = self._shell("Đăng nhập / Log in", "", body)
        resp.set_status(status)
        resp.headers.update(headers or {})
        resp.set_cookie(self.login_cookie, token, httponly=True, samesite="Strict",
                        secure=self.secure, path="/", max_age=3600)
        return resp

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        next_url = _safe_next(request.query.get("next", "/"))
        if self.session(request) is not None:
            raise web.HTTPSeeOther(next_url)
        return self._form(next_url=next_url)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        next_url = _safe_next(str(form.get("next", "/")))
        if not same_token(str(form.get("csrf", "")), request.cookies.get(self.login_cookie)):
            return self._form(next_url=next_url, status=403,
                              error="Biểu mẫu đã hết hạn, hãy thử lại / The form expired: "
                                    "please try again")
        name = str(form.get("user", "")).strip().lower()[:64]
        password = str(form.get("password", ""))
        addr = self.client_addr(request)
        ukey, akey = f"user:{name}", f"addr:{addr}"
        wait = max(self.user_throttle.wait_s(ukey), self.addr_throttle.wait_s(akey))
        if wait > 0:
            secs = int(wait) + 1
            return self._form(next_url=next_url, user=name, status=429,
                              headers={"Retry-After": str(secs)},
                              error=f"Sai quá nhiều lần, hãy thử lại sau {secs} giây / Too "
                                    f"many failed logins: try again in {secs} s")
        async with self._hashing:
            user, reason = await asyncio.to_thread(self.users.authenticate, name, password)
        if user is None:
            locked = max(self.user_throttle.fail(ukey), self.addr_throttle.fail(akey))
            await self._audit("login_failed", name if reason != "unknown_user" else "?",
                              addr=addr, reason=reason, locked_s=round(locked, 1))
            return self._form(next_url=next_url, user=name, status=401,
                              error="Sai tên đăng nhập hoặc mật khẩu / Wrong user name or "
                                    "password")
        self.user_throttle.clear(ukey)
        token, _ = self.sessions.create(user.name, user.role, user.stamp)
        await self._audit("login", user.name, addr=addr, role=user.role)
        resp = web.HTTPSeeOther(next_url)
        resp.set_cookie(self.cookie, token, httponly=True, samesite="Strict",
                        secure=self.secure, path="/", max_age=int(self.sessions.ttl_s))
        resp.del_cookie(self.login_cookie, path="/", secure=self.secure, samesite="Strict")
        raise resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        s = self.current(request)
        self.sessions.drop(request.cookies.get(self.cookie))
        await self._audit("logout", s.user, addr=self.client_addr(request))
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(self.cookie, path="/", secure=self.secure, samesite="Strict")
        raise resp

    async def _audit(self, event: str, actor: str, **data: Any) -> None:
        if self.audit is not None:  # fsync: not on the loop's thread
            await asyncio.to_thread(self.audit.append, event, actor=actor, **data)

    # -- admin: users -------------------------------------------------------------------------
    async def _users_page(self, request: web.Request) -> web.StreamResponse:
        assert self._shell is not None
        s = self.current(request)
        esc = html.escape
        rows = []
        for u in self.users.list():
            action = ("" if u.disabled or u.name == s.user else
                      '<form method="post" action="/users/disable">'
                      f'<input type="hidden" name="csrf" value="{esc(s.csrf)}">'
                      f'<input type="hidden" name="user" value="{esc(u.name)}">'
                      '<button type="submit">Khoá / Disable</button></form>')
            state = "khoá / disabled" if u.disabled else "hoạt động / active"
            rows.append(f'<tr data-user="{esc(u.name)}"><td>{esc(u.name)}</td>'
                        f"<td>{esc(u.role)}</td><td>{state}</td>"
                        f"<td>{time.strftime('%Y-%m-%d %H:%M', time.gmtime(u.changed_at))}Z"
                        f"</td><td>{action}</td></tr>")
        body = ('<section class="users"><h2>Người dùng / Users</h2>'
                '<p class="hint">Thêm người dùng và đổi mật khẩu: <code>bzgw matcher user add'
                '|passwd</code> / Add users and set passwords with the command line.</p>'
                '<table id="users"><thead><tr><th>Tên / Name</th><th>Vai trò / Role</th>'
                '<th>Trạng thái / State</th><th>Đổi lần cuối / Changed</th><th></th></tr>'
                f'</thead><tbody>{"".join(rows)}</tbody></table></section>')
        return self._shell("Người dùng / Users", self.account_html(s), body)

    async def _disable(self, request: web.Request) -> web.StreamResponse:
        s = self.current(request)
        name = str((await request.post()).get("user", ""))
        if name == s.user:
            raise web.HTTPBadRequest(text="an admin cannot disable their own account here")
        try:
            user = self.users.disable(name)
        except UserError as err:
            raise web.HTTPNotFound(text=str(err)) from err
        self.sessions.drop_user(name)
        await self._audit("user_disable", s.user, user=user.name, role=user.role,
                          via="dashboard", addr=self.client_addr(request))
        raise web.HTTPSeeOther("/users")

    # -- health officers: reports -------------------------------------------------------------
    def _report_dirs(self) -> list[Path]:
        base = self.reports_dir
        if base is None or not base.is_dir():
            return []
        return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                       and any((p / f).is_file() for f in REPORT_FILES)),
                      key=lambda p: p.stat().st_mtime, reverse=True)

    async def _reports_page(self, request: web.Request) -> web.StreamResponse:
        assert self._shell is not None
        s = self.current(request)
        esc = html.escape
        rows = []
        for d in await asyncio.to_thread(self._report_dirs):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(d.stat().st_mtime))
            files = " ".join(
                f'<a href="/reports/{urllib.parse.quote(d.name)}/{f}">{f}</a>'
                for f in REPORT_FILES if (d / f).is_file())
            rows.append(f'<tr data-report="{esc(d.name)}"><td>{esc(d.name)}</td>'
                        f"<td>{when}Z</td><td>{files}</td></tr>")
        body = ('<section><h2>Báo cáo / Match reports</h2><table id="reports"><thead><tr>'
                '<th>Báo cáo / Report</th><th>Lúc / Written</th><th>Tệp / Files</th></tr>'
                f'</thead><tbody>{"".join(rows)}</tbody></table>'
                + ('' if rows else '<p class="muted">Chưa có / None yet</p>') + "</section>")
        return self._shell("Báo cáo / Reports", self.account_html(s), body)

    async def _report_file(self, request: web.Request) -> web.StreamResponse:
        s = self.current(request)
        name, file = request.match_info["name"], request.match_info["file"]
        base = self.reports_dir
        if base is None or file not in REPORT_FILES or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        path = base / name / file
        if not path.is_file():
            raise web.HTTPNotFound()
        await self._audit("report", s.user, action="download", report=name, file=file,
                          addr=self.client_addr(request))
        # a download, never rendered here: the report's own page runs under its own origin
        return web.FileResponse(path, headers={
            "Content-Type": REPORT_FILES[file],
            "Content-Disposition": f'attachment; filename="{name}-{file}"',
            "Content-Security-Policy": "default-src 'none'; sandbox"})


def _needed_role(path: str) -> str:
    if path == "/users" or path.startswith("/users/"):
        return "admin"
    if path == "/reports" or path.startswith("/reports/"):
        return "health_officer"
    return "viewer"


def _unauthenticated(request: web.Request) -> web.StreamResponse:
    """A redirect to the login form for a page, 401 for the API and for posts."""
    if request.method in ("GET", "HEAD") and not request.path.startswith("/api/"):
        target = request.path_qs
        raise web.HTTPSeeOther("/login?" + urllib.parse.urlencode({"next": target}),
                               headers={"Cache-Control": "no-store"})
    raise web.HTTPUnauthorized(text='{"error": "login required"}',
                               content_type="application/json",
                               headers={"Cache-Control": "no-store"})


def _safe_next(value: str) -> str:
    """Only a path of this site (no ``//host``, no scheme): no open redirect after login."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urllib.parse.urlsplit(value)
    return "/" if parts.scheme or parts.netloc or parts.path == "/login" else value
