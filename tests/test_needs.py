"""Under ``CI=true`` a missing PostgreSQL, Mosquitto or Chromium fails the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from needs import missing

HERE = Path(__file__).resolve().parent


def test_missing_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL"):
        missing("no PostgreSQL")


def test_missing_service_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no PostgreSQL.*CI=true"):
        missing("no PostgreSQL")


def _run_pg_test(ci: bool) -> subprocess.CompletedProcess[str]:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["BZGW_TEST_PG"] = f"postgresql://postgres@127.0.0.1:{port}/test"
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_matcher_store.py"), "-k", "large_postgres_joins"],
        capture_output=True, text=True, cwd=HERE.parent, env=env, timeout=120)


def test_postgres_test_fails_under_ci_when_no_server_answers() -> None:
    res = _run_pg_test(ci=True)
    assert res.returncode == 1, res.stdout
    assert "1 error" in res.stdout and "required under CI=true" in res.stdout
    res = _run_pg_test(ci=False)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout
