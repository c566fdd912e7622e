"""The ansible roles and playbooks: lint, syntax, and a real local apply into a scratch root.

The apply runs site.yml for real (``connection: local``) against five inventory hosts that
are all this machine, each with its own ``bzgw_root`` under a temporary folder: two
gateways, a broker and a matcher, with the provincial CA on the "control node" (also a temp
folder). Nothing touches the real /etc. Afterwards the rendered files are checked, the
rendered configs pass ``bzgw config check``, the rendered units pass ``systemd-analyze
verify``, and a real Mosquitto started from the rendered config accepts the enrolled gateway
certificates and enforces the generated ACL. A second apply must change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from needs import missing

from bzgw.config import load
from contract.registry import load_registry
from mqtt import topics
from mqtt.broker import MosquittoProcess, free_port
from mqtt.client import MqttClient, MqttConnectError, MqttPublishError
from mqtt.config import MqttConfig

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent
BZGW = VENV_BIN / "bzgw"
PLAYBOOKS = ("site.yml", "enroll.yml", "upgrade.yml", "rollback.yml", "ca.yml")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a real apply of four roles takes a minute or two
    pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(),
                       reason="ansible-core is not installed in this venv"),
]

RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
    })
    return env


def recap(output: str) -> dict[str, dict[str, int]]:
    """Per host: ok, changed, unreachable, failed (from PLAY RECAP)."""
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                         "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in RECAP.finditer(output)}


@dataclass
class Fleet:
    """A provisioned scratch fleet."""

    tmp: Path
    inventory: Path
    extra: Path
    first: str
    second: str
    broker_port: int

    def root(self, host: str) -> Path:
        return self.tmp / "root" / host

    @property
    def pki(self) -> Path:
        return self.tmp / "pki" / "hn"

    def run(self, playbook: str, *args: str, inventory: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory or self.inventory),
             "-e", f"@{self.extra}", playbook, *args],
            cwd=ANSIBLE, env=ansible_env(self.tmp), capture_output=True, text=True,
            timeout=600, check=False)
        if check:
            assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        return proc


def _host(name: str, tmp: Path, **hv: object) -> dict[str, object]:
    return {"bzgw_root": str(tmp / "root" / name), **hv}


def write_inventory(path: Path, tmp: Path, *, extra_gateways: int = 0) -> None:
    gateways = {
        "gw-t-1": _host("gw-t-1", tmp, bzgw_gateway_id="gw-t-1", bzgw_district="hoan-kiem",
                        bzgw_venue="cho-a", bzgw_venue_name="Chợ A"),
        "gw-t-2": _host("gw-t-2", tmp, bzgw_gateway_id="gw-t-2", bzgw_district="dong-da",
                        bzgw_venue="ben-xe-b", bzgw_venue_name="Bến xe B",
                        bzgw_gateway_qr={"source": "none"}),
    }
    for i in range(3, 3 + extra_gateways):
        gateways[f"gw-t-{i}"] = _host(f"gw-t-{i}", tmp, bzgw_gateway_id=f"gw-t-{i}",
                                      bzgw_venue="benh-vien-c", bzgw_venue_name="Bệnh viện C")
    inv = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "bzgw_province": "hn", "bzgw_broker_host": "localhost",
                 "bzgw_broker_extra_hosts": ["127.0.0.1"]},
        "children": {
            "gateways": {"hosts": gateways},
            "brokers": {"hosts": {"broker-t": _host("broker-t", tmp)}},
            "matchers": {"hosts": {"matcher-t": _host("matcher-t", tmp,
                                                      bzgw_matcher_id="matcher-t")}},
        }}}
    path.write_text(yaml.safe_dump(inv, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """site.yml applied twice to a scratch fleet (the second run must change nothing)."""
    tmp = tmp_path_factory.mktemp("fleet")
    inventory = tmp / "inventory.yml"
    write_inventory(inventory, tmp)
    port = free_port()
    extra = tmp / "test-vars.yml"
    extra.write_text(yaml.safe_dump({
        "bzgw_install": False,           # use this venv's bzgw, install nothing
        "bzgw_manage_users": False,      # no real users created on this machine
        "bzgw_bin": str(BZGW),
        "bzgw_control_bin": str(BZGW),
        "bzgw_pki_dir": str(tmp / "pki"),
        "bzgw_broker_port": port,
        "bzgw_broker_bind": "127.0.0.1",
        "bzgw_broker_run_as_root": os.geteuid() == 0,
        "bzgw_matcher_db": "sqlite",
        "gateway_user": "root", "matcher_user": "root", "broker_user": "root",
    }), encoding="utf-8")
    f = Fleet(tmp=tmp, inventory=inventory, extra=extra, first="", second="",
              broker_port=port)
    # the custodians' keys, made offline and placed on the control node for the province
    subprocess.run([str(BZGW), "custodian", "init", "--name", "health-office", "--name",
                    "police", "--name", "peoples-committee", "-k", "2", "--days", "30",
                    "--out", str(tmp / "custodians")], check=True, capture_output=True)
    (tmp / "pki" / "hn" / "custody").mkdir(parents=True)
    for name in ("identity-keys.json", "blind.key"):
        shutil.copy2(tmp / "custodians" / name, tmp / "pki" / "hn" / "custody" / name)
    f.first = f.run("site.yml").stdout
    f.second = f.run("site.yml").stdout
    return f


# --- static checks ---------------------------------------------------------------------------

def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    lint = VENV_BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed in this venv")
    proc = subprocess.run([str(lint), "--profile", "production", "--offline", "--nocolor"],
                          cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook: str, tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "--syntax-check", playbook],
                          cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_groups_and_host_vars(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-inventory"), "--list"], cwd=ANSIBLE,
                          env=ansible_env(tmp_path), capture_output=True, text=True,
                          timeout=120, check=True)
    data = yaml.safe_load(proc.stdout)
    hostvars = data["_meta"]["hostvars"]
    gateways = set(data["gateways"].get("hosts", [])) | {
        h for g in _descendants(data, "gateways") for h in data[g].get("hosts", [])}
    assert len(gateways) >= 3
    for h in gateways:
        hv = hostvars[h]
        for key in ("bzgw_gateway_id", "bzgw_venue", "bzgw_venue_name", "bzgw_province",
                    "bzgw_district", "bzgw_broker_host"):
            assert hv.get(key), f"{h} lacks {key}"
    groups = set(data)
    assert any(g.startswith("province_") for g in groups)
    assert any(g.startswith("district_") for g in groups)
    assert any(g.startswith("venue_") for g in groups)
    ids = [hostvars[h]["bzgw_gateway_id"] for h in gateways]
    assert len(ids) == len(set(ids))


def _descendants(data: dict[str, dict[str, list[str]]], group: str) -> list[str]:
    out = []
    for child in data.get(group, {}).get("children", []):
        out += [child, *_descendants(data, child)]
    return out


# --- the applied fleet -----------------------------------------------------------------------

def test_apply_succeeds_and_second_run_changes_nothing(fleet: Fleet) -> None:
    first, second = recap(fleet.first), recap(fleet.second)
    hosts = {"gw-t-1", "gw-t-2", "broker-t", "matcher-t"}
    assert hosts <= set(first)
    assert all(first[h]["changed"] > 0 for h in hosts)  # the first run did real work
    for h, r in second.items():
        assert r["failed"] == 0 and r["unreachable"] == 0, (h, r)
        assert r["changed"] == 0, f"{h} changed on the second run:\n{fleet.second[-4000:]}"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_rendered_files_and_permissions(fleet: Fleet) -> None:
    for gw in ("gw-t-1", "gw-t-2"):
        r = fleet.root(gw)
        keys = r / "var/lib/bzgw/keys"
        assert mode(r / "var/lib/bzgw") == 0o700
        assert mode(keys) == 0o700
        for private in ("device.key", "tls.key"):
            assert mode(keys / private) == 0o600
        assert mode(r / "etc/bzgw/gateway.yaml") == 0o640
        assert mode(r / "etc/systemd/system/bzgw-gateway.service") == 0o644
        assert (r / "etc/bzgw/matcher.pub").read_text() == (
            fleet.root("matcher-t") / "var/lib/bzgw-matcher/keys/hpke.pub").read_text()
    m = fleet.root("matcher-t")
    assert mode(m / "var/lib/bzgw-matcher/keys/hpke.key") == 0o600
    assert mode(m / "var/lib/bzgw-matcher/keys/tls.key") == 0o600
    b = fleet.root("broker-t")
    assert mode(b / "etc/bzgw/broker/tls/tls.key") == 0o600
    assert mode(b / "etc/bzgw/broker/tls") == 0o700
    # The control node holds public material only, plus its own CA key.
    private = [p for p in (fleet.tmp / "pki").rglob("*")
               if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert private == [fleet.pki / "ca" / "ca.key"]
    assert mode(fleet.pki / "ca" / "ca.key") == 0o600


def test_rendered_configs_pass_config_check(fleet: Fleet) -> None:
    for path in (fleet.root("gw-t-1") / "etc/bzgw/gateway.yaml",
                 fleet.root("gw-t-2") / "etc/bzgw/gateway.yaml",
                 fleet.root("matcher-t") / "etc/bzgw/matcher.yaml"):
        proc = subprocess.run([str(BZGW), "config", "check", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "OK" in proc.stdout
    cfg = load(fleet.root("gw-t-1") / "etc/bzgw/gateway.yaml")
    assert cfg.gateway is not None and cfg.mqtt is not None and cfg.sealing is not None
    assert (cfg.gateway.id, cfg.gateway.venue, cfg.gateway.venue_name) == (
        "gw-t-1", "cho-a", "Chợ A")
    assert cfg.mqtt.port == fleet.broker_port
    assert cfg.sealing.device_key == fleet.root("gw-t-1") / "var/lib/bzgw/keys/device.key"
    assert load(fleet.root("gw-t-2") / "etc/bzgw/gateway.yaml").qr.source == "none"
    # check-in identities are sealed for the custodians; the unit's blind key is its own
    assert cfg.sealing.identity_keys == fleet.root("gw-t-1") / "etc/bzgw/identity-keys.json"
    assert cfg.sealing.blind_key is not None and mode(cfg.sealing.blind_key) == 0o600
    mcfg = load(fleet.root("matcher-t") / "etc/bzgw/matcher.yaml")
    assert mcfg.matcher is not None and mcfg.matcher.identity_keys is not None
    assert mcfg.matcher.audit_log.parent == fleet.root("matcher-t") / "var/lib/bzgw-matcher"
    assert mcfg.matcher is not None
    assert mcfg.matcher.db.startswith("sqlite:///") and "var/lib/bzgw-matcher" in mcfg.matcher.db


def test_calibration_survives_provisioning(fleet: Fleet, tmp_path: Path) -> None:
    """gw-t-1 is calibrated with `bzgw ble calibrate`; gw-t-2 still has a calibration an older
    release wrote into gateway.yaml. Re-provisioning keeps both, and then changes nothing."""
    from test_ble_calibrate import _capture, _crowd

    crowd, _at1, _at2 = _crowd()
    for phase in ("1m", "2m"):
        _capture(tmp_path / f"{phase}.log", crowd, phase)
    cfg1 = fleet.root("gw-t-1") / "etc/bzgw/gateway.yaml"
    calib1 = fleet.root("gw-t-1") / "etc/bzgw/calibration.yaml"
    assert load(cfg1).ble.calibration_file == calib1 and not calib1.exists()
    rendered = cfg1.read_bytes()
    proc = subprocess.run([str(BZGW), "ble", "calibrate", "--config", str(cfg1), "--seconds",
                           "60", "--at-1m", str(tmp_path / "1m.log"), "--at-2m",
                           str(tmp_path / "2m.log"), "--yes"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert cfg1.read_bytes() == rendered  # the measurement went to its own file
    measured = load(cfg1).ble.proximity
    assert measured.calibrated and measured.near_dbm > measured.medium_dbm
    kept = calib1.read_bytes()
    # gw-t-2 as an older release left it: the thresholds inside the rendered config
    cfg2 = fleet.root("gw-t-2") / "etc/bzgw/gateway.yaml"
    old = yaml.safe_load(cfg2.read_text(encoding="utf-8"))
    old["ble"]["proximity"] = {"near_dbm": -61, "medium_dbm": -77, "calibrated": True}
    cfg2.write_text(yaml.safe_dump(old, allow_unicode=True), encoding="utf-8")

    first = recap(fleet.run("site.yml", "--limit", "gw-t-1,gw-t-2").stdout)
    assert first["gw-t-1"]["changed"] == 0  # the calibration file is none of the role's business
    assert calib1.read_bytes() == kept
    assert load(cfg1).ble.proximity == measured
    moved = load(cfg2).ble.proximity
    assert (moved.near_dbm, moved.medium_dbm, moved.calibrated) == (-61, -77, True)
    assert "proximity" not in yaml.safe_load(cfg2.read_text(encoding="utf-8"))["ble"]
    again = recap(fleet.run("site.yml", "--limit", "gw-t-1,gw-t-2").stdout)
    assert all(v["changed"] == 0 for v in again.values()), again


def test_registry_holds_the_enrolled_signing_keys(fleet: Fleet) -> None:
    for reg_path in (fleet.root("broker-t") / "etc/bzgw/broker/registry.yaml",
                     fleet.root("matcher-t") / "etc/bzgw/registry.yaml"):
        reg = load_registry(reg_path)
        assert set(reg.gateways) == {"gw-t-1", "gw-t-2"}
        assert reg.matchers == ["matcher-t"]
        for gid, entry in reg.gateways.items():
            key = serialization.load_pem_private_key(
                (fleet.root(gid) / "var/lib/bzgw/keys/device.key").read_bytes(), None)
            assert isinstance(key, Ed25519PrivateKey)
            assert entry.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
        assert reg.gateways["gw-t-2"].venue_name == "Bến xe B"


def test_certificates_name_each_host_and_chain_to_the_ca(fleet: Fleet) -> None:
    ca = x509.load_pem_x509_certificate((fleet.pki / "ca/ca.crt").read_bytes())
    for host, path in (("gw-t-1", "var/lib/bzgw/keys/tls.crt"),
                       ("matcher-t", "var/lib/bzgw-matcher/keys/tls.crt"),
                       ("broker-t", "etc/bzgw/broker/tls/tls.crt")):
        cert = x509.load_pem_x509_certificate((fleet.root(host) / path).read_bytes())
        cert.verify_directly_issued_by(ca)
    broker = x509.load_pem_x509_certificate(
        (fleet.root("broker-t") / "etc/bzgw/broker/tls/tls.crt").read_bytes())
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v.value) for v in san} == {"localhost", "127.0.0.1"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_rendered_units_verify(fleet: Fleet) -> None:
    units = [fleet.root("gw-t-1") / "etc/systemd/system/bzgw-gateway.service",
             fleet.root("matcher-t") / "etc/systemd/system/bzgw-matcher.service",
             fleet.root("broker-t") / "etc/systemd/system/bzgw-broker.service"]
    for unit in units:
        text = unit.read_text()
        assert "/opt/bzgw/current" not in text  # ExecStart points at the bzgw in use
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stderr == "", (unit, proc.stderr)


@contextlib.contextmanager
def running_broker(fleet: Fleet) -> Iterator[MosquittoProcess]:
    conf = fleet.root("broker-t") / "etc/bzgw/broker/mosquitto.conf"
    broker = MosquittoProcess(conf=conf, port=fleet.broker_port)
    with broker:
        yield broker


async def _exchange(fleet: Fleet, gateway: str, topic: str) -> tuple[str, bytes]:
    """Publish from ``gateway`` on ``topic``; return what the matcher receives first."""
    gcfg = load(fleet.root(gateway) / "etc/bzgw/gateway.yaml")
    mcfg = load(fleet.root("matcher-t") / "etc/bzgw/matcher.yaml")
    assert gcfg.mqtt is not None and mcfg.matcher is not None and mcfg.matcher.mqtt is not None
    async with MqttClient(mcfg.matcher.mqtt, "matcher-t") as m, \
            MqttClient(gcfg.mqtt, gateway) as g:
        await m.subscribe(topics.SHARED_BATCHES)
        await g.publish(topic, b"sealed")

        async def first() -> tuple[str, bytes]:
            async for msg in m.messages():
                return msg.topic, msg.payload
            raise AssertionError("no message")

        return await asyncio.wait_for(first(), 10)


def test_mosquitto_runs_the_rendered_config_with_enrolled_identities(fleet: Fleet) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        missing("mosquitto is not installed")
    own = topics.batch("hn", "cho-a", "gw-t-1")
    with running_broker(fleet):
        assert asyncio.run(_exchange(fleet, "gw-t-1", own)) == (own, b"sealed")
        # The ACL generated from the registry keeps gw-t-2 out of gw-t-1's topics.
        with pytest.raises((MqttPublishError, TimeoutError)):
            asyncio.run(_exchange(fleet, "gw-t-2", own))


def test_enroll_playbook_adds_a_gateway_and_replaces_another(fleet: Fleet) -> None:
    """enroll.yml: gw-t-3 is new; gw-t-2 is a replaced Pi (new keys, same id).

    The broker's ACL gains gw-t-3 (a reload suffices), the registry carries gw-t-2's new
    signing key, and the CA revokes gw-t-2's old certificate: once the broker restarts
    with the new CRL, the old Pi can no longer connect while the new one can.
    """
    inv = fleet.tmp / "inventory-3.yml"
    write_inventory(inv, fleet.tmp, extra_gateways=1)
    keys2 = fleet.root("gw-t-2") / "var/lib/bzgw/keys"
    old_pi = fleet.tmp / "old-gw-t-2"
    old_pi.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt", "device.pub"):
        shutil.copy2(keys2 / name, old_pi / name)
    old_serial = x509.load_pem_x509_certificate((old_pi / "tls.crt").read_bytes()).serial_number
    topic3 = topics.batch("hn", "benh-vien-c", "gw-t-3")
    topic2 = topics.batch("hn", "ben-xe-b", "gw-t-2")
    limit = "gw-t-2,gw-t-3,brokers,matchers"
    with running_broker(fleet) as broker:
        proc = fleet.run("enroll.yml", "--limit", limit, "-e", "bzgw_rotate_device_keys=true",
                         inventory=inv)
        r = recap(proc.stdout)
        assert all(r[h]["changed"] > 0 for h in ("gw-t-2", "gw-t-3", "broker-t", "matcher-t"))
        assert "user gw-t-3" in (fleet.root("broker-t") / "etc/bzgw/broker/acl").read_text()
        reg = load_registry(fleet.root("matcher-t") / "etc/bzgw/registry.yaml")
        assert "gw-t-3" in reg.gateways
        assert reg.gateways["gw-t-2"].signing_key == (keys2 / "device.pub").read_text().strip()
        assert reg.gateways["gw-t-2"].signing_key != (old_pi / "device.pub").read_text().strip()
        crl = x509.load_pem_x509_crl(
            (fleet.root("broker-t") / "etc/bzgw/broker/tls/crl.pem").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None
        # systemd would reload for the ACL; here the test sends the same SIGHUP.
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert asyncio.run(_exchange(fleet, "gw-t-3", topic3)) == (topic3, b"sealed")
    with running_broker(fleet):  # restarted: the new CRL is in force
        assert asyncio.run(_exchange(fleet, "gw-t-2", topic2)) == (topic2, b"sealed")
        old_cfg = MqttConfig(host="127.0.0.1", port=fleet.broker_port,
                             ca_file=old_pi / "ca.crt", cert_file=old_pi / "tls.crt",
                             key_file=old_pi / "tls.key")

        async def old_connects() -> None:
            async with MqttClient(old_cfg, "gw-t-2"):
                pass

        with pytest.raises(MqttConnectError):
            asyncio.run(old_connects())
    again = recap(fleet.run("enroll.yml", "--limit", limit, inventory=inv).stdout)
    assert all(v["changed"] == 0 for v in again.values()), again


def _fake_release(base: Path, ver: str, *, reported: str | None = None,
                  config_ok: bool = True) -> None:
    """A release folder whose bzgw is this venv's, optionally lying or broken."""
    bindir = base / "releases" / ver / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh"]
    if reported is not None:
        lines.append(f'[ "$1" = --version ] && {{ echo "bzgw, version {reported}"; exit 0; }}')
    if not config_ok:
        lines.append('[ "$1" = config ] && { echo "error: unknown key" >&2; exit 1; }')
    lines.append(f'exec {BZGW} "$@"')
    script = bindir / "bzgw"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)


