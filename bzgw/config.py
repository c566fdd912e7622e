"""A whole config file: the gateway's sections, the matcher's, or both.

``parse(dict)`` validates plain data (tests use it); ``load(path)`` reads YAML and turns
validation errors into ``file:line: a -> b: message`` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import convert, load_model
from gateway.config import GatewayConfig, apply_calibration
from matcher.config import MatcherConfig


class Config(GatewayConfig, kw_only=True):
    """A whole config file: gateway sections, matcher section, or both."""

    matcher: MatcherConfig | None = None


def parse(data: dict[str, Any]) -> Config:
    """Validate plain data.

    Raises:
        msgspec.ValidationError: the first problem, its key path in the message.
    """
    return convert(data, Config)


def load(path: Path | str) -> Config:
    """Read and validate a YAML config file.

    Relative paths inside the file are resolved against the file's folder.

    Raises:
        ConfigError: with every problem located by line and key path.
    """
    return apply_calibration(load_model(path, Config))
