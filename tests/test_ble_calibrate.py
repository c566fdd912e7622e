"""Proximity calibration: thresholds from a phone at 1 m and 2 m, written into the config."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from ble.calibrate import calibrate, collect_rssi, write_thresholds
from ble.config import ProximityThresholds
from ble.proximity import CalibrationError, compute_thresholds, proximity_of
from ble.replay import build_legacy_event, write_btsnoop
from ble.simulator import Crowd, Visit
from ble.sources.base import AdvertSource
from ble.sources.simulator_source import SimulatorSource
from bzgw.cli import cli
from bzgw.config import load
from contract.records import Proximity
from core.clock import ReplayClock

T0 = 1_627_790_400
PHASE = {"1m": (T0, T0 + 60), "2m": (T0 + 120, T0 + 180)}


def _crowd(d1: float = 1.0, d2: float = 2.0) -> tuple[Crowd, float, float]:
    crowd = Crowd(seed=31, start=T0, duration_s=200)
    phone = crowd.add_en_phone([Visit("v", *PHASE["1m"], distance_m=d1),
                                Visit("v", *PHASE["2m"], distance_m=d2)])
    for _ in range(6):  # bystanders further away
        crowd.add_en_phone([Visit("v", T0, T0 + 200, distance_m=6.0)])
    p = phone.profile
    return crowd, p.rssi_1m - 10 * p.exponent * math.log10(d1), \
        p.rssi_1m - 10 * p.exponent * math.log10(d2)


async def _no_wait(text: str) -> None:
    assert "Hold the phone" in text


def _phases(crowd: Crowd):  # type: ignore[no-untyped-def]
    def open_phase(phase: str) -> AdvertSource:
        start, end = PHASE[phase]
        return SimulatorSource(crowd, "v", ReplayClock(), start=start, end=end, rate_hz=4)
    return open_phase


def test_calibration_from_the_simulator_recovers_the_path_loss() -> None:
    crowd, at1, at2 = _crowd()
    result = asyncio.run(calibrate(_phases(crowd), 60, _no_wait))
    assert abs(result.rssi_1m - at1) <= 1.5 and abs(result.rssi_2m - at2) <= 1.5
    assert result.samples_1m > 100 and result.samples_2m > 100
    th = result.thresholds
    assert th.calibrated and th.near_dbm == round(result.rssi_2m)
    assert th.medium_dbm < th.near_dbm
    assert 1.5 <= result.exponent <= 4.0
    # The phone itself, measured again at 1 m, classifies as near; at 6 m, not.
    assert proximity_of(round(at1), th) is Proximity.NEAR
    assert proximity_of(round(at1 - 10 * result.exponent * math.log10(6)), th) \
        is not Proximity.NEAR


def test_phone_not_weaker_at_2m_is_refused() -> None:
    crowd, _, _ = _crowd(d1=1.0, d2=0.8)
    with pytest.raises(CalibrationError, match="not weaker") as err:
        asyncio.run(calibrate(_phases(crowd), 60, _no_wait))
    assert "repeat" in err.value.fix


def test_no_adverts_is_refused() -> None:
    empty = Crowd(seed=1, start=T0)
    with pytest.raises(CalibrationError, match="only 0 adverts"):
        asyncio.run(calibrate(_phases(empty), 60, _no_wait))


def test_collect_groups_by_id_and_stops_after_the_seconds() -> None:
    crowd, _, _ = _crowd()
    src = SimulatorSource(crowd, "v", ReplayClock(), start=T0, end=T0 + 200, rate_hz=2)
    samples = asyncio.run(collect_rssi(src, 30))
    assert len(samples) == 7  # seven EN phones, one RPI each in the first 30 s
    assert all(len(xs) <= 2 * 30 + 5 for xs in samples.values())


def test_compute_thresholds_by_hand() -> None:
    cal = compute_thresholds([-60] * 9, [-66] * 9)
    assert (cal.rssi_1m, cal.rssi_2m) == (-60, -66)
    assert cal.exponent == pytest.approx(6 / (10 * math.log10(2)))
    assert cal.thresholds == ProximityThresholds(
        near_dbm=-66, medium_dbm=round(-60 - 10 * cal.exponent * math.log10(5)),
        calibrated=True)


CONFIG = """\
# gateway at the market entrance
ble:
  source: replay   # captures only on this test box
  replay_file: market.btsnoop
  watchdog_s: 60
  proximity:
    near_dbm: -50  # placeholder until calibrated
