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
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert res.returncode == 0, res.stderr
    # A clean run says only its steps: no logged warning, no Python warning, no traceback.
    for noise in ("WARNING", "Warning", "Traceback", "ERROR"):
        assert noise not in res.stderr + res.stdout, res.stderr
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


def test_custodian_demo_opening_and_no_identity_on_any_disk(tmp_path: Path) -> None:
    """After the demo, no byte the matcher or the gateways wrote (databases, WAL, outboxes,
    broker store, logs, audit log) holds a name, ID number, phone or birth date of the demo's
    people; only the approved report lists them."""
    from bzgw.demo import PEOPLE
    from matcher.audit import entries, load_audit_public, verify

    out = tmp_path / "demo"
    res = subprocess.run([*BZGW, "demo", "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Custodians approve the opening" in res.stderr and "2 of 3" in res.stderr
    needles: list[str] = []
    for person in PEOPLE:
        b = person["birth_date"]  # ddmmyyyy as on the card
        needles += [person["cccd"], person["name"], person["name"].upper(), b,
                    f"{b[4:]}-{b[2:4]}-{b[:2]}"]
        if person["old_id"]:
            needles.append(person["old_id"])
    needles += ["0901234567", "+84901234567"]  # the phone on the demo's personal QR
    state = out / "state"
    written = [p for d in (state / "matcher", state / "site", *state.glob("gw-*"))
               for p in d.rglob("*") if p.is_file()]
    assert any(p.name.startswith("matcher.db") for p in written)
    assert any(p.name == "outbox.db" for p in written)
    for path in written:
        data = path.read_bytes()
        for n in needles:
            assert n.encode() not in data, f"{n!r} in {path}"
    # the approved report is where they appear, the sealed one has masked forms only
    opened = (out / "report.json").read_text(encoding="utf-8")
    assert PEOPLE[0]["cccd"] in opened and PEOPLE[0]["name"] in opened
    sealed = (out / "sealed-report" / "report.json").read_text(encoding="utf-8")
    assert not any(n in sealed for n in needles[:4])
    assert (out / "sealed-report" / "opening-request.json").is_file()
    # the audit log: query, two approvals, the opening; it verifies
    log = state / "matcher" / "audit.log"
    assert log.name.startswith("audit")
    events = [e["event"] for e in entries(log)]
    assert events == ["f0_query", "f0_query", "approval", "approval", "open"]
    assert verify(log, load_audit_public(state / "matcher" / "audit.pub"))[1] == []


def test_demo_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen([*BZGW, "demo", "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "[2/6]" not in seen and time.monotonic() < deadline:  # the broker is running
        seen += proc.stderr.readline()
    assert _mosquittos(out), "the demo's broker should be running"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert _mosquittos(out) == []


def test_demo_replays_a_capture_of_another_year_on_its_own_timeline(tmp_path: Path) -> None:
    day0 = 1_620_086_400  # 4 May 2021, UTC: years before the test runs
    start = day0 + 8 * 3600
    crowd = Crowd(seed=3, start=start, duration_s=3 * 3600)
    case = crowd.add_bluezone_phone([Visit("v", start + 1800, start + 5400, distance_m=1.2)])
    crowd.add_bluezone_phones(10, ["v"])
    crowd.add_en_phones(5, ["v"])
    capture = tmp_path / "market.btsnoop"
    write_btsnoop(capture, ((r.ts, build_legacy_event(0, r.address, r.address_type, r.data,
                                                      r.rssi))
                            for r in crowd.reports("v", start, start + 3 * 3600, rate_hz=0.5)))
    f0 = tmp_path / "f0.json"
    f0.write_text(json.dumps({"data": [{"daily_key": case.daily_key(day0).hex(),
                                        "time_start": day0, "time_end": day0 + DAY - 1,
                                        "max": 96}]}))
    out = tmp_path / "demo"
    res = subprocess.run([*BZGW, "demo", "--capture", str(capture), "--f0", str(f0),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (window,) = json.loads((out / "report.json").read_text())["cases"][0]["windows"]
    assert start + 1800 <= window["start"] < start + 1800 + 120
    assert start + 5400 - 600 < window["end"] <= start + 5400 + 60
    # The check-ins happen during the capture (not on the day the demo runs): the ones
    # while the F0 phone was there are close-contact candidates.
    checkins = window["co_present_checkins"]
    assert checkins, res.stdout
    assert all(start < c["time"] < start + 3 * 3600 for c in checkins)
    assert all(c["time_local"].startswith("2021-05-04") for c in checkins)


def test_demo_out_folder_with_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "state").mkdir(parents=True)
    keep = [out / "notes.txt", out / "state" / "thesis.tex", out / "report.json"]
    for i, p in enumerate(keep):
        p.write_text(f"mine {i}")
    res = subprocess.run([*BZGW, "demo", "--out", str(out)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0
    assert "did not create" in res.stderr and "Traceback" not in res.stderr
    assert [p.read_text() for p in keep] == [f"mine {i}" for i in range(len(keep))]
    assert sorted(p.name for p in out.rglob("*")) == sorted(["notes.txt", "state", "thesis.tex",
                                                             "report.json"])


def test_demo_run_again_replaces_only_its_own_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    for _ in range(2):
        res = subprocess.run([*BZGW, "demo", "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        (out / "my-notes.txt").write_text("kept")  # added by the user between runs
    assert (out / "my-notes.txt").read_text() == "kept"
    assert json.loads((out / "report.json").read_text())["cases"]


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
