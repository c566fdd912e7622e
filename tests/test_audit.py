"""The audit log: signed, hash-chained, headed; a changed, removed or reordered entry is
caught, and the matcher refuses to start on a log that does not verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bzgw.cli import cli
from matcher.audit import AuditError, AuditLog, entries, load_audit_public, verify


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    for i in range(n):
        log.append("f0_query", actor="officer-1", case=f"case-{i}", ids=96)
    return log


def _problems(tmp_path: Path) -> list[str]:
    return verify(tmp_path / "audit.log", load_audit_public(tmp_path / "audit.pub"))[1]


def test_a_clean_log_verifies_and_chains(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert _problems(tmp_path) == []
    rows = entries(tmp_path / "audit.log")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev"] == "0" * 64 and rows[1]["prev"] != rows[2]["prev"]
    assert log.head.seq == 5
    # reopening verifies and continues the chain
    again = AuditLog.open(tmp_path / "audit.log", tmp_path / "audit.key")
    again.append("login", actor="admin")
    assert _problems(tmp_path) == [] and again.head.seq == 6


def test_audit_one_byte_change_anywhere_is_caught(tmp_path: Path) -> None:
    _log(tmp_path)
    path = tmp_path / "audit.log"
    data = path.read_bytes()
    for pos in (10, len(data) // 2, len(data) - 30):
        changed = bytearray(data)
        changed[pos] = changed[pos] ^ 0x01 if chr(changed[pos]) not in '"{}:,' else changed[pos]
        if bytes(changed) == data:
            continue
        path.write_bytes(bytes(changed))
        assert _problems(tmp_path), f"change at byte {pos} not caught"
    path.write_bytes(data)
    assert _problems(tmp_path) == []


def test_audit_removed_reordered_and_cut_entries_are_caught(tmp_path: Path) -> None:
    _log(tmp_path)
    path = tmp_path / "audit.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))  # one removed from the middle
    assert any("removed" in p for p in _problems(tmp_path))
    path.write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))  # reordered
    assert any("reordered" in p or "chain" in p for p in _problems(tmp_path))
    path.write_bytes(b"".join(lines[:-1]))  # the last one removed: only the head can tell
    assert any("head" in p for p in _problems(tmp_path))
    path.write_bytes(b"".join(lines))
    assert _problems(tmp_path) == []


def test_audit_an_entry_rewritten_with_another_key_is_caught(tmp_path: Path) -> None:
    _log(tmp_path, 2)
    path = tmp_path / "audit.log"
    lines = path.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["data"]["case"] = "someone-else"
    lines[1] = json.dumps(entry).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    assert any("signature" in p for p in _problems(tmp_path))


def test_audit_verify_command_and_refusal_to_start(tmp_path: Path) -> None:
    _log(tmp_path, 3)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(tmp_path / "audit.log")])
    assert ok.exit_code == 0 and "OK, 3 entries" in ok.output
    path = tmp_path / "audit.log"
    path.write_bytes(path.read_bytes().replace(b"case-1", b"case-9"))
    bad = runner.invoke(cli, ["audit", "verify", str(path)])
    assert bad.exit_code == 1 and "audit.log:2" in bad.output
    with pytest.raises(AuditError):
        AuditLog.open(path, tmp_path / "audit.key")
    # the real matcher process refuses to start on it
    cfg = tmp_path / "matcher.yaml"
    cfg.write_text(f"matcher:\n  private_key: {tmp_path}/none.key\n  registry: "
                   f"{tmp_path}/none.yaml\n  audit_log: {path}\n  audit_key: "
                   f"{tmp_path}/audit.key\n  mqtt: {{host: 127.0.0.1, ca_file: {tmp_path}/ca, "
                   f"cert_file: {tmp_path}/c, key_file: {tmp_path}/k}}\n")
    proc = subprocess.run([sys.executable, "-m", "bzgw.cli", "matcher", "serve", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "audit log does not verify" in proc.stderr, proc.stderr


def test_audit_rejects_unknown_events(tmp_path: Path) -> None:
    log = _log(tmp_path, 0)
    with pytest.raises(ValueError):
        log.append("anything", actor="x")


def test_audit_an_append_cut_by_a_crash_is_finished_not_refused(tmp_path: Path) -> None:
    log = _log(tmp_path, 3)
    path, head = tmp_path / "audit.log", tmp_path / "audit.log.head"
    good_head = head.read_bytes()
    log.append("login", actor="admin")
    whole = path.read_bytes()
    # cut before the fsync: a partial line past the entry the head names
    path.write_bytes(whole[:-20])
    head.write_bytes(good_head)
    again = AuditLog.open(path, tmp_path / "audit.key")
    assert again.head.seq == 3 and _problems(tmp_path) == []
    # cut after the fsync, before the head moved: the whole entry is kept
    path.write_bytes(whole)
    head.write_bytes(good_head)
    again = AuditLog.open(path, tmp_path / "audit.key")
    assert again.head.seq == 4 and _problems(tmp_path) == []
    # but an entry removed from the end is not a crash: still refused
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))
    with pytest.raises(AuditError):
        AuditLog.open(path, tmp_path / "audit.key")
