"""Config machinery every section shares: strict records, located errors, relative paths.

Each stage declares its own section (``ble.config``, ``qr.config``, ``mqtt.config``,
``gateway.config``, ``matcher.config``) as a msgspec ``Struct`` derived from :class:`Section`:
unknown keys are errors, limits and descriptions are ``Annotated[..., msgspec.Meta(...)]``, and
rules that span fields live in :meth:`Section.check`. :func:`load_model` reads a YAML file into
any of them and turns validation errors into ``file:line: a -> b: message`` lines.

msgspec stops at the first error of a conversion, so a file that fails is validated again
section by section: ``bzgw config check`` lists the first problem of every top-level section
that has one (a second problem in the same section shows once the first is fixed).

Sections built in code (``BleConfig(source="replay")``) are checked too: msgspec itself only
checks while converting, so :meth:`Section.__post_init__` checks each field against its type
and limits.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from core.errors import ConfigError
from core.yamlloc import Loc, line_of, load_yaml

SECRET_WORDS = ("pin", "password", "secret")  # such values are never echoed in errors
M = TypeVar("M", bound=msgspec.Struct)


class KeyProblem(ValueError):
    """A cross-field error located at a key of the section raising it.

    Attributes:
        loc: the key path inside that section.
        message: what is wrong, without the location.
    """

    def __init__(self, loc: Loc, message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(message)


def key_error(loc: str | Loc, message: str) -> KeyProblem:
    """A cross-field error located at ``loc`` of the section raising it, so ``bzgw config
    check`` names that key's own line rather than the section's."""
    return KeyProblem((loc,) if isinstance(loc, str) else loc, message)


def dec_hook(kind: type, value: object) -> object:
    """The types msgspec does not convert itself (a ``Path`` is written as a string)."""
    if kind is Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str):
            return Path(value)
        raise TypeError(f"Expected a path (`str`), got `{type(value).__name__}`")
    raise TypeError(f"cannot convert to {kind!r}")


def convert(data: object, kind: type[M]) -> M:
    """Validate plain data as ``kind`` the way config files are read.

    Lax like YAML written by hand or rendered by templates: ``"8883"`` is a port and
    ``"true"`` a flag, but ``"many"`` is still not a number.

    Raises:
        msgspec.ValidationError: the first problem found.
    """
    return _lax(data, kind)


def _lax(data: object, kind: Any) -> Any:
    """:func:`convert` for any type (a section's field as much as a whole section)."""
    return msgspec.convert(data, kind, strict=False, dec_hook=dec_hook)


def to_plain(section: msgspec.Struct) -> dict[str, Any]:
    """A section as plain data, paths as strings (for JSON); :func:`convert` reads it back."""
    out: dict[str, Any] = msgspec.to_builtins(section, enc_hook=_enc_hook)
    return out


def _enc_hook(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot write {type(value).__name__}")


@functools.cache
def _field_types(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, f.type) for f in msgspec.structs.fields(cls))


class Section(msgspec.Struct, forbid_unknown_fields=True):
    """Base of every config section: unknown keys are errors.

    Subclasses say ``kw_only=True`` themselves (msgspec does not inherit it), so required
    fields may follow optional ones, as keyword arguments.
    """

    def __post_init__(self) -> None:
        # Converting from data has checked every field already (again here: cheap, and it is
        # the only check a section built in code gets).
        for name, kind in _field_types(type(self)):
            value = getattr(self, name)
            try:
                ok = _lax(value, kind)
            except msgspec.ValidationError as err:
                raise msgspec.ValidationError(_prefixed(str(err), name)) from None
            if ok is not value:  # coerced, e.g. an int given for a float
                setattr(self, name, ok)
        self.check()

    def check(self) -> None:
        """Rules that span fields; raise :func:`key_error` (or ``ValueError``) when broken."""


def _prefixed(message: str, name: str) -> str:
    text, sep, path = message.partition(" - at `$")
    return f"{text} - at `${'.' + name}{path[:-1] if sep else ''}`"


# -- errors ------------------------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?) - at `(?:(?:key|value)` in `)?\$(?P<path>[^`]*)`$", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD = re.compile(r"^Object (contains unknown|missing required) field `([^`]*)`$")


def problem_of(err: msgspec.ValidationError) -> tuple[Loc, str]:
    """``(key path, message)`` of a msgspec error: ``Expected `int` >= 0 - at
    `$.simulator.iphones``` becomes ``(("simulator", "iphones"), "Expected `int` >= 0")``."""
    text = str(err)
    m = _AT.match(text)
    msg, path = (m.group("msg"), m.group("path")) if m else (text, "")
    loc: list[str | int] = []
    for step in _STEP.finditer(path):
        if step.group(0) == "[...]":  # a mapping's key: the mapping is as close as it gets
            break
        loc.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
    field = _FIELD.match(msg)
    if field:
        loc.append(field.group(2))
        msg = "unknown key" if field.group(1) == "contains unknown" else "missing (required)"
    cause = err.__cause__
    if isinstance(cause, KeyProblem):
        loc.extend(cause.loc)
        msg = cause.message
    return tuple(loc), msg


def problems_of(data: dict[str, Any], model: type[msgspec.Struct]) -> list[tuple[Loc, str]]:
    """Every top-level section's first problem; empty when ``data`` is valid.

    msgspec stops at the first error, so each section is converted on its own; a rule that
    spans sections is reported when the sections themselves are fine.
    """
    try:
        convert(data, model)
    except msgspec.ValidationError as err:
        whole = problem_of(err)
    else:
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(model)}
    found: list[tuple[Loc, str]] = []
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            if model.__struct_config__.forbid_unknown_fields:
                found.append(((key,), "unknown key"))
            continue
        try:
            _lax(value, field.type)
        except msgspec.ValidationError as err:
            loc, msg = problem_of(err)
            found.append(((key, *loc), msg))
    found += [((f.encode_name,), "missing (required)") for f in fields.values()
              if f.required and f.encode_name not in data]
    return found or [whole]


