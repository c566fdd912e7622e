"""``bzgw ble replay``: JSON lines of adverts or sightings from a capture."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ble.aggregator import WindowAggregator
from ble.replay import build_legacy_event, read_adverts, write_btsnoop
from ble.simulator import Crowd, Visit
from bzgw.cli import cli
from bzgw.commands.ble import sighting_json
from core.clock import ReplayClock

T0 = 1_627_790_400
CAPTURE = "scientistnobee__DSD6__btsnoop_hci.log.63758104325217312.btsnoop"


def _sim_capture(tmp_path: Path) -> Path:
    crowd = Crowd(seed=41, start=T0)
    crowd.add_bluezone_phone([Visit("v", T0 + 100, T0 + 1300, 1.0)])
    crowd.add_en_phones(3, venues=["v"])
    crowd.add_background(4, venues=["v"])
    path = tmp_path / "sim.btsnoop"
    write_btsnoop(path, ((r.ts, build_legacy_event(0, r.address, r.address_type, r.data,
                                                   r.rssi))
                         for r in crowd.reports("v", T0, T0 + 3600, rate_hz=1)))
    return path


def test_replay_adverts_of_a_real_capture(corpora: Path) -> None:
    path = corpora / "ble/captures" / CAPTURE
    res = CliRunner().invoke(cli, ["ble", "replay", str(path), "--adverts"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    want = list(read_adverts(path))
    assert len(lines) == len(want) > 0
    first = lines[0]
    assert set(first) == {"type", "ts", "address", "address_type", "rssi", "kind", "id", "aem",
                          "tx_power"}
    assert (first["address"], first["rssi"], first["kind"]) == \
        (want[0].address, want[0].rssi, want[0].kind.value)
    assert f"{len(want)} adverts" in res.stderr


def test_replay_sightings_equal_the_aggregator(tmp_path: Path) -> None:
    path = _sim_capture(tmp_path)
    res = CliRunner().invoke(cli, ["ble", "replay", str(path), "--counts"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    sightings = [x for x in lines if x["type"] == "sighting"]
    counts = [x for x in lines if x["type"] == "adoption"]
    agg = WindowAggregator(clock=ReplayClock().epoch())
    for adv in read_adverts(path):
        agg.add(adv)
    want_s, want_c = agg.flush(T0 + 3600, final=True)
    assert sorted(sightings, key=lambda s: (s["slot_start"], s["id"])) == \
        sorted((sighting_json(s) for s in want_s), key=lambda s: (s["slot_start"], s["id"]))
    assert [c["window_start"] for c in counts] == [c.window_start for c in want_c]
    assert [c["bluezone"] for c in counts] == [c.bluezone for c in want_c]
    assert any(s["kind"] == "bluezone" for s in sightings)
    assert all(s["proximity"] == "unknown" for s in sightings)  # not calibrated


def test_replay_uses_calibrated_thresholds_from_config(tmp_path: Path) -> None:
    path = _sim_capture(tmp_path)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("ble:\n  proximity:\n    near_dbm: -70\n    medium_dbm: -85\n"
                   "    calibrated: true\n")
    res = CliRunner().invoke(cli, ["ble", "replay", str(path), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    kinds = {json.loads(x)["proximity"] for x in res.stdout.splitlines()}
    assert "near" in kinds and "unknown" not in kinds


def test_replay_of_a_damaged_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"btsnoop\x00" + (7).to_bytes(4, "big") + (1002).to_bytes(4, "big"))
    res = CliRunner().invoke(cli, ["ble", "replay", str(bad)])
    assert res.exit_code == 1
    assert res.stderr.strip() == \
        "error: unsupported btsnoop version 7 (at byte offset 8)"


def test_help_has_examples() -> None:
    for cmd in ("replay", "calibrate"):
        res = CliRunner().invoke(cli, ["ble", cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output and "bzgw ble " + cmd in \
            res.output
