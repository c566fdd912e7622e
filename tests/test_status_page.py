"""The venue status page, /health, /checkins and /metrics, served from a real daemon."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import LoopThread, RunningGateway, ServedApp, free_port, gateway_config, site_health
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from webclient import FAST_HASHER, WebClient

from ble.simulator import Crowd
from bzgw.lab import Lab
from contract.health import CAMERA_STATES, RADIO_STATES, validate_health
from core.auth import Throttle, hash_secret
from gateway.clock import TrackedClock
from gateway.daemon import DaemonState, Gateway
from gateway.feedback import Feedback
from gateway.metrics import GatewayMetrics
from gateway.status import StatusPage, checkin_rows, start_status
from qr.recognizers import Recognizer
from qr.records import FeedbackState, ScannedCheckIn

CCCD = "079190001234||Trần Thị Bình|02021990|Nữ|12 Lê Lợi, Quận 1, TP. Hồ Chí Minh|01012022"
PIN = "482915"
PIN_HASH = hash_secret(PIN, FAST_HASHER)


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture
def gateway(lab: Lab, tmp_path: Path) -> Iterator[Gateway]:
    """A daemon object (not running) that has heard a crowd and accepted one check-in."""
    # the kernel's sync flag (adjtimex) says "synchronised"; the rest of the clock is real
    gw = Gateway(gateway_config(tmp_path / "gw", lab, status_port=0),
                 clock=TrackedClock(synced=lambda: True))
    crowd = Crowd(seed=2, start=time.time() - 300, duration_s=600)
    crowd.add_bluezone_phones(20, ["cho-a"])
    crowd.add_en_phones(5, ["cho-a"])
    crowd.add_background(10, ["cho-a"])
    for adv in crowd.adverts("cho-a", end=time.time(), rate_hz=0.5):
        gw._on_advert(adv)
    staff = Feedback(enabled=False, events=gw.feedback_events)
    got = Recognizer().recognize(CCCD, ts=time.time(), clock=gw.clock.epoch())
    assert isinstance(got, ScannedCheckIn)
    gw.pipeline.on_checkin(got)
    staff.signal(FeedbackState.ACCEPTED, got.masked)
    staff.signal(FeedbackState.CAMERA_FAULT, detail="no /dev/video0")
    staff.signal(FeedbackState.ALREADY, got.masked)
    staff.signal(FeedbackState.UNREADABLE, detail="not a QR code we know")
    yield gw
    gw.outbox.close()


def page_for(gw: Gateway, **kw: Any) -> StatusPage:
    kw.setdefault("staff_pin_hash", PIN_HASH)
    return StatusPage(gw.health, recent=gw.feedback_events.recent,
                      metrics=GatewayMetrics(gw.health), title="Chợ A", **kw)


def unlock(client: WebClient, pin: str = PIN) -> Any:
    """Enter the staff PIN the way the page's form does."""
    page = client.get("")
    return client.post("pin", {"csrf": page.field("csrf"), "pin": pin})


def test_daemon_health_comes_from_the_health_module(gateway: Gateway) -> None:
    doc = gateway.health()
    assert validate_health(doc) == []
    assert doc["gateway"] == "gw-a" and doc["counts"]["checkins"] == 1
    assert doc["outbox"]["depth"] == gateway.outbox.status().depth >= 1  # the check-in batch
    assert doc["radio"]["adverts"] == gateway.pipeline.stats.adverts > 0
    assert doc["phones"]["phones"] > 0 and doc["phones"]["bluezone_share"] is not None
    assert doc["state"]["code"] == "connecting"  # no sync yet, just started
    fresh = DaemonState()
    assert fresh.radio.state in RADIO_STATES and fresh.camera in CAMERA_STATES