def _value_at(data: object, loc: Loc) -> tuple[bool, object]:
    cur = data
    for step in loc:
        at_key = isinstance(cur, dict) and step in cur
        if at_key or (isinstance(cur, list) and isinstance(step, int) and step < len(cur)):
            cur = cur[step]  # type: ignore[index]
        else:
            return False, None
    return True, cur


def format_errors(problems: list[tuple[Loc, str]], file: str, lines: dict[Loc, int],
                  data: object) -> list[tuple[str, str]]:
    """One ``(file:line: a -> b, message)`` per problem; the offending value is shown unless
    it is a mapping, a list or a secret."""
    out = []
    for loc, msg in problems:
        line = line_of(lines, loc)
        where = f"{file}:{line}" if line else file
        path = " -> ".join(str(x) for x in loc) or "(top)"
        found, value = _value_at(data, loc)
        secret = bool(loc) and any(w in str(loc[-1]).lower() for w in SECRET_WORDS)
        shown = msg
        if found and not (isinstance(value, dict | list) or value is None or secret):
            typed = re.sub(r", got `[^`]*`$", f", got {value!r}", msg)  # the value, not its type
            shown = typed if typed != msg else f"{msg} (got {value!r})"
        out.append((f"{where}: {path}", shown))
    return out


def load_model(path: Path | str, model: type[M]) -> M:
    """Read and validate a YAML file as ``model``.

    Relative paths inside the file are resolved against the file's folder.

    Raises:
        ConfigError: with the first problem of every top-level section, located by line and
            key path.
    """
    p = Path(path)
    data, lines = load_yaml(p)
    try:
        cfg = convert(data, model)
    except msgspec.ValidationError as err:
        raise ConfigError(format_errors(problems_of(data, model), str(p), lines, data)) \
            from err
    return resolve_paths(cfg, p.parent)


def resolve_paths(cfg: M, base: Path) -> M:
    """Make every relative ``Path`` field absolute against ``base``."""

    def fix(model: msgspec.Struct) -> None:
        for name in model.__struct_fields__:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                setattr(model, name, (base / value).resolve())
            elif isinstance(value, msgspec.Struct):
                fix(value)
            elif isinstance(value, list) and any(isinstance(v, Path) for v in value):
                setattr(model, name, [  # e.g. matcher.f0_signers
                    (base / v).resolve() if isinstance(v, Path) and not v.is_absolute()
                    else v for v in value])

    fix(cfg)
    return cfg

