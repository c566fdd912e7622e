"""YAML loading that remembers where every key is, so config errors name the line.

PyYAML's composer gives each node a start mark; we keep a map from key path to the 1-based
line of the key itself (not of its enclosing block) and refuse duplicate keys with both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

Loc = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int], file: str,
          problems: list[tuple[str, str]]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]: x` and the like
                problems.append((f"{file}:{line}", "a key must be a plain name"))
                continue
            key = key_node.value
            if key in seen:
                problems.append((f"{file}:{line}", f"duplicate key {key!r} (first at line "
                                 f"{seen[key]})"))
                continue
            seen[key] = line
            lines[(*path, key)] = line
            out[key] = _walk(value_node, (*path, key), lines, file, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            items.append(_walk(item, (*path, i), lines, file, problems))
        return items
    return _construct(node, file, problems)


def _construct(node: yaml.Node, file: str, problems: list[tuple[str, str]]) -> Any:
    # built directly: a round trip through yaml.serialize turns an empty value into "..."
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as err:  # e.g. an unknown !tag
        problems.append((f"{file}:{node.start_mark.line + 1}",
                         f"YAML: {getattr(err, 'problem', None) or err}"))
        return None


def load_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Load a YAML mapping and the 1-based line of every key path.

    Raises:
        ConfigError: unreadable file, YAML syntax error, duplicate keys, or not a mapping.
    """
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([(file, f"cannot read config: {err.strerror}")]) from err
    except UnicodeDecodeError as err:
        line = text_line(path.read_bytes(), err.start)
        raise ConfigError([(f"{file}:{line}", f"not UTF-8 text (byte {err.start})")]) from err
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        loc = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ConfigError([(loc, f"YAML syntax error: {getattr(err, 'problem', err)}")]) \
            from err
    if root is None:
        return {}, {}
    lines: dict[Loc, int] = {}
    problems: list[tuple[str, str]] = []
    data = _walk(root, (), lines, file, problems)
    if problems:
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise ConfigError([(f"{file}:1", "the config must be a mapping of sections")])
    return data, lines


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc`` or of its nearest ancestor that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def text_line(raw: bytes, offset: int) -> int:
    """1-based line of byte ``offset`` in ``raw``."""
    return raw.count(b"\n", 0, offset) + 1