def test_page_shows_state_figures_and_masked_checkins_only(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway).app) as srv:
        client = WebClient(srv.url)
        locked = client.get("")
        unlocked = unlock(client)
    masked = next(e["masked"] for e in gateway.feedback_events.recent(10)
                  if e["state"] == "accepted")
    doc = gateway.health()
    for reply in (locked, unlocked):
        html = reply.text
        assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
        assert "Đang kết nối" in html and "Connecting" in html
        assert f'<span id="phones" class="v">{doc["phones"]["phones"]}</span>' in html
        # nothing readable about the person: not the number, not the name
        for secret in ("079190001234", "Trần Thị Bình", "BÌNH", "Lê Lợi"):
            assert secret not in html
        assert "no /dev/video0" not in html  # camera events are not check-ins
    # without the PIN: state and counts only, and the PIN form
    assert masked and masked not in locked.text and 'id="pin-form"' in locked.text
    assert 'data-unlocked="0"' in locked.text
    # with it: the masked check-ins, accepted then already checked in
    html = unlocked.text
    assert unlocked.url == srv.url and 'data-unlocked="1"' in html
    assert html.count(masked) == 2
    assert "Đã ghi nhận / Accepted" in html and "Không đọc được / Unreadable" in html
    assert 'id="lock-form"' in html and 'id="pin-form"' not in html


def test_inline_assets_are_exactly_what_the_policy_allows(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway).app) as srv:
        _, headers, body = fetch(srv.url)
    html = body.decode()
    csp = headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert script and style

    def digest(text: str) -> str:
        return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"

    assert f"script-src {digest(script.group(1))};" in csp
    assert f"style-src {digest(style.group(1))};" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no external assets


def test_health_and_checkins_json(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway).app) as srv:
        _, h1, health = fetch(srv.url + "health")
        assert fetch(srv.url + "checkins")[0] == 401  # the list is the staff's
        client = WebClient(srv.url)
        unlock(client)
        checkins = client.get("checkins").body
    doc = json.loads(health)
    assert h1["Content-Type"].startswith("application/json")
    assert validate_health(doc) == [] and doc["gateway"] == "gw-a"
    rows = json.loads(checkins)
    assert [r["state"] for r in rows] == ["unreadable", "already checked in", "accepted"]
    assert set(rows[0]) == {"ts", "state", "masked"}  # no free-text detail leaves the Pi
    assert checkin_rows([{"state": "accepted"}, {"state": "camera fault", "ts": 1.0},
                         {"state": "accepted", "ts": 2.0, "masked": None}]) == [
        {"ts": 2.0, "state": "accepted", "masked": ""}]


