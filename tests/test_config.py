"""Config validation: located errors, unknown keys refused, exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bzgw.cli import cli
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
    assert "number" in msg and "'many'" in msg


def test_unknown_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD + "ble:\n  scaning_mode: passive\n")
    with pytest.raises(ConfigError) as ei:
        load(f)
    assert ei.value.problems[0][0] == f"{f}:12: ble -> scaning_mode"
    assert "Extra inputs are not permitted" in ei.value.problems[0][1]


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
    assert bad.exit_code == 1
    assert f"{f}:3: gateway -> province" in bad.output


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("gateway:\n  id: [unclosed\n")
    res = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert res.exit_code == 1
    assert "YAML syntax error" in res.output and f"{f}:" in res.output
