"""Skip a test whose outside service is missing, except in CI, where that is a failure.

PostgreSQL, Mosquitto and Chromium are part of the CI image: a test that needs one of them
and quietly skips there would hide a broken image (or a broken fixture) behind a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CI=true`` (as set by GitHub Actions, GitLab CI and most others)."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Skip with ``reason``; under ``CI=true`` fail with it instead."""
    if in_ci():
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)