def test_metrics_match_health_in_a_registry_of_their_own(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway).app) as srv:
        status, headers, body = fetch(srv.url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    doc = gateway.health()
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert got[("bzgw_outbox_depth_batches", ())] == doc["outbox"]["depth"]
    assert got[("bzgw_adverts_total", ())] == doc["radio"]["adverts"]
    assert got[("bzgw_checkins_total", ())] == 1
    assert got[("bzgw_state", (("bzgw_state", "connecting"),))] == 1
    assert got[("bzgw_state", (("bzgw_state", "working"),))] == 0
    assert got[("bzgw_radio_state", (("bzgw_radio_state", "starting"),))] == 1
    assert got[("bzgw_mqtt_connected", ())] == 0
    assert got[("bzgw_clock_synced", ())] == 1
    assert got[("bzgw_phones_now", (("kind", "bluezone"),))] == doc["phones"]["bluezone"]
    assert got[("bzgw_gateway_info", (("gateway", "gw-a"),))] == 1
    # a second gateway in the same process has its own registry; the global one has neither
    other = GatewayMetrics(lambda: {**doc, "gateway": "gw-b"})
    assert b'gateway="gw-b"' in other.render() and b"gw-b" not in body
    assert REGISTRY.get_sample_value("bzgw_uptime_seconds") is None


def test_a_broken_outbox_answers_503_not_a_crash(gateway: Gateway) -> None:
    page = page_for(gateway)
    with ServedApp(page.app) as srv:
        gateway.outbox.close()
        status, _, body = fetch(srv.url + "health")
        assert status == 503 and "health unavailable" in json.loads(body)["error"]
        assert fetch(srv.url)[0] == 503
        assert fetch(srv.url + "metrics")[0] == 503
        assert fetch(srv.url + "nothing")[0] == 404
    assert fetch_refused(srv.url)


def fetch_refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.URLError:
        return True
    return False


def test_run_serves_the_page_on_the_configured_port(lab: Lab, tmp_path: Path) -> None:
    port = free_port()
    cfg = gateway_config(tmp_path / "gw", lab, status_port=port,
                         simulate_from=time.time() - 120)
    url = f"http://127.0.0.1:{port}/"
    with RunningGateway(cfg, clock=TrackedClock(synced=lambda: True)):
        doc: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, _, body = fetch(url + "health") if not fetch_refused(url) else (0, {}, b"")
            if status == 200:
                doc = json.loads(body)
                if doc["state"]["code"] == "working" and doc["phones"]["phones"] > 0:
                    break
            time.sleep(0.2)
        assert validate_health(doc) == [], doc
        assert doc["state"]["code"] == "working" and doc["link"]["connected"] is True
        assert doc["radio"]["state"] == "scanning" and doc["radio"]["adverts"] > 0
        _, _, metrics = fetch(url + "metrics")
        assert b"bzgw_mqtt_connected 1.0" in metrics
        assert b'bzgw_sync_events_total{event="connects"} 1.0' in metrics
    assert fetch_refused(url)  # the page stops with the daemon


# -- the staff PIN -------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 1_760_000_000.0

    def __call__(self) -> float:
        return self.t


def test_status_auth_wrong_pins_are_throttled_per_address_and_overall(
        gateway: Gateway) -> None:
    clock = Clock()
    per_addr, overall = Throttle(free=3, clock=clock), Throttle(free=5, clock=clock)
    page = page_for(gateway, pin_throttle=(per_addr, overall), clock=clock)
    with ServedApp(page.app) as srv:
        client = WebClient(srv.url)
        statuses = [unlock(client, "000000").status for _ in range(3)]
        assert statuses == [401, 401, 401]
        wrong = unlock(client, "111111")  # the 4th wrong PIN starts a wait...
        assert wrong.status == 401 and per_addr.wait_s("127.0.0.1") == 2.0
        # ...during which even the right PIN is not checked
        held = unlock(client)
        assert held.status == 429 and held.headers["Retry-After"] == "3"
        assert "Too many wrong PINs" in held.text and client.get("checkins").status == 401
        clock.t += 2.5
        assert unlock(client, "222222").status == 401  # the next wait doubles
        assert per_addr.wait_s("127.0.0.1") == 4.0
        clock.t += 4.5
        # everyone together: five wrong PINs are free, the sixth (from whichever address)
        # holds every address
        assert overall.failures("*") == 5 and overall.wait_s("*") == 0
        assert unlock(client, "333333").status == 401 and overall.wait_s("*") == 2.0
        per_addr.clear("127.0.0.1")  # as if from another address: still held
        assert unlock(WebClient(srv.url)).status == 429
        clock.t += 10
        per_addr.clear("127.0.0.1")
        overall.clear("*")
        ok = unlock(client)
        assert ok.status == 200 and 'data-unlocked="1"' in ok.text
        assert per_addr.failures("127.0.0.1") == 0


def test_status_auth_forms_need_their_token_and_sessions_end(gateway: Gateway) -> None:
    clock = Clock()
    page = page_for(gateway, staff_session_s=600, clock=clock)
    with ServedApp(page.app) as srv:
        client = WebClient(srv.url)
        client.get("")
        # a PIN posted without the form's token (another site's form) is refused unread
        forged = client.post("pin", {"csrf": "x", "pin": PIN})
        assert forged.status == 403 and client.get("checkins").status == 401
        other = WebClient(srv.url)  # a fresh browser has no form cookie at all
        assert other.post("pin", {"csrf": "", "pin": PIN}).status == 403
        unlocked = unlock(client)
        cookie = client.cookie("bzgw_staff")
        assert cookie is not None and cookie.has_nonstandard_attr("HttpOnly")
        assert client.get("checkins").status == 200
        # locking needs the session's token too
        assert client.post("lock", {"csrf": "nope"}).status == 403
        assert client.get("checkins").status == 200
        assert client.post("lock", {"csrf": unlocked.field("csrf")}).status == 200
        assert client.get("checkins").status == 401
        # an entered PIN lasts staff_session_s
        unlock(client)
        assert client.get("checkins").status == 200
        clock.t += 601
        assert client.get("checkins").status == 401
        assert 'id="pin-form"' in client.get("").text


def test_status_auth_without_a_pin_set_up_checkins_are_never_shown(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway, staff_pin_hash="").app) as srv:
        client = WebClient(srv.url)
        page = client.get("")
        assert page.status == 200 and 'id="staff-note"' in page.text
        assert 'id="pin-form"' not in page.text and "***" not in page.text
        assert client.post("pin", {"csrf": "", "pin": "123456"}).status == 403
        assert client.get("checkins").status == 401


