"""Config validation: located errors, unknown keys refused, exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bzgw.cli import EXIT_CONFIG, cli
from bzgw.config import load
from core.errors import ConfigError

GOOD = """\
gateway:
  id: gw-hn-0001
  province: hn
  venue: cho-dong-xuan
sealing:
  matcher_public_key: keys/matcher.pub
  device_key: keys/device.key
outbox:
  path: outbox.db
  max_age_days: 14
"""
# A gateway that reads QR codes also names the custodians' keys.
WITH_KEYS = GOOD.replace("  device_key: keys/device.key\n", "  device_key: keys/device.key\n"
                         "  identity_keys: keys/identity-keys.json\n"
                         "  blind_key: keys/blind.key\n")


def test_good_config_resolves_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD)
    cfg = load(f)
    assert cfg.gateway is not None and cfg.gateway.id == "gw-hn-0001"
    assert cfg.outbox.path == tmp_path / "outbox.db"
    assert cfg.sealing is not None and cfg.sealing.device_key == tmp_path / "keys/device.key"


def test_error_names_line_key_and_expectation(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD.replace("max_age_days: 14", "max_age_days: many"))
    with pytest.raises(ConfigError) as ei:
        load(f)
    (loc, msg), = ei.value.problems
    assert loc == f"{f}:10: outbox -> max_age_days"
    assert msg == "Expected `float`, got 'many'"


def test_unknown_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD + "ble:\n  scaning_mode: passive\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.problems[0][0] == f"{f}:12: ble -> scaning_mode"
    assert ei.value.problems[0][1] == "unknown key (got 'passive')"


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD + "outbox:\n  path: x.db\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert "duplicate key 'outbox' (first at line 8)" in str(ei.value)
    assert ei.value.problems[0][0] == f"{f}:11"


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD)
    ok = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert ok.exit_code == 0 and "OK" in ok.output
    f.write_text(GOOD.replace("province: hn", "province: Hà Nội"))
    bad = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert bad.exit_code == EXIT_CONFIG
    assert f"{f}:3: gateway -> province" in bad.output


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("gateway:\n  id: [unclosed\n")
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == EXIT_CONFIG
    assert "YAML syntax error" in res.output and f"{f}:" in res.output


# ------------------------------------------------------------- cross-field mistakes

MQTT = """\
mqtt:
  host: broker.example
  ca_file: ca.crt
  cert_file: gw.crt
  key_file: gw.key
"""

CROSS_FIELD = [
    # (extra YAML, line of the key, key path, words of the message)
    ("ble:\n  source: replay\n  watchdog_s: 60\n", 12, "ble -> source",
     "needs replay_file"),
    ("qr:\n  enabled: true\n  source: folder\n", 13, "qr -> source", "needs folder"),
    ("qr:\n  source: video\n", 12, "qr -> source", "needs video"),
    ("ble:\n  proximity:\n    medium_dbm: -60\n    near_dbm: -70\n", 14,
     "ble -> proximity -> near_dbm", "must be above medium_dbm (-60)"),
    ("ble:\n  proximity:\n    near_dbm: -80\n", 13, "ble -> proximity -> near_dbm",
     "must be above medium_dbm (-80)"),  # equal to the default medium: no medium band
    (MQTT + "  backoff_min_s: 600\n  backoff_max_s: 60\n", 16, "mqtt -> backoff_min_s",
     "is above backoff_max_s (60)"),
    (MQTT + "  backoff_min_s: 600\n", 16, "mqtt -> backoff_min_s",
     "is above backoff_max_s (300)"),  # against the default maximum
]


@pytest.mark.parametrize(("extra", "line", "key", "words"), CROSS_FIELD)
def test_config_check_names_line_and_key_of_cross_field_mistakes(
        tmp_path: Path, extra: str, line: int, key: str, words: str) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD + extra)
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == EXIT_CONFIG, res.output
    (err,) = res.stderr.strip().splitlines()
    assert err.startswith(f"error: {f}:{line}: {key}: ") and words in err


@pytest.mark.parametrize("extra", [
    "ble:\n  source: replay\n  replay_file: market.btsnoop\n",
    "ble:\n  enabled: false\n  source: replay\n",  # off: nothing to replay is fine
    "qr:\n  source: folder\n  folder: incoming\n",
    "qr:\n  enabled: false\n  source: video\n",
    "ble:\n  proximity:\n    near_dbm: -60\n    medium_dbm: -75\n",
    MQTT + "  backoff_min_s: 5\n  backoff_max_s: 5\n",
])
def test_consistent_settings_pass(tmp_path: Path, extra: str) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(WITH_KEYS + extra)
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("text", "line", "words"), [
    (b"gateway:\n  id: gw-\x88\n", 2, "not UTF-8"),
    (b"ble:\n  replay_file: !weird a.btsnoop\n", 2, "could not determine a constructor"),
    (b"ble:\n  ? [a, b]\n  : x\n", 2, "a key must be a plain name"),
])
def test_odd_yaml_is_a_located_error(tmp_path: Path, text: bytes, line: int,
                                     words: str) -> None:
    f = tmp_path / "gw.yaml"
    f.write_bytes(text)
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.problems[0][0] == f"{f}:{line}" and words in ei.value.problems[0][1]


def test_empty_value_at_the_end_of_the_file_is_null(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_bytes(b"ble:\n  source: simulator\n  adapter:")  # no newline at the end
    assert load(f).ble.adapter is None


def test_checkins_without_identity_keys_are_a_located_error(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD + "qr:\n  source: v4l2\n")
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == EXIT_CONFIG
    assert f"{f}:5: sealing" in res.output and "never stored unsealed" in res.output
    f.write_text(WITH_KEYS.replace("  blind_key: keys/blind.key\n", ""))
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == EXIT_CONFIG and "go together" in res.output


def test_reading_config_leaves_pydantic_out(tmp_path: Path) -> None:
    # the config layer is msgspec (~2 MB) for the Pi's footprint; pydantic would add ~9 MB
    import subprocess
    import sys

    f = tmp_path / "gw.yaml"
    f.write_text(WITH_KEYS)
    code = ("import sys, bzgw.cli, bzgw.config, gateway.daemon, contract.health, "
            "contract.registry\n"
            f"bzgw.config.load({str(f)!r})\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'pydantic_core', 'annotated_types')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_config_check_lists_a_problem_per_section(tmp_path: Path) -> None:
    # msgspec stops at the first error, so each top-level section is validated on its own
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD.replace("max_age_days: 14", "max_age_days: -1")
                 + "ble:\n  simulator:\n    iphones: -5\n"
                 + "status:\n  staff_pin_hash: '1234'\n  metrics_allow: [10.0.0.0/8, lan]\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.problems == [
        (f"{f}:10: outbox -> max_age_days", "Expected `float` > 0.0 (got -1)"),
        (f"{f}:13: ble -> simulator -> iphones", "Expected `int` >= 0 (got -5)"),
        (f"{f}:15: status -> staff_pin_hash",  # a secret: its value is never echoed
         "not a PIN hash: put the line `bzgw config staff-pin` prints (never the PIN itself)"),
    ]
    f.write_text(GOOD + "status:\n  metrics_allow:\n    - 10.0.0.0/8\n    - lan\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    (loc, msg), = ei.value.problems
    assert loc == f"{f}:14: status -> metrics_allow -> 1" and "'lan'" in msg
