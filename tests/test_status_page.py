"""The venue status page, /health, /checkins and /metrics, served from a real daemon."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import RunningGateway, ServedApp, free_port, gateway_config
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ble.simulator import Crowd
from bzgw.lab import Lab
from contract.health import CAMERA_STATES, RADIO_STATES, validate_health
from gateway.clock import TrackedClock
from gateway.daemon import DaemonState, Gateway
from gateway.feedback import Feedback
from gateway.metrics import GatewayMetrics
from gateway.status import StatusPage, checkin_rows
from qr.recognizers import Recognizer
from qr.records import FeedbackState, ScannedCheckIn

CCCD = "079190001234||Trần Thị Bình|02021990|Nữ|12 Lê Lợi, Quận 1, TP. Hồ Chí Minh|01012022"


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
    return StatusPage(gw.health, recent=gw.feedback_events.recent,
                      metrics=GatewayMetrics(gw.health), title="Chợ A", **kw)


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
        status, headers, body = fetch(srv.url)
    html = body.decode()
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert "Đang kết nối" in html and "Connecting" in html
    doc = gateway.health()
    assert f'<span id="phones" class="v">{doc["phones"]["phones"]}</span>' in html
    masked = next(e["masked"] for e in gateway.feedback_events.recent(10)
                  if e["state"] == "accepted")
    assert masked and html.count(masked) == 2  # accepted, then already checked in
    assert "Đã ghi nhận / Accepted" in html and "Không đọc được / Unreadable" in html
    # nothing readable about the person: not the number, not the name
    for secret in ("079190001234", "Trần Thị Bình", "BÌNH", "Lê Lợi"):
        assert secret not in html
    assert "no /dev/video0" not in html  # camera events are not check-ins


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
        _, _, checkins = fetch(srv.url + "checkins")
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
