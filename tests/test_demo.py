"""`bzgw demo` end to end, as a user runs it, and its clean-up on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ble.replay import build_legacy_event, write_btsnoop
from ble.simulator import Crowd, Visit

DAY = 86400
BZGW = [sys.executable, "-m", "gateway.cli"]


def _mosquittos(under: Path) -> list[str]:
    """Command lines of live mosquitto processes whose config lies under ``under``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended while we looked
            continue
        line = " ".join(args)
        if "mosquitto" in args[0] and str(under) in line:
            found.append(line)
    return found


def test_demo_reports_the_f0_phones_venues_and_windows(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    t0 = time.time()
    res = subprocess.run([*BZGW, "demo", "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{out / 'report.html'}" in res.stdout
    report = json.loads((out / "report.json").read_text())
    (case,) = report["cases"]
    windows = case["windows"]
    # The simulated F0 phone: market 08:30-09:10 UTC, bus station 10:00-10:40 UTC, yesterday.
    day0 = int(t0) // DAY * DAY - DAY
    assert [w["venue"]["code"] for w in windows] == ["cho-dong-xuan", "ben-xe-giap-bat"]
    market, station = windows
    assert day0 + 8.5 * 3600 <= market["start"] < day0 + 8.5 * 3600 + 120
    assert day0 + 9 * 3600 < market["end"] <= day0 + 9 * 3600 + 600
    assert day0 + 10 * 3600 <= station["start"] < day0 + 10 * 3600 + 120
    assert day0 + 10.5 * 3600 < station["end"] <= day0 + 10 * 3600 + 2400
    # Check-ins at the market during the visit are close-contact candidates; the one at
    # 10:30 (after the visit and its margin) is not; the bus station had none.
    assert len(market["co_present_checkins"]) == 3
    assert station["co_present_checkins"] == []
    assert market["other_ids"]["bluezone"] > 0
    html = (out / "report.html").read_text()
    assert "Chợ Đồng Xuân" in html and "Bến xe Giáp Bát" in html
    public = json.loads((out / "exposure_venues.json").read_text())
    assert "001085012345" not in json.dumps(public)  # no personal data in the public list
    assert _mosquittos(out) == []


def test_demo_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen([*BZGW, "demo", "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "[2/5]" not in seen and time.monotonic() < deadline:  # the broker is running
        seen += proc.stderr.readline()
    assert _mosquittos(out), "the demo's broker should be running"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert _mosquittos(out) == []


def _capture_and_f0(tmp_path: Path, start: float) -> tuple[Path, Path, int]:
    """A btsnoop capture of a simulated venue (one Bluezone phone visits 30 min) and the
    phone's InfoF F0 file; returns them and the visit's start."""
    crowd = Crowd(seed=5, start=start, duration_s=3600)
    visit = int(start) + 600
    case = crowd.add_bluezone_phone([Visit("v", visit, visit + 1800, distance_m=1.0)])
    crowd.add_bluezone_phones(6, venues=["v"])
    crowd.add_en_phones(3, venues=["v"])
    crowd.add_background(4, venues=["v"])
    capture = tmp_path / "venue.btsnoop"
    write_btsnoop(capture, ((r.ts, build_legacy_event(0, r.address, r.address_type, r.data,
                                                      r.rssi))
                            for r in crowd.reports("v", start, start + 3600, rate_hz=0.5)))
    day0 = int(start) // DAY * DAY
    f0 = tmp_path / "f0.json"
    f0.write_text(json.dumps({"data": [{"daily_key": case.daily_key(day0).hex(),
                                        "time_start": day0, "time_end": day0 + DAY - 1,
                                        "max": 96}]}))
    return capture, f0, visit


def _demo_capture(tmp_path: Path, start: float) -> tuple[list[dict[str, Any]], int]:
    capture, f0, visit = _capture_and_f0(tmp_path, start)
    out = tmp_path / "demo"
    res = subprocess.run([*BZGW, "demo", "--capture", str(capture), "--f0", str(f0),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "adverts decoded and aggregated" in res.stderr  # progress goes to stderr
    report = json.loads((out / "report.json").read_text())
    assert _mosquittos(out) == []
    (case,) = report["cases"]
    return case["windows"], visit


def test_demo_with_a_capture_and_f0_finds_the_visit(tmp_path: Path) -> None:
    # A capture from yesterday morning (UTC): the date the demo's own timeline uses.
    start = int(time.time()) // DAY * DAY - DAY + 8 * 3600
    windows, visit = _demo_capture(tmp_path, start)
    (w,) = windows  # the one venue of the capture, during the phone's visit
    assert visit <= w["start"] < visit + 300
    assert visit + 1500 < w["end"] <= visit + 1800 + 600
    assert w["other_ids"]["bluezone"] > 0


def test_demo_with_an_old_capture_and_f0_finds_the_visit(tmp_path: Path) -> None:
    start = 1_627_790_400 + 8 * 3600  # 1 Aug 2021, 08:00 UTC: far outside retention today
    windows, visit = _demo_capture(tmp_path, start)
    (w,) = windows
    assert visit <= w["start"] < visit + 300
    assert visit + 1500 < w["end"] <= visit + 1800 + 600
