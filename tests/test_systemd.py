"""The shipped systemd units: `systemd-analyze verify` clean and `security` rated OK.

Both tools run offline (systemd is not PID 1 here). The shipped units point at the install
path ansible uses (/opt/bzgw/current/bin/bzgw); verify needs an executable, so each test
renders the unit with ExecStart pointing at this venv's real `bzgw`, as the role does.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bzgw.cli import EXIT_CONFIG, cli

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
INSTALL_BIN = "/opt/bzgw/current/bin/bzgw"
VENV_BIN = Path(sys.executable).parent / "bzgw"
MAX_EXPOSURE = 2.5
SHIPPED = ("bzgw-gateway.service", "bzgw-matcher.service", "bzgw-broker.service")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed")


def _keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def render(name: str, folder: Path) -> Path:
    """Copy a shipped unit into ``folder`` with ExecStart at this venv's bzgw."""
    text = (UNITS / name).read_text(encoding="utf-8")
    out = folder / name
    out.write_text(text.replace(INSTALL_BIN, str(VENV_BIN)), encoding="utf-8")
    return out


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)


def exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, f"no exposure line in: {proc.stdout[-500:]} {proc.stderr}"
    return float(m.group(1)), m.group(2)


@pytest.mark.parametrize("name", SHIPPED)
def test_unit_verifies_without_any_warning(name: str, tmp_path: Path) -> None:
    proc = verify(render(name, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == "", proc.stderr + proc.stdout


@pytest.mark.parametrize("name", SHIPPED)
def test_unit_security_exposure_is_ok(name: str, tmp_path: Path) -> None:
    score, label = exposure(render(name, tmp_path))
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} {label}"
    assert label == "OK"


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above is meaningful: an unknown key only warns (rc 0), and we see it."""
    unit = render("bzgw-gateway.service", tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomme=yes"))
    proc = verify(unit)
    assert "ProtectHomme" in proc.stderr


def test_security_rates_an_unhardened_unit_worse(tmp_path: Path) -> None:
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={VENV_BIN} run --config /etc/bzgw/gateway.yaml\n")
    score, _ = exposure(bare)
    assert score > MAX_EXPOSURE


def test_shipped_units_point_at_the_install_path() -> None:
    for name in ("bzgw-gateway.service", "bzgw-matcher.service"):
        execs = _keys((UNITS / name).read_text())["ExecStart"]
        assert len(execs) == 1 and execs[0].startswith(INSTALL_BIN + " "), execs


def test_gateway_unit_contract() -> None:
    k = _keys((UNITS / "bzgw-gateway.service").read_text())
    assert k["Type"] == ["notify"]
    assert k["NotifyAccess"] == ["main"]
    assert int(k["WatchdogSec"][0]) >= 30
    assert k["Restart"] == ["always"]
    assert k["StateDirectory"] == ["bzgw"]
    assert k["User"] == ["bzgw"] or k.get("DynamicUser") == ["yes"]
    assert k["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert "AmbientCapabilities" not in k  # nothing granted by default (bleak uses D-Bus)
    assert "AF_BLUETOOTH" in k["RestrictAddressFamilies"][0].split()
    assert k["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in k["DeviceAllow"]}
    assert {"char-video4linux", "/dev/vchiq"} <= allowed
    assert k["ProtectSystem"] == ["strict"]
    assert k["NoNewPrivileges"] == ["yes"]
    # Capture starts without network: the outbox buffers until the broker is reachable.
    assert "network-online.target" not in " ".join(k.get("After", []) + k.get("Wants", []))


def test_matcher_unit_contract() -> None:
    k = _keys((UNITS / "bzgw-matcher.service").read_text())
    assert k["Restart"] == ["always"]
    assert k["StateDirectory"] == ["bzgw-matcher"]
    assert k["CapabilityBoundingSet"] == [""]
    assert k["PrivateDevices"] == ["yes"]


@pytest.mark.parametrize("name", ("bzgw-gateway.service", "bzgw-matcher.service"))
def test_exec_start_arguments_are_accepted_by_the_cli(name: str) -> None:
    """The unit's command line must name a real subcommand and real options."""
    argv = shlex.split(_keys((UNITS / name).read_text())["ExecStart"][0])[1:]
    result = CliRunner().invoke(cli, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    for opt in (a for a in argv if a.startswith("--")):
        assert opt in result.output


@pytest.mark.parametrize("name", ("bzgw-gateway.service", "bzgw-matcher.service"))
def test_invalid_config_stops_the_restart_loop(name: str, tmp_path: Path) -> None:
    """A daemon started with a bad config exits once with the config error; its exit status
    is the one the unit lists in RestartPreventExitStatus=, so systemd leaves it failed."""
    k = _keys((UNITS / name).read_text())
    assert k["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mqtt:\n  host: b\n  ca_file: a\n  cert_file: c\n  key_file: k\n"
                   "  backoff_min_s: 60\n  backoff_max_s: 5\n")
    args = shlex.split(k["ExecStart"][0])[1:]
    args[args.index("--config") + 1] = str(cfg)
    proc = subprocess.run([sys.executable, "-m", "bzgw.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"{cfg}:6: mqtt -> backoff_min_s" in proc.stderr
