"""Report files from a real match: JSON, CSV, bilingual HTML (escaped, standalone), public list."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from needs import missing

from bzgw.labrecords import LAB, Header, checkin, entry, sighting, temp_store
from contract.batch import Batch
from contract.records import Proximity
from core.clock import ClockEpoch, ClockSource
from matcher.f0 import F0, F0Case
from matcher.ids import bluezone_block
from matcher.match import MatchResult, match_f0
from matcher.report import public_venues, write_reports
from matcher.store import Store

T0 = 1_700_006_400
HOSTILE = "<script>alert('x')</script> & Chợ \"A\""
FREE = ClockEpoch("b", 0.0, False, ClockSource.NONE, float("inf"))


def _result(tmp_path: Path, *, opened: bool = True) -> MatchResult:
    dk = os.urandom(32)
    block = bluezone_block([(dk, T0, T0 + 86399, 96)])
    ids = block.idents()
    with temp_store("sqlite", tmp_path) as store:
        _fill(store, ids)
        f0 = F0(source="f0.json", format="bluezone-infof", signer="abcd",
                cases=[F0Case(label="HN-1", kind="bluezone", block=block, tolerance_s=900)])
        return match_f0(store, f0, opening=LAB.opening() if opened else None)


def _fill(store: Store, ids: list[bytes]) -> None:
    a = entry("gw-a", venue="cho-a", venue_name=HOSTILE, district="hoan-kiem")
    b = entry("gw-b", venue="ben-xe-b", venue_name="Bến xe B")
    store.add_batch(a, Header("gw-a", 1, T0), Batch(
        sightings=[sighting(ids[40], T0 + 36010, 600, proximity=Proximity.NEAR),
                   sighting(ids[44], T0 + 39610, 100)],
        checkins=[checkin("001099000222", T0 + 36100,
                          fields={"name": "<b>Trần</b> Thị B", "phone": "0912345678"}),
                  checkin("001099000333", T0 + 36200)]))
    store.add_batch(b, Header("gw-b", 1, T0), Batch(
        sightings=[sighting(ids[80], T0 + 72000, 60, clock=FREE)]))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_reports(_result(tmp_path), tmp_path / "out")


def test_a_report_without_approval_holds_no_identity(tmp_path: Path) -> None:
    files = write_reports(_result(tmp_path, opened=False), tmp_path / "sealed")
    for path in files.values():
        text = path.read_text(encoding="utf-8")
        assert "001099000222" not in text and "Trần" not in text and "0912345678" not in text
    doc = json.loads(files["json"].read_text(encoding="utf-8"))
    contacts = doc["cases"][0]["windows"][0]["co_present_checkins"]
    assert [(c["masked"], c["opened"], c["subject"]) for c in contacts] == [
        ("***222", False, None), ("***333", False, None)]
    assert doc["identities"]["sealed"] == 2
    assert "sealed: needs approval" in files["html"].read_text(encoding="utf-8")


def test_all_files_are_written(files: dict[str, Path]) -> None:
    assert sorted(files) == ["csv", "html", "json", "public_csv", "public_json"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.values())


def test_json_holds_windows_contacts_and_clock(files: dict[str, Path]) -> None:
    doc = json.loads(files["json"].read_text(encoding="utf-8"))
    [case] = doc["cases"]
    assert (case["label"], case["ids"], case["hits"]) == ("HN-1", 96, 3)
    venues = [(w["venue"]["code"], w["start_local"][:16]) for w in case["windows"]]
    # 10:00 UTC is 17:00 in Vietnam; the two cho-a sightings are an hour apart
    assert venues == [("cho-a", "2023-11-15T17:00"), ("cho-a", "2023-11-15T18:00"),
                      ("ben-xe-b", "2023-11-16T03:00")]
    first = case["windows"][0]
    assert [c["subject"] for c in first["co_present_checkins"]] == ["001099000222",
                                                                     "001099000333"]
    assert first["venue"]["name"] == HOSTILE
    unbounded = next(w for w in case["windows"] if w["venue"]["code"] == "ben-xe-b")
    assert {k: unbounded["clock"][k] for k in ("synced", "corrected", "uncertainty_s")} == {
        "synced": False, "corrected": False, "uncertainty_s": None}
    assert unbounded["clock"]["note"].startswith("time uncertain")


def test_csv_one_row_per_contact(files: dict[str, Path]) -> None:
    text = files["csv"].read_text(encoding="utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text[1:])))
    # 17:00 window: two contacts; 18:00 window (±30 min reaches back to 17:30): none
    assert [(r["venue"], r["contact_subject"]) for r in rows] == [
        ("cho-a", "001099000222"), ("cho-a", "001099000333"), ("cho-a", ""),
        ("ben-xe-b", "")]
    assert rows[0]["contact_phone"] == "0912345678"
    assert rows[0]["contact_name"] == "<b>Trần</b> Thị B"


def test_html_escapes_everything_and_loads_nothing(files: dict[str, Path]) -> None:
    html = files["html"].read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<b>Trần" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; Chợ &quot;A&quot;" in html
    assert "&lt;b&gt;Trần&lt;/b&gt; Thị B" in html
    assert not re.search(r"(src|href)\s*=", html) and "http" not in html.replace(
        "http-equiv", "")
    assert "Báo cáo phơi nhiễm F0" in html and "F0 exposure report" in html
    assert html.count("<script>") == 1  # the language switch only


def test_public_list_has_no_personal_data(files: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads(files["public_json"].read_text(encoding="utf-8"))
    text = files["public_json"].read_text(encoding="utf-8") + files["public_csv"].read_text(
        encoding="utf-8")
    for secret in ("001099000222", "Trần", "0912345678", "gw-a", "abcd"):
        assert secret not in text
    assert [(v["venue"], v["from"][11:16], v["to"][11:16]) for v in doc["venues"]] == [
        ("cho-a", "17:00", "17:15"), ("cho-a", "18:00", "18:15"),
        ("ben-xe-b", "03:00", "03:15")]
    assert set(doc["venues"][0]) == {"province", "district", "venue", "name", "from", "to"}


def test_public_list_merges_overlapping_windows(tmp_path: Path) -> None:
    r = _result(tmp_path)
    w = r.cases[0].windows
    w[1].start = w[0].end + 60  # within the same quarter hour as the first one ends
    w[1].venue = w[0].venue
    merged = [v for v in public_venues(r) if v["venue"] == "cho-a"]
    assert len(merged) == 1


def test_html_renders_in_chromium_and_switches_language(files: dict[str, Path],
                                                        artifacts: Path) -> None:
    try:
        import playwright.sync_api as sync_api
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing("no chromium on PATH")
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(files["html"].as_uri())
            assert page.locator("h1 .vi").is_visible()
            assert not page.locator("h1 .en").is_visible()
            page.get_by_role("button", name="English").click()
            assert page.locator("h1 .en").is_visible()
            assert page.locator("h1 .en").inner_text() == "F0 exposure report"
            assert page.get_by_text(HOSTILE).first.is_visible()
            page.screenshot(path=str(artifacts / "matcher_report.png"), full_page=True)
        finally:
            browser.close()
    assert requests == [files["html"].as_uri()]