def test_upgrade_switches_only_when_healthy_and_rollback_returns(fleet: Fleet) -> None:
    base = fleet.root("gw-t-1") / "opt/bzgw"
    current, previous = base / "current", base / "previous"
    real = version("bzgw")
    _fake_release(base, "0.0.1", reported="0.0.1")      # what the Pi runs now
    _fake_release(base, real)                           # the new release: this venv's bzgw
    _fake_release(base, "9.9.9", reported="9.9.9", config_ok=False)  # refuses the config
    _fake_release(base, "9.9.8", reported="1.0.0")      # reports the wrong version
    base.mkdir(parents=True, exist_ok=True)
    current.symlink_to("releases/0.0.1")

    def up(ver: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return fleet.run("upgrade.yml", "--limit", "gw-t-1", "-e", f"bzgw_version={ver}",
                         check=check)

    r = recap(up(real).stdout)["gw-t-1"]
    assert r["changed"] > 0
    assert os.readlink(current) == f"releases/{real}"
    assert os.readlink(previous) == "releases/0.0.1"
    assert recap(up(real).stdout)["gw-t-1"]["changed"] == 0

    for bad in ("9.9.9", "9.9.8"):
        proc = up(bad, check=False)
        assert proc.returncode != 0
        assert recap(proc.stdout)["gw-t-1"]["failed"] == 1
        assert os.readlink(current) == f"releases/{real}"  # still on the healthy release
    proc = up("7.7.7", check=False)  # not installed at all (bzgw_install is off here)
    assert proc.returncode != 0 and os.readlink(current) == f"releases/{real}"

    rollback = fleet.run("rollback.yml", "--limit", "gw-t-1")
    assert recap(rollback.stdout)["gw-t-1"]["changed"] == 1
    assert os.readlink(current) == "releases/0.0.1"
    again = fleet.run("rollback.yml", "--limit", "gw-t-1")
    assert recap(again.stdout)["gw-t-1"]["changed"] == 0
    fleet.run("rollback.yml", "--limit", "gw-t-1", "-e", f"bzgw_rollback_to={real}")
    assert os.readlink(current) == f"releases/{real}"


@pytest.mark.postgres
def test_matcher_role_sets_up_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The matcher role creates its PostgreSQL role and database (psql, no collection)."""
    u = urlsplit(pg_url)
    name = f"bzgw_ans_{os.getpid()}"
    psql = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", u.hostname or "127.0.0.1",
            "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    if shutil.which("psql") is None:
        missing("psql is not installed")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "bzgw_province": "hn", "bzgw_broker_host": "localhost"},
        "children": {"matchers": {"hosts": {"matcher-pg": {
            "bzgw_root": str(tmp_path / "root"), "bzgw_matcher_id": "matcher-pg"}}}}}}))
    extra = tmp_path / "vars.yml"
    extra.write_text(yaml.safe_dump({
        "bzgw_install": False, "bzgw_manage_users": False, "bzgw_bin": str(BZGW),
        "bzgw_control_bin": str(BZGW), "bzgw_pki_dir": str(tmp_path / "pki"),
        "bzgw_matcher_db": "postgresql",
        "bzgw_matcher_pg_url": f"postgresql://{name}@{u.hostname}:{u.port or 5432}/{name}",
        "matcher_pg_psql": psql, "matcher_pg_become": False,
        "matcher_pg_database": name, "matcher_pg_user": name, "matcher_user": "root"}))
    playbook = tmp_path / "matcher.yml"
    playbook.write_text(yaml.safe_dump([
        {"name": "CA", "ansible.builtin.import_playbook": str(ANSIBLE / "ca.yml")},
        {"name": "Matcher", "hosts": "matchers", "roles": ["matcher"]}]))
    env = ansible_env(tmp_path) | {"ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles")}

    def apply() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "-e",
                               f"@{extra}", str(playbook)], cwd=ANSIBLE, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
        return proc

    def query(sql: str) -> str:
        return subprocess.run([*psql, "-tA", "-d", "postgres", "-c", sql], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    try:
        assert recap(apply().stdout)["matcher-pg"]["changed"] > 0
        assert query(f"SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database "
                     f"WHERE datname = '{name}'") == name
        cfg = load(tmp_path / "root/etc/bzgw/matcher.yaml")
        assert cfg.matcher is not None and cfg.matcher.db.startswith("postgresql://")
        assert recap(apply().stdout)["matcher-pg"]["changed"] == 0
    finally:
        query(f'DROP DATABASE IF EXISTS "{name}"')
        query(f'DROP ROLE IF EXISTS "{name}"')
