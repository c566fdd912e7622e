"""``bzgw matcher serve`` as a real process, then ``status``, ``sign-f0`` and ``bzgw match``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ble.ids import bluezone_day_ids
from bzgw.cli import EXIT_CONFIG, cli
from bzgw.lab import LAB_CUSTODIANS, Lab, custody_files, gateway_identity_files
from bzgw.labrecords import checkin, sighting
from contract.batch import Batch
from contract.custody import IdentitySealer
from contract.sealing import Sealer, generate_matcher_keypair, save_matcher_keypair
from core.clock import ClockEpoch, ClockSource
from matcher.audit import entries
from mqtt import topics
from mqtt.broker import free_port
from mqtt.client import MqttClient

T0 = int(time.time()) // 86400 * 86400 - 86400  # yesterday 00:00 UTC: inside retention
CLOCK = ClockEpoch("boot-1", 0.0, True, ClockSource.NTP, 0.0)


def _bzgw() -> list[str]:
    exe = Path(sys.executable).parent / "bzgw"
    return [str(exe)] if exe.exists() else [sys.executable, "-c",
                                            "from bzgw.cli import main; main()"]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode("utf-8")


def _dashboard_json(cfg: Path, port: int) -> tuple[int, str]:
    """Make a user with the command (while serve runs), log in, read the JSON API."""
    from webclient import WebClient

    client = WebClient(f"http://127.0.0.1:{port}/", follow=False)
    assert client.get("api/dashboard.json").status == 401
    res = CliRunner().invoke(cli, ["matcher", "user", "add", "viewer.1", "--role", "viewer",
                                   "--config", str(cfg), "--password-stdin"],
                             input="xem bang dieu khien\n")
    assert res.exit_code == 0, res.output
    form = client.get("login")
    pre = form.set_cookies[0].split(";")[0]  # Secure cookies: urllib keeps them for https
    got = client.post("login", {"csrf": form.field("csrf"), "user": "viewer.1",
                                "password": "xem bang dieu khien"}, headers={"Cookie": pre})
    assert got.status == 303, got.text
    session = next(c for c in got.set_cookies if "bzgw_session=" in c).split(";")[0]
    page = client.get("api/dashboard.json", headers={"Cookie": session})
    return page.status, page.text


def _config(lab: Lab, tmp_path: Path) -> tuple[Path, bytes, Ed25519PrivateKey]:
    private, public = generate_matcher_keypair()
    save_matcher_keypair(private, public, tmp_path / "matcher.key", tmp_path / "matcher.pub")
    authority = Ed25519PrivateKey.generate()
    (tmp_path / "moh.pem").write_bytes(authority.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "moh.key").write_bytes(authority.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    m = lab.matcher_mqtt["matcher"]
    custody = custody_files(lab.root)
    cfg = {"matcher": {
        "db": f"sqlite:///{tmp_path / 'matcher.db'}", "private_key": "matcher.key",
        "registry": str(lab.root / "registry.yaml"), "f0_signers": ["moh.pem"],
        "identity_keys": str(custody / "identity-keys.json"),
        "audit_log": str(tmp_path / "audit.log"), "audit_key": str(tmp_path / "audit.key"),
        "client_id": "matcher-cli-test", "purge_interval_s": 3600,
        "dashboard_port": free_port(), "reports_dir": "reports",
        "users_db": "users.db",
        "mqtt": {"host": m.host, "port": m.port, "ca_file": str(m.ca_file),
                 "cert_file": str(m.cert_file), "key_file": str(m.key_file),
                 "keepalive_s": 10, "backoff_min_s": 0.05, "backoff_max_s": 1}}}
    path = tmp_path / "matcher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, public, authority


async def _send(lab: Lab, public: bytes, batches: list[Batch]) -> list[dict[str, object]]:
    lg = lab.gateways["gw-a"]
    sealer = Sealer(gateway_id="gw-a", matcher_public_key=public, signing_key=lg.signing_key)
    p = (lg.entry.province, lg.entry.venue, "gw-a")
    acks: list[dict[str, object]] = []
    async with MqttClient(lg.mqtt, "gw-a-cli-test") as c:
        await c.subscribe(topics.ack(*p))
        for seq, b in enumerate(batches, 1):
            await c.publish(topics.batch(*p), sealer.seal(b, seq=seq, created_at=T0 + seq,
                                                           clock=CLOCK))
        async for m in c.messages():
            acks.append(json.loads(m.payload))
            if len(acks) == len(batches):
                break
    return acks


def test_serve_then_status_then_match(lab: Lab, tmp_path: Path) -> None:
    cfg, public, _authority = _config(lab, tmp_path)
    dk = os.urandom(32)
    ids = bluezone_day_ids(dk)
    gateway_keys = IdentitySealer.from_files(*gateway_identity_files(lab.root, tmp_path / "gw"))
    batches = [Batch(sightings=[sighting(ids[40], T0 + 36010, 600)],
                     checkins=[checkin("001099000222", T0 + 36100, fields={"name": "Phạm D"},
                                       custody=gateway_keys)]),
               Batch(sightings=[sighting(os.urandom(12), T0 + 36020, 300)])]
    proc = subprocess.Popen([*_bzgw(), "-v", "matcher", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("subscribed to" in line for line in lines):  # batches need a reader
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        acks = asyncio.run(asyncio.wait_for(_send(lab, public, batches), 30))
        assert sorted((a["seq"], a["status"]) for a in acks) == [(1, "stored"), (2, "stored")]
        port = yaml.safe_load(cfg.read_text())["matcher"]["dashboard_port"]
        code, page = _dashboard_json(cfg, port)
        assert code == 200 and "gw-a" in page  # the dashboard reads the same store
        proc.send_signal(signal.SIGHUP)  # reloads the registry, keeps serving
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "registry reloaded" in out
    assert "001099000222" not in out and "Phạm" not in out  # nothing personal in the log

    runner = CliRunner()
    res = runner.invoke(cli, ["matcher", "status", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.output)
    assert status["rows"]["batches"] == 2
    assert [(c["reason"], c["gateway"], c["n"]) for c in status["counters"]] == [
        ("stored", "gw-a", 2)]

    infof = tmp_path / "infof.json"
    infof.write_text(json.dumps({"data": [{"daily_key": dk.hex(), "time_start": T0,
                                           "time_end": T0 + 86399, "max": 96}]}))
    res = runner.invoke(cli, ["matcher", "sign-f0", str(infof), "--key",
                              str(tmp_path / "moh.key"), "--case", "HN-9"])
    assert res.exit_code == 0, res.output
    signed = tmp_path / "infof.json.signed.json"
    res = runner.invoke(cli, ["match", "--f0", str(signed), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    [rep] = (tmp_path / "reports").glob("report-infof.json.signed-*")  # under reports_dir
    assert "case HN-9: 1 hit(s), 1 window(s)" in res.output
    assert "Chợ A" in res.output and "001099000222" not in res.output
    doc = json.loads((rep / "report.json").read_text(encoding="utf-8"))
    [w] = doc["cases"][0]["windows"]
    assert w["venue"]["code"] == "cho-a"
    # sealed for the custodians: the report has the masked form only, and a request
    assert [(c["masked"], c["subject"]) for c in w["co_present_checkins"]] == [
        ("***222", None)]
    assert "Phạm" not in (rep / "report.json").read_text(encoding="utf-8")
    assert w["other_ids"] == {"bluezone": 1}
    request = rep / "opening-request.json"
    assert request.is_file() and "custodian approve" in res.output
    custody = custody_files(lab.root)
    for name in LAB_CUSTODIANS[:2]:
        res = runner.invoke(cli, ["custodian", "approve", "--share",
                                  str(custody / f"custodian-{name}.json"), "--request",
                                  str(request), "--out", str(tmp_path / f"ok-{name}.json"),
                                  "--yes"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["match", "--f0", str(signed), "--config", str(cfg), "--out",
                              str(tmp_path / "opened"), "--request", str(request),
                              "--approvals", str(tmp_path / f"ok-{LAB_CUSTODIANS[0]}.json"),
                              "--approvals", str(tmp_path / f"ok-{LAB_CUSTODIANS[1]}.json")])
    assert res.exit_code == 0, res.output
    assert "opened 1 check-in identit(ies)" in res.output
    doc = json.loads((tmp_path / "opened" / "report.json").read_text(encoding="utf-8"))
    [c] = doc["cases"][0]["windows"][0]["co_present_checkins"]
    assert (c["subject"], c["fields"]) == ("001099000222", {"name": "Phạm D"})
    # the same approvals again: a replay, refused and logged
    res = runner.invoke(cli, ["match", "--f0", str(signed), "--config", str(cfg), "--request",
                              str(request), "--approvals",
                              str(tmp_path / f"ok-{LAB_CUSTODIANS[0]}.json"), "--approvals",
                              str(tmp_path / f"ok-{LAB_CUSTODIANS[1]}.json")])
    assert res.exit_code == 1 and "replay" in res.output
    events = [e["event"] for e in entries(tmp_path / "audit.log")]
    assert events.count("open") == 1 and events[-1] == "refused_open"
    assert events[0] == "start" and events.count("f0_query") == 3
    res = runner.invoke(cli, ["audit", "verify", str(tmp_path / "audit.log")])
    assert res.exit_code == 0, res.output


def _match_config(tmp_path: Path, db: str, signers: list[Path]) -> Path:
    """A matcher config for ``bzgw match`` alone (no broker)."""
    cfg = tmp_path / "match.yaml"
    cfg.write_text(yaml.safe_dump({"matcher": {
        "db": db, "private_key": str(tmp_path / "unused.key"),
        "registry": str(tmp_path / "unused.yaml"), "f0_signers": [str(s) for s in signers],
        "audit_log": str(tmp_path / "audit.log"), "audit_key": str(tmp_path / "audit.key")}}))
    return cfg


def test_match_refuses_unsigned_input_and_signers_not_in_the_config(tmp_path: Path) -> None:
    f = tmp_path / "infof.json"
    f.write_text(json.dumps({"data": []}))
    pem = tmp_path / "k.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    runner = CliRunner()
    res = runner.invoke(cli, ["match", "--f0", str(f)])
    assert res.exit_code == 2 and "--config" in res.output
    res = runner.invoke(cli, ["match", "--f0", str(f), "--config",
                              str(_match_config(tmp_path, f"sqlite:///{tmp_path / 'm.db'}",
                                                [pem]))])
    assert res.exit_code == 1
    assert "not signed" in res.output
    # the command-line escape hatch for signers is gone
    res = runner.invoke(cli, ["match", "--f0", str(f), "--config", str(tmp_path / "match.yaml"),
                              "--signer", str(pem)])
    assert res.exit_code == 2 and "No such option" in res.output


def test_serve_without_mqtt_section_is_a_config_error(tmp_path: Path) -> None:
    private, public = generate_matcher_keypair()
    save_matcher_keypair(private, public, tmp_path / "m.key", tmp_path / "m.pub")
    (tmp_path / "reg.yaml").write_text("gateways: []\n")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({"matcher": {"private_key": "m.key",
                                               "registry": "reg.yaml",
                                               "db": f"sqlite:///{tmp_path / 'x.db'}",
                                               "audit_log": "audit.log",
                                               "audit_key": "audit.key"}}))
    res = CliRunner().invoke(cli, ["matcher", "serve", "--config", str(cfg)])
    assert res.exit_code == EXIT_CONFIG
    assert "needs an mqtt section" in res.output


@pytest.mark.skipif(shutil.which("bzgw") is None and not (
    Path(sys.executable).parent / "bzgw").exists(), reason="bzgw console script not installed")
def test_help_has_examples() -> None:
    for args in (["match"], ["matcher", "serve"], ["matcher", "status"], ["matcher", "purge"],
                 ["matcher", "sign-f0"]):
        res = CliRunner().invoke(cli, [*args, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output, args


@pytest.mark.postgres
def test_match_a_large_f0_on_postgresql_with_url_options(pg_url: str, tmp_path: Path) -> None:
    # 210 daily keys: over 20,000 IDs, so the join is split over the URL's probe connections
    # (the split itself is tested in test_matcher_store.py).
    from bzgw.labrecords import Header, drop_schema, entry, unique_schema
    from matcher.store import open_store

    authority = Ed25519PrivateKey.generate()
    (tmp_path / "moh.key").write_bytes(authority.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "moh.pem").write_bytes(authority.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys = [os.urandom(32) for _ in range(210)]
    seen = bluezone_day_ids(keys[123])[40]
    name = unique_schema()
    url = f"{pg_url}?schema={name}&probes=3"
    try:
        with open_store(url) as store:
            store.add_batch(entry("gw-a"), Header("gw-a", 1, T0), Batch(
                sightings=[sighting(seen, T0 + 36010, 600), sighting(os.urandom(12), T0 + 5)]))
        infof = tmp_path / "infof.json"
        infof.write_text(json.dumps({"data": [
            {"daily_key": k.hex(), "time_start": T0, "time_end": T0 + 86399, "max": 96}
            for k in keys]}))
        runner = CliRunner()
        res = runner.invoke(cli, ["matcher", "sign-f0", str(infof), "--key",
                                  str(tmp_path / "moh.key"), "--case", "HN-10"])
        assert res.exit_code == 0, res.output
        cfg = _match_config(tmp_path, url, [tmp_path / "moh.pem"])
        res = runner.invoke(cli, ["match", "--f0", str(tmp_path / "infof.json.signed.json"),
                                  "--config", str(cfg), "--out", str(tmp_path / "rep")])
        assert res.exit_code == 0, res.output
        assert "20,160 IDs" in res.output  # one case per daily key, one join for all
        assert "HN-10 #124: 1 hit(s), 1 window(s)" in res.output, res.output
        doc = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
        assert [i for i, c in enumerate(doc["cases"]) if c["windows"]] == [123]
        res = runner.invoke(cli, ["match", "--f0", str(tmp_path / "infof.json.signed.json"),
                                  "--config", str(cfg), "--db",
                                  f"{pg_url}?schema={name}&probes=lots"])
        assert res.exit_code == 1 and "probes='lots'" in res.output
    finally:
        drop_schema(pg_url, name)
