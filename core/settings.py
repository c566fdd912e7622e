"""Config machinery every section shares: strict models, located errors, relative paths.

Each stage declares its own section model (``ble.config``, ``qr.config``, ``mqtt.config``,
``gateway.config``, ``matcher.config``); :func:`load_model` reads a YAML file into any of them and
turns validation errors into ``file:line: a -> b: message`` lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.errors import ConfigError
from core.yamlloc import line_of, load_yaml

M = TypeVar("M", bound=BaseModel)


def key_error(loc: str | tuple[str, ...], message: str, value: object) -> ValidationError:
    """A cross-field error located at ``loc`` of the model raising it, so ``bzgw config check``
    names that key's own line rather than the section's."""
    where = (loc,) if isinstance(loc, str) else loc
    return ValidationError.from_exception_data("config", [InitErrorDetails(
        type=PydanticCustomError("cross_field", message), loc=where, input=value)])
SECRET_WORDS = ("pin", "password", "secret")  # such values are never echoed in errors


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def format_errors(err: ValidationError, file: str,
                  lines: dict[tuple[str | int, ...], int]) -> list[tuple[str, str]]:
    """One ``(file:line: a -> b, message)`` per pydantic error."""
    out = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and "[" in x))
        line = line_of(lines, loc)
        where = f"{file}:{line}" if line else file
        path = " -> ".join(str(x) for x in loc) or "(top)"
        value = e.get("input")
        secret = any(w in str(loc[-1]).lower() for w in SECRET_WORDS) if loc else False
        shown = ("" if isinstance(value, dict | list) or value is None or secret
                 else f" (got {value!r})")
        out.append((f"{where}: {path}", f"{e['msg']}{shown}"))
    return out


def load_model(path: Path | str, model: type[M]) -> M:
    """Read and validate a YAML file as ``model``.

    Relative paths inside the file are resolved against the file's folder.

    Raises:
        ConfigError: with every problem located by line and key path.
    """
    p = Path(path)
    data, lines = load_yaml(p)
    try:
        cfg = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(p), lines)) from err
    return resolve_paths(cfg, p.parent)


def resolve_paths(cfg: M, base: Path) -> M:
    """Make every relative ``Path`` field absolute against ``base``."""

    def fix(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                object.__setattr__(model, name, (base / value).resolve())
            elif isinstance(value, BaseModel):
                fix(value)
            elif isinstance(value, list) and any(isinstance(v, Path) for v in value):
                object.__setattr__(model, name, [  # e.g. matcher.f0_signers
                    (base / v).resolve() if isinstance(v, Path) and not v.is_absolute()
                    else v for v in value])

    fix(cfg)
    return cfg
