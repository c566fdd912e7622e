"""Logins on the provincial dashboard: every route behind a session, roles, CSRF, throttled
failures, session ends, and the audit entries of logins and user changes (real users file,
real audit log, real HTTP server)."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import ServedApp
from click.testing import CliRunner
from webclient import FAST_HASHER, WebClient

from bzgw.cli import cli
from core.auth import Throttle
from matcher.audit import AuditLog, entries, load_audit_public, verify
from matcher.dashboard import Dashboard
from matcher.dashboard_auth import DashboardAuth
from matcher.store import Store, open_store
from matcher.users import UserError, UserStore

PASSWORDS = {"viet.viewer": "quan-sat-vien 2021", "hoa.officer": "can-bo-y-te 2021",
             "an.admin": "quan-tri-vien 2021"}
ROLES = {"viet.viewer": "viewer", "hoa.officer": "health_officer", "an.admin": "admin"}


class Clock:
    def __init__(self) -> None:
        self.t = 1_760_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'matcher.db'}") as s:
        yield s


@pytest.fixture
def users(tmp_path: Path) -> Iterator[UserStore]:
    with UserStore(tmp_path / "users.db", hasher=FAST_HASHER) as u:
        for name, pw in PASSWORDS.items():
            u.add(name, ROLES[name], pw)
        yield u


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")


def make_auth(users: UserStore, audit: AuditLog | None, clock: Clock | None = None,
              **kw: Any) -> DashboardAuth:
    kw.setdefault("secure", False)
    return DashboardAuth(users, audit=audit, clock=clock or Clock(), **kw)


def served(store: Store, auth: DashboardAuth) -> ServedApp:
    return ServedApp(Dashboard(store, auth=auth).app)


def login(client: WebClient, user: str, password: str | None = None) -> Any:
    form = client.get("login")
    return client.post("login", {"csrf": form.field("csrf"), "next": form.field("next"),
                                 "user": user, "password": password or PASSWORDS[user]})


def audit_events(tmp_path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["event"], e["actor"], e["data"]) for e in entries(tmp_path / "audit.log")]


def routes(app: Any) -> list[tuple[str, str]]:
    """Every (method, path) the application answers, placeholders filled in."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or re.sub(r"\{[^}]+\}", "x", info.get("formatter", ""))
        if route.method != "HEAD":
            out.append((route.method, path))
    return out


def test_login_required_on_every_dashboard_route(store: Store, users: UserStore) -> None:
    dash = Dashboard(store, auth=make_auth(users, None))
    every = routes(dash.app())
    assert {p for _, p in every} >= {"/", "/api/dashboard.json", "/login", "/logout", "/users",
                                     "/users/disable", "/reports", "/reports/x/x"}
    with ServedApp(dash.app) as srv:
        client = WebClient(srv.url, follow=False)
        for method, path in every:
            if path == "/login":
                continue
            got = client.request(path, {} if method == "POST" else None)
            if method == "GET" and not path.startswith("/api/"):
                assert got.status == 303, (method, path)
                where = urllib.parse.urlsplit(got.headers["Location"])
                assert where.path == "/login", path
                assert urllib.parse.parse_qs(where.query) == {"next": [path]}, path
            else:
                assert got.status == 401, (method, path)
                assert json.loads(got.body) == {"error": "login required"}
            assert got.headers["Cache-Control"] == "no-store"
            assert b"gw-" not in got.body and b"<table" not in got.body
        # also unknown paths and query strings: no hint what exists
        assert client.get("nothing").status == 303
        where = urllib.parse.urlsplit(client.get("?days=1").headers["Location"])
        assert urllib.parse.parse_qs(where.query) == {"next": ["/?days=1"]}
        assert client.get("login").status == 200
    with pytest.raises(ValueError, match="needs users and sessions"):
        Dashboard(store).app()  # the dashboard is never served without logins


