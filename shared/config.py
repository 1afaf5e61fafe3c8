"""Typed configuration: frozen dataclasses filled from TOML, the command line or Flower's run
config, through one resolver (:func:`resolve`: defaults, then the TOML table, then the options
the user actually passed, then validation).

Why a loader of our own instead of a schema library: the rules are small and strict. Unknown
keys are rejected (a typo must never silently fall back to a default), values are checked
against the annotated type, and every run writes its resolved config next to its outputs so
a number in a report can always be traced to the settings that produced it.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     size: int = 256
...     name: str = "a"
>>> from_mapping(Demo, {"size": 64})
Demo(size=64, name='a')
>>> from_mapping(Demo, {"sise": 64})
Traceback (most recent call last):
...
shared.errors.ConfigError: Demo: unknown key 'sise' (known: name, size)
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, key: str, owner: str) -> Any:
    """Check (and gently coerce int→float, list→tuple) one value against its annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, owner)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # `X | None`: the one real type's reason, not a generic one
            raise ConfigError(errors[0])
        raise ConfigError(f"{owner}.{key}: {value!r} matches none of {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{owner}.{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{owner}.{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key, owner) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{owner}.{key}: expected a table, got {value!r}")
        return from_mapping(annotation, value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        # TOML and JSON both spell nan/inf; a NaN passes every `v <= 0` check and makes a
        # later `min`/`>` comparison false, so a NaN time cap would never stop anything.
        raise ConfigError(f"{owner}.{key}: expected a finite number, got {value!r}")
    if annotation is Path and isinstance(value, str):
        return Path(value)
    if isinstance(annotation, type):
        if annotation is int and isinstance(value, bool):
            raise ConfigError(f"{owner}.{key}: expected int, got {value!r}")
        if not isinstance(value, annotation):
            raise ConfigError(
                f"{owner}.{key}: expected {annotation.__name__}, got {type(value).__name__} "
                f"{value!r}"
            )
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str | Path | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad types raise."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})",
            source,
        )
    kwargs = {}
    for key, value in data.items():
        try:
            kwargs[key] = _coerce(value, hints[key], key, cls.__name__)
        except ConfigError as exc:
            raise ConfigError(str(exc), source) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}", source) from None


def parse_assignment(item: str) -> tuple[str, Any]:
    """``key=value`` from a command line → (key, value), the value read as a TOML value where it
    parses (numbers, booleans, quoted text, inline tables), else kept as text. The one parser
    for every ``-c key=value`` style option; the key is checked later, by :func:`from_mapping`.

    >>> parse_assignment("ada_target=0.45"), parse_assignment("augment=fixed")
    (('ada_target', 0.45), ('augment', 'fixed'))
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{item!r}: expected key=value")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def read_table(path: Path, table: str | None = None) -> dict[str, Any]:
    """One table of a TOML file as a dict ({} when the table is absent)."""
    try:
        data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    for part in (table.split(".") if table else []):
        data = data.get(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"[{table}] is not a table", path)
    return dict(data)


_USER_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def passed_options(ctx: Any) -> dict[str, Any]:
    """The options of a click/Typer command that the user actually gave, by parameter name.

    Why: a CLI default must never replace a value the TOML file set (``node train --config
    run.toml`` with ``batch = 32`` trains at 32 unless ``--batch`` is on the command line).
    """
    out = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in _USER_SOURCES:
            out[name] = value
    return out


def resolve(cls: type[T], ctx: Any = None, *, toml: Path | None = None,
            table: str | None = None, defaults: Mapping[str, Any] | None = None,
            fields: Mapping[str, str] | None = None) -> T:
    """The one config resolver: ``defaults`` (the dataclass's own unless given), then the TOML
    file's ``[table]``, then the CLI options the user passed (``ctx``), then validation.

    ``fields`` maps a CLI parameter name to the dataclass field it sets where they differ;
    parameters that set no field (``--site-dir``…) are ignored. An invalid value raises one
    :class:`ConfigError` naming the option (``--batch: batch must be ≥ 2, got 0``) or the
    file and table it came from.
    """
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data: dict[str, Any] = dict(defaults or {})
    if toml is not None:
        from_file = read_table(Path(toml), table)
        from_mapping(cls, {**data, **from_file},
                     source=f"{toml}" + (f" [{table}]" if table else ""))
        data.update(from_file)
    cli: dict[str, str] = {}
    for name, value in (passed_options(ctx) if ctx is not None else {}).items():
        key = (fields or {}).get(name, name)
        if key in known:
            data[key] = value
            cli[key] = "--" + name.replace("_", "-")
    try:
        return from_mapping(cls, data)
    except ConfigError as exc:
        message = str(exc)
        for key, option in cli.items():
            if re.search(rf"(^|[\s.(]){re.escape(key)}\b", message):
                reason = message.split(": ", 1)[1] if ": " in message else message
                raise ConfigError(reason, option) from None
        raise


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (Paths become strings)."""
    raw = dataclasses.asdict(config)

    def clean(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    result: dict[str, Any] = clean(raw)
    return result


def write_resolved(config: Any, run_dir: Path, name: str = "config.json") -> Path:
    """Write the resolved config next to a run's outputs and return its path."""
    from shared.files import atomic_write_json

    path = run_dir / name
    atomic_write_json(path, to_dict(config))
    return path
