"""`bzgw demo` end to end, as a user runs it, and its clean-up on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DAY = 86400
BZGW = [sys.executable, "-m", "bzgw.cli"]


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