qr:
  enabled: false
"""


def test_write_keeps_comments_and_other_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    write_thresholds(cfg, ProximityThresholds(near_dbm=-67, medium_dbm=-81, calibrated=True))
    text = cfg.read_text()
    assert "# gateway at the market entrance" in text and "# captures only" in text
    c = load(cfg)
    assert (c.ble.proximity.near_dbm, c.ble.proximity.medium_dbm, c.ble.proximity.calibrated) \
        == (-67, -81, True)
    assert c.ble.watchdog_s == 60 and c.qr.enabled is False


def _capture(path: Path, crowd: Crowd, phase: str) -> None:
    start, end = PHASE[phase]
    write_btsnoop(path, ((r.ts, build_legacy_event(3, r.address, 1, r.data, r.rssi))
                         for r in crowd.reports("v", start, end, rate_hz=4)))


def test_cli_calibrates_from_two_captures(tmp_path: Path) -> None:
    crowd, _at1, at2 = _crowd()
    _capture(tmp_path / "1m.log", crowd, "1m")
    _capture(tmp_path / "2m.log", crowd, "2m")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    res = CliRunner().invoke(cli, ["ble", "calibrate", "--config", str(cfg), "--seconds", "60",
                                   "--at-1m", str(tmp_path / "1m.log"),
                                   "--at-2m", str(tmp_path / "2m.log"), "--yes"])
    assert res.exit_code == 0, res.output
    th = load(cfg).ble.proximity
    assert th.calibrated and abs(th.near_dbm - at2) <= 2
    assert "# placeholder until calibrated" in cfg.read_text()
    assert f'"near_dbm": {th.near_dbm}' in res.stdout


def test_cli_refuses_one_capture_only(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    cap = tmp_path / "1m.log"
    cap.write_bytes(b"btsnoop\x00\x00\x00\x00\x01\x00\x00\x03\xea")
    res = CliRunner().invoke(cli, ["ble", "calibrate", "--config", str(cfg), "--at-1m",
                                   str(cap), "--yes"])
    assert res.exit_code != 0 and "both --at-1m and --at-2m" in res.output


def test_cli_calibration_failure_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG)
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"btsnoop\x00\x00\x00\x00\x01\x00\x00\x03\xea")
    res = CliRunner().invoke(cli, ["ble", "calibrate", "--config", str(cfg), "--at-1m",
                                   str(empty), "--at-2m", str(empty), "--yes"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: only 0 adverts")
    assert load(cfg).ble.proximity.calibrated is False  # nothing written


def test_cli_writes_the_calibration_file_when_the_config_names_one(tmp_path: Path) -> None:
    crowd, _at1, at2 = _crowd()
    _capture(tmp_path / "1m.log", crowd, "1m")
    _capture(tmp_path / "2m.log", crowd, "2m")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG.replace("  watchdog_s: 60\n",
                                  "  watchdog_s: 60\n  calibration_file: calibration.yaml\n"))
    before = cfg.read_bytes()
    assert load(cfg).ble.proximity.near_dbm == -50  # no file yet: the config's value
    res = CliRunner().invoke(cli, ["ble", "calibrate", "--config", str(cfg), "--seconds", "60",
                                   "--at-1m", str(tmp_path / "1m.log"),
                                   "--at-2m", str(tmp_path / "2m.log"), "--yes"])
    assert res.exit_code == 0, res.output
    assert cfg.read_bytes() == before  # the provisioned config is left as it was
    assert "kept across provisioning" in res.stderr
    th = load(cfg).ble.proximity  # the measured file wins over ble.proximity
    assert th.calibrated and abs(th.near_dbm - at2) <= 2
    from gateway.config import load_calibration

    kept = load_calibration(tmp_path / "calibration.yaml")
    assert kept.proximity == th and kept.measured["samples_2m"] > 0


def test_a_broken_calibration_file_names_its_line_and_key(tmp_path: Path) -> None:
    from core.errors import ConfigError

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("ble:\n  calibration_file: calibration.yaml\n")
    (tmp_path / "calibration.yaml").write_text(
        "proximity:\n  near_dbm: -60\n  medium_dbm: loud\n")
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert "calibration.yaml:3: proximity -> medium_dbm" in str(err.value)