def test_status_auth_metrics_only_for_allowed_networks(gateway: Gateway) -> None:
    with ServedApp(page_for(gateway, metrics_allow=["10.20.0.0/16"]).app) as srv:
        status, _, body = fetch(srv.url + "metrics")
        assert status == 403 and b"metrics_allow" in body
        assert fetch(srv.url + "health")[0] == 200  # state and counts stay open
    with ServedApp(page_for(gateway, metrics_allow=["127.0.0.0/8"]).app) as srv:
        assert fetch(srv.url + "metrics")[0] == 200


def test_status_auth_config_keeps_hashes_only(tmp_path: Path) -> None:
    from bzgw.config import load
    from core.errors import ConfigError

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"status:\n  staff_pin_hash: '{PIN_HASH}'\n  metrics_allow: [10.1.0.0/16]\n")
    assert load(cfg).status.staff_pin_hash == PIN_HASH
    cfg.write_text("status:\n  listen: 0.0.0.0\n  staff_pin_hash: '482915'\n")
    with pytest.raises(ConfigError) as err:
        load(cfg)
    (where, msg), = err.value.problems
    assert where.endswith("gw.yaml:3: status -> staff_pin_hash") and "not a PIN hash" in msg
    assert "482915" not in where + msg  # a PIN put there by mistake is not echoed to logs
    cfg.write_text("status:\n  metrics_allow: [10.1.0.0/33]\n")
    with pytest.raises(ConfigError, match="metrics_allow"):
        load(cfg)


# -- the page over HTTP: methods, cookies, caps, addresses ------------------------------------

def _attrs(set_cookie: str) -> set[str]:
    return {p.strip() for p in set_cookie.split(";")[1:]}


def test_page_http_methods_cookies_and_body_cap() -> None:
    doc = site_health("gw-a", time.time())
    page = StatusPage(lambda: doc, staff_pin_hash=PIN_HASH, staff_session_s=900)
    with ServedApp(page.app) as srv:
        client = WebClient(srv.url, follow=False)
        first = client.get("")
        (form_cookie,) = [c for c in first.set_cookies if c.startswith("bzgw_pin_form=")]
        assert _attrs(form_cookie) == {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"}
        assert first.headers["X-Content-Type-Options"] == "nosniff"
        assert first.headers["Referrer-Policy"] == "no-referrer"
        done = client.post("pin", {"csrf": first.field("csrf"), "pin": PIN})
        assert done.status == 303 and done.headers["Location"] == "./"
        staff, gone = sorted(done.set_cookies, key=lambda c: not c.startswith("bzgw_staff="))
        assert _attrs(staff) == {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=900"}
        assert gone.startswith("bzgw_pin_form=") and "Max-Age=0" in _attrs(gone)
        # a body past the page's 4 KiB is refused before any handler reads it
        assert client.post("pin", {"csrf": "x", "pin": "1" * 5000}).status == 413
        for method, path, allow in (("PUT", "", "GET, HEAD"), ("GET", "pin", "POST"),
                                    ("DELETE", "lock", "POST")):
            req = urllib.request.Request(srv.url + path, method=method)
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError(f"{method} /{path} was served")
            except urllib.error.HTTPError as err:
                assert err.code == 405 and err.headers["Allow"] == allow
        with urllib.request.urlopen(urllib.request.Request(srv.url, method="HEAD"),
                                    timeout=10) as r:
            assert r.status == 200 and r.read() == b""
            assert int(r.headers["Content-Length"]) > 1000
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_metrics_allowlist_over_ipv6() -> None:
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    doc = site_health("gw-a", time.time())
    thread = LoopThread()
    try:
        for allow, want in ((["127.0.0.1/32", "::1/128"], 200), (["127.0.0.1/32"], 403)):
            page = StatusPage(lambda: doc, metrics=GatewayMetrics(lambda: doc),
                              metrics_allow=allow)
            server = thread.run(start_status(page, host="::1", port=0))
            try:
                assert fetch(f"http://[::1]:{server.port}/metrics")[0] == want, allow
            finally:
                thread.run(asyncio.wait_for(server.close(), 5))
    finally:
        thread.close()