def test_login_flow_cookie_flags_and_audit(store: Store, users: UserStore, audit: AuditLog,
                                           tmp_path: Path) -> None:
    auth = make_auth(users, audit, secure=True)
    with served(store, auth) as srv:
        client = WebClient(srv.url, follow=False)
        form = client.get("login?next=%2F%3Fdays%3D3")
        assert form.status == 200 and "default-src 'none'" in form.headers[
            "Content-Security-Policy"]
        pre = form.headers["Set-Cookie"]
        assert pre.startswith("__Host-bzgw_login=") and "HttpOnly" in pre and "Secure" in pre
        token = pre.split(";")[0].split("=", 1)[1]
        assert form.field("csrf") == token and form.field("next") == "/?days=3"
        # the cookie is Secure, so urllib will not send it over http: post it by hand
        got = client.post("login", {"csrf": token, "next": "/?days=3", "user": "viet.viewer",
                                    "password": PASSWORDS["viet.viewer"]},
                          headers={"Cookie": f"__Host-bzgw_login={token}"})
        assert got.status == 303 and got.headers["Location"] == "/?days=3"
        cookie = next(c for c in got.set_cookies if c.startswith("__Host-bzgw_session="))
        for flag in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/", "Max-Age=28800"):
            assert flag in cookie, flag
        gone = next(c for c in got.set_cookies if c.startswith("__Host-bzgw_login="))
        assert "Max-Age=0" in gone  # the login form's token is used up
        session = cookie.split(";")[0].split("=", 1)[1]
        page = client.get("?days=3", headers={"Cookie": f"__Host-bzgw_session={session}"})
        assert page.status == 200 and 'id="whoami">viet.viewer<' in page.text
        assert page.field("csrf") != token  # the session has its own form token
        assert page.headers["X-Frame-Options"] == "DENY"
    (event, actor, data), = audit_events(tmp_path)
    assert (event, actor, data) == ("login", "viet.viewer", {"addr": "127.0.0.1",
                                                             "role": "viewer"})
    assert verify(tmp_path / "audit.log", load_audit_public(tmp_path / "audit.pub"))[1] == []


def test_login_failures_are_throttled_per_user_and_address(store: Store, users: UserStore,
                                                           audit: AuditLog,
                                                           tmp_path: Path) -> None:
    clock = Clock()
    per_user, per_addr = Throttle(free=2, clock=clock), Throttle(free=4, clock=clock)
    auth = make_auth(users, audit, clock, user_throttle=per_user, addr_throttle=per_addr)
    with served(store, auth) as srv:
        client = WebClient(srv.url)
        assert [login(client, "hoa.officer", "wrong password 1").status
                for _ in range(2)] == [401, 401]
        third = login(client, "hoa.officer", "wrong password 2")
        assert third.status == 401 and per_user.wait_s("user:hoa.officer") == 2.0
        held = login(client, "hoa.officer")  # right password, but held: not even checked
        assert held.status == 429 and held.headers["Retry-After"] == "3"
        assert "Too many failed logins" in held.text
        assert client.get("api/dashboard.json").status == 401
        clock.t += 2.1
        # another user from the same address: that address has failed 3 times of 4 free
        assert login(client, "no.such.user", "my secret pw 123").status == 401
        assert login(client, "viet.viewer", "typo typo typo").status == 401
        assert per_addr.wait_s("addr:127.0.0.1") == 2.0
        assert login(client, "viet.viewer").status == 429  # the address is held now
        clock.t += 2.1
        ok = login(client, "hoa.officer")
        assert ok.status == 200 and 'id="whoami">hoa.officer<' in ok.text
        assert per_user.failures("user:hoa.officer") == 0  # success clears the user
    events = audit_events(tmp_path)
    assert [e[0] for e in events] == ["login_failed"] * 5 + ["login"]
    assert [(a, d["reason"]) for _, a, d in events[:5]] == [
        ("hoa.officer", "password")] * 3 + [("?", "unknown_user"), ("viet.viewer", "password")]
    assert events[2][2]["locked_s"] == 2.0 and events[0][2]["locked_s"] == 0
    # no password ever, and not the name typed for an unknown user
    log = (tmp_path / "audit.log").read_text()
    for secret in ("wrong password", "my secret pw", "typo typo", *PASSWORDS.values(),
                   "no.such.user"):
        assert secret not in log


def test_login_and_logout_forms_need_csrf_tokens(store: Store, users: UserStore,
                                                 audit: AuditLog, tmp_path: Path) -> None:
    with served(store, make_auth(users, audit)) as srv:
        client = WebClient(srv.url)
        client.get("login")
        forged = client.post("login", {"csrf": "guess", "user": "an.admin",
                                       "password": PASSWORDS["an.admin"]})
        assert forged.status == 403 and "The form expired" in forged.text
        assert client.get("api/dashboard.json").status == 401
        page = login(client, "an.admin")
        assert page.status == 200
        csrf = page.field("csrf")
        assert client.post("logout", {}).status == 403
        assert client.post("logout", {"csrf": csrf[:-1] + "x"}).status == 403
        assert client.post("users/disable", {"user": "viet.viewer"}).status == 403
        assert users.get("viet.viewer").disabled is False  # type: ignore[union-attr]
        assert client.get("api/dashboard.json").status == 200  # still logged in
        out = client.post("logout", {"csrf": csrf})
        assert out.status == 200 and out.url.endswith("/login") and 'id="login-form"' in out.text
        assert client.get("api/dashboard.json").status == 401
    assert [e[:2] for e in audit_events(tmp_path)] == [("login", "an.admin"),
                                                       ("logout", "an.admin")]


