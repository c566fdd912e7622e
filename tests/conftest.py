"""Shared fixtures: a real Mosquitto lab, the public corpora, PostgreSQL."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from needs import missing

from bzgw.lab import Lab, make_lab

ROOT = Path(__file__).resolve().parent.parent
CORPORA = Path(os.environ.get("BZGW_CORPORA", ROOT.parent / "shared" / "corpora"))
ARTIFACTS = ROOT / "tests" / "artifacts"
PG_URL = os.environ.get("BZGW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def corpora() -> Path:
    """The shared public test data; tests using it skip where it is absent."""
    if not CORPORA.is_dir():
        pytest.skip(f"public corpora not found at {CORPORA} (set BZGW_CORPORA)")
    return CORPORA


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A running Mosquitto (TLS, client certs, generated ACLs) with two gateways."""
    gws = [{"id": "gw-a", "province": "hn", "venue": "cho-a", "venue_name": "Chợ A"},
           {"id": "gw-b", "province": "hn", "venue": "ben-xe-b", "venue_name": "Bến xe B"}]
    with make_lab(tmp_path / "lab", gws, matchers=("matcher", "matcher-2")) as lab:
        yield lab


def _pg_reachable() -> bool:
    u = urlsplit(PG_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a reachable PostgreSQL server, or skip with the reason (fail under CI=true)."""
    if not _pg_reachable():
        missing(f"no PostgreSQL answering at {PG_URL} (set BZGW_TEST_PG)")
    return PG_URL


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots and other test artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