def test_auth_roles_viewer_officer_admin(store: Store, users: UserStore, audit: AuditLog,
                                         tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    (reports / "report-hn-0042").mkdir(parents=True)
    (reports / "report-hn-0042" / "report.json").write_text('{"cases": []}')
    auth = make_auth(users, audit, reports_dir=reports)
    with served(store, auth) as srv:
        viewer, officer, admin = (WebClient(srv.url) for _ in range(3))
        v = login(viewer, "viet.viewer")
        assert 'id="nav-reports"' not in v.text and 'id="nav-users"' not in v.text
        assert viewer.get("reports").status == 403 and viewer.get("users").status == 403
        assert viewer.get("reports/report-hn-0042/report.json").status == 403
        o = login(officer, "hoa.officer")
        assert 'id="nav-reports"' in o.text and 'id="nav-users"' not in o.text
        listing = officer.get("reports")
        assert listing.status == 200 and 'data-report="report-hn-0042"' in listing.text
        got = officer.get("reports/report-hn-0042/report.json")
        assert got.status == 200 and json.loads(got.body) == {"cases": []}
        assert got.headers["Content-Disposition"].startswith("attachment")
        assert officer.get("reports/report-hn-0042/secret.txt").status == 404
        assert officer.get("reports/..%2F..%2Fusers.db/report.json").status == 404
        assert officer.get("users").status == 403
        a = login(admin, "an.admin")
        assert 'id="nav-users"' in a.text
        page = admin.get("users")
        assert page.status == 200 and 'data-user="viet.viewer"' in page.text
        done = admin.post("users/disable", {"csrf": a.field("csrf"), "user": "viet.viewer"})
        assert done.status == 200 and done.url.endswith("/users")
        # the viewer's open session ended with the account
        assert viewer.get("api/dashboard.json").status == 401
        assert login(viewer, "viet.viewer").status == 401
        assert admin.post("users/disable", {"csrf": a.field("csrf"),
                                            "user": "an.admin"}).status == 400
    events = audit_events(tmp_path)
    assert ("report", "hoa.officer") in [e[:2] for e in events]
    dis = next(d for e, a, d in events if e == "user_disable")
    assert dis["user"] == "viet.viewer" and dis["via"] == "dashboard"
    assert events[-1][:3] == ("login_failed", "viet.viewer",
                              {"addr": "127.0.0.1", "reason": "disabled", "locked_s": 0})


def test_auth_sessions_end_idle_expired_or_changed(store: Store, users: UserStore) -> None:
    clock = Clock()
    auth = make_auth(users, None, clock, session_s=3600, idle_s=600)
    with served(store, auth) as srv:
        client = WebClient(srv.url)
        login(client, "viet.viewer")
        clock.t += 500
        assert client.get("api/dashboard.json").status == 200
        clock.t += 500  # used 500 s ago: still alive
        assert client.get("api/dashboard.json").status == 200
        clock.t += 601
        assert client.get("api/dashboard.json").status == 401  # idle too long
        login(client, "viet.viewer")
        for _ in range(8):  # never idle, but 4000 s after the login
            clock.t += 500
            client.get("api/dashboard.json")
        assert client.get("api/dashboard.json").status == 401  # past the absolute limit
        login(client, "viet.viewer")
        users.set_password("viet.viewer", "mot mat khau moi 2021")
        assert client.get("api/dashboard.json").status == 401  # password changed elsewhere
        assert login(client, "viet.viewer", "mot mat khau moi 2021").status == 200


def test_login_next_never_leaves_the_site(store: Store, users: UserStore) -> None:
    with served(store, make_auth(users, None)) as srv:
        for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "evil"):
            client = WebClient(srv.url, follow=False)
            form = client.get("login?" + urllib.parse.urlencode({"next": bad}))
            assert form.field("next") == "/"
            got = client.post("login", {"csrf": form.field("csrf"), "next": bad,
                                        "user": "viet.viewer",
                                        "password": PASSWORDS["viet.viewer"]})
            assert got.status == 303 and got.headers["Location"] == "/", bad


def test_auth_client_address_from_trusted_proxies_only(store: Store, users: UserStore,
                                                       audit: AuditLog,
                                                       tmp_path: Path) -> None:
    for trusted, want in ((["127.0.0.1"], "203.0.113.7"), ([], "127.0.0.1")):
        auth = make_auth(users, audit, trusted_proxies=trusted)
        with served(store, auth) as srv:
            client = WebClient(srv.url)
            form = client.get("login")
            client.post("login", {"csrf": form.field("csrf"), "user": "viet.viewer",
                                  "password": "not the password"},
                        headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert audit_events(tmp_path)[-1][2]["addr"] == want
        assert auth.addr_throttle.failures(f"addr:{want}") == 1


def test_auth_users_file_rules(tmp_path: Path) -> None:
    with UserStore(tmp_path / "u" / "users.db", hasher=FAST_HASHER) as u:
        assert (tmp_path / "u" / "users.db").stat().st_mode & 0o077 == 0
        for name, pw, msg in (("Bad Name", "long enough pw 1", "user name"),
                              ("ok.name", "short", "at least 12"),
                              ("ok.name", "ok.name and more", "user name"),
                              ("ok.name", "aaaaaaaaaaaaaa", "repetitive")):
            with pytest.raises(UserError, match=msg):
                u.add(name, "viewer", pw)
        with pytest.raises(UserError, match="role"):
            u.add("ok.name", "root", "long enough pw 1")
        u.add("ok.name", "viewer", "long enough pw 1")
        with pytest.raises(UserError, match="exists already"):
            u.add("ok.name", "admin", "long enough pw 2")
        with pytest.raises(UserError, match="no user"):
            u.disable("nobody")
        raw = b"".join(p.read_bytes() for p in (tmp_path / "u").iterdir())  # with the WAL
        assert b"long enough pw 1" not in raw and b"$argon2id$" in raw
        stamp = u.get("ok.name").stamp  # type: ignore[union-attr]
        assert u.disable("ok.name").stamp != stamp
        assert u.authenticate("ok.name", "long enough pw 1") == (None, "disabled")
        u.set_password("ok.name", "another long pw", enable=True)
        user, reason = u.authenticate("ok.name", "another long pw")
        assert user is not None and reason == "" and user.role == "viewer"


def test_auth_user_commands_change_users_and_audit(tmp_path: Path) -> None:
    cfg = tmp_path / "matcher.yaml"
    cfg.write_text("matcher:\n  private_key: k\n  registry: r.yaml\n  users_db: users.db\n"
                   "  audit_log: audit.log\n  audit_key: audit.key\n")
    run = CliRunner().invoke
    args = ["matcher", "user"]
    res = run(cli, [*args, "add", "first.admin", "--role", "admin", "--config", str(cfg)],
              input="dau tien quan tri\ndau tien quan tri\n")
    assert res.exit_code == 0, res.output
    assert "added first.admin (admin)" in res.output
    res = run(cli, [*args, "add", "first.admin", "--role", "viewer", "--config", str(cfg),
                    "--password-stdin"], input="khac hoan toan 1\n")
    assert res.exit_code == 1 and "exists already" in res.output
    res = run(cli, [*args, "add", "lan", "--role", "viewer", "--config", str(cfg),
                    "--password-stdin"], input="short\n")
    assert res.exit_code == 1 and "at least 12 characters" in res.output
    assert run(cli, [*args, "add", "lan", "--role", "health_officer", "--config", str(cfg),
                     "--password-stdin"], input="mat khau thu nhat\n").exit_code == 0
    assert run(cli, [*args, "disable", "lan", "--config", str(cfg)]).exit_code == 0
    res = run(cli, [*args, "passwd", "lan", "--enable", "--config", str(cfg),
                    "--password-stdin"], input="mat khau thu hai!\n")
    assert res.exit_code == 0 and "enabled" in res.output
    res = run(cli, [*args, "disable", "nobody", "--config", str(cfg)])
    assert res.exit_code == 1 and "no user 'nobody'" in res.output
    listing = run(cli, [*args, "list", "--config", str(cfg)]).output
    assert re.search(r"^first\.admin\s+admin\s+active", listing, re.M)
    assert re.search(r"^lan\s+health_officer\s+active", listing, re.M)
    with UserStore(tmp_path / "users.db") as users:
        assert users.authenticate("lan", "mat khau thu hai!")[0] is not None
    events = audit_events(tmp_path)
    assert [(e, d.get("user")) for e, _, d in events] == [
        ("user_add", "first.admin"), ("user_add", "lan"), ("user_disable", "lan"),
        ("user_passwd", "lan")]
    assert all(a.startswith("cli:") for _, a, _ in events)
    log = (tmp_path / "audit.log").read_text()
    assert "mat khau" not in log and "dau tien" not in log
    assert verify(tmp_path / "audit.log", load_audit_public(tmp_path / "audit.pub"))[1] == []
