"""Settings for a tree of frozen dataclasses, from a TOML file, the environment and flags.

A setting is named by its path through the tree. The same path serves every source:
``audience.channel.fanout.flush_interval_s`` in ``--set`` and (as nested tables) in a TOML
file, ``<PREFIX>AUDIENCE__CHANNEL__FANOUT__FLUSH_INTERVAL_S`` in the environment. Values are
coerced by the field's type; a path that names no setting, or a value the type refuses, is
a :class:`SettingError` that names both. Nothing here knows the tree it walks, so a field
added to any config dataclass is settable everywhere at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import tomllib
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The leaf types a setting may have; anything else in a config tree is a programming error.
_SCALARS: dict[type, str] = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path",
}
# A list of strings (addresses, networks): a TOML array, or comma-separated text.
STRINGS = tuple[str, ...]
_SCALARS[STRINGS] = "a list of strings (a TOML array, or text separated by commas)"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingError(ValueError):
    """A key that names no setting, or a value its setting's type refuses."""


@dataclass(frozen=True)
class Assignment:
    """One value for one setting, and where it came from (for error messages).

    A value from text (the environment, a flag) is parsed by the setting's type; a typed
    value (from TOML) must already have that type.
    """

    path: str
    value: object
    origin: str
    typed: bool = False


@dataclass(frozen=True)
class Setting:
    path: str
    type: type


# -- the tree ---------------------------------------------------------------------------


@cache
def _fields(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    found: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        if not (dataclasses.is_dataclass(tp) or tp in _SCALARS):
            raise TypeError(f"{cls.__name__}.{f.name}: a setting cannot have type {tp!r}")
        found[f.name] = tp
    return found


def settings(cls: type) -> list[Setting]:
    """Every leaf of the tree rooted at ``cls``, in declaration order."""
    return list(_walk(cls, ""))


def _walk(cls: type, prefix: str) -> Iterator[Setting]:
    for name, tp in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, f"{prefix}{name}.")
        else:
            yield Setting(f"{prefix}{name}", tp)


def _resolve(cls: type, a: Assignment) -> type:
    """The type of the setting ``a`` names; a SettingError if it names none."""
    tp: type = cls
    walked: list[str] = []
    for part in a.path.split("."):
        if not dataclasses.is_dataclass(tp):
            raise SettingError(f"{a.origin}: {'.'.join(walked)} is a setting, not a table")
        walked.append(part)
        fields = _fields(tp)
        if part not in fields:
            raise SettingError(f"{a.origin}: no setting named {a.path!r}{_suggest(cls, a.path)}")
        tp = fields[part]
    if dataclasses.is_dataclass(tp):
        first = settings(tp)[0].path
        raise SettingError(
            f"{a.origin}: {a.path} is a table; set one of its keys, e.g. {a.path}.{first}"
        )
    return tp


def _suggest(cls: type, path: str) -> str:
    close = difflib.get_close_matches(path, [s.path for s in settings(cls)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- values -----------------------------------------------------------------------------


def _coerce(tp: type, a: Assignment) -> object:
    value = a.value
    if isinstance(value, str) and not a.typed:
        found = value if tp is str else _parse(tp, value.strip())
    else:
        found = _accept(tp, value)
    if found is None:
        raise SettingError(f"{a.origin}: {a.path} must be {_SCALARS[tp]}, got {value!r}")
    return found


def _accept(tp: type, value: object) -> object | None:
    """A typed value if it has type ``tp`` (an integer is a number too), else None."""
    if tp == STRINGS:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        return tuple(value) if ok else None  # type: ignore[arg-type]
    if isinstance(value, bool):
        return value if tp is bool else None
    if tp is float and isinstance(value, int | float):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value) if value else None
    return value if isinstance(value, tp) else None


def _parse(tp: type, raw: str) -> object | None:
    if tp == STRINGS:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if tp is bool:
        low = raw.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    if tp is Path:
        return Path(raw) if raw else None
    try:
        return int(raw) if tp is int else float(raw)
    except ValueError:
        return None


def with_values(config: T, assignments: Iterable[Assignment]) -> T:
    """``config`` with each assignment applied in turn (a later one wins)."""
    for a in assignments:
        value = _coerce(_resolve(type(config), a), a)
        config = _replace_at(config, a.path.split("."), value)
    return config


def _replace_at(node: T, parts: Sequence[str], value: object) -> T:
    head, *rest = parts
    new = _replace_at(getattr(node, head), rest, value) if rest else value
    return replace(node, **{head: new})  # type: ignore[type-var]


# -- sources ----------------------------------------------------------------------------


def from_mapping(config: T, data: Mapping[str, object], origin: str) -> T:
    """Apply nested tables (a parsed TOML document) that mirror the tree."""
    return with_values(config, _flatten(data, "", origin))


def _flatten(data: Mapping[str, object], prefix: str, origin: str) -> Iterator[Assignment]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.", origin)
        else:
            yield Assignment(f"{prefix}{key}", value, origin, typed=True)


def from_toml_file(config: T, path: Path) -> T:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingError(f"cannot read the config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"{path} is not valid TOML: {e}") from e
    return from_mapping(config, data, str(path))


def env_name(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "__").upper()


def from_env(config: T, env: Mapping[str, str], prefix: str, ignore: Iterable[str] = ()) -> T:
    """Apply every ``<prefix><PATH>`` variable, levels joined by ``__``. Any other variable
    with the prefix is an error (a misspelt name would otherwise be silently ignored),
    except those in ``ignore``: names the prefix shares with other programs' settings."""
    skip = frozenset(ignore)
    found = [
        Assignment(name[len(prefix) :].lower().replace("__", "."), raw, name)
        for name, raw in sorted(env.items())
        if name.startswith(prefix) and name not in skip
    ]
    known = {env_name(prefix, s.path) for s in settings(type(config))}
    for a in found:
        if a.origin not in known:
            close = difflib.get_close_matches(a.origin, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SettingError(f"{a.origin}: no setting of that name{hint}")
    return with_values(config, found)


def parse_assignment(text: str, origin: str = "--set") -> Assignment:
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise SettingError(f"{origin}: expected path.to.setting=value, got {text!r}")
    return Assignment(path.strip(), raw, origin)


class Assign(argparse.Action):
    """An argparse action that collects settings in command-line order, so the last one
    given wins. Without ``path`` it takes ``path.to.setting=value`` (``--set``); with a
    ``path`` it is a named flag for that setting (and for the settings in ``also``, which
    take the same value). All of them gather, as a list of :class:`Assignment`, in one
    attribute of the namespace (``settings_dest``)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        path: str | None = None,
        settings_dest: str = "settings",
        also: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, settings_dest, **kwargs)
        self.path = path
        self.also = tuple(also)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        flag = option_string or self.dest
        text = str(values)
        try:
            a = (
                parse_assignment(text, flag)
                if self.path is None
                else Assignment(self.path, text, flag)
            )
        except SettingError as e:
            parser.error(str(e))
        found = list(getattr(namespace, self.dest, None) or [])
        same = [Assignment(path, text, flag) for path in self.also]
        setattr(namespace, self.dest, [*found, a, *same])


# -- output -----------------------------------------------------------------------------


def to_toml(config: object) -> str:
    """The whole tree as a TOML document that :func:`from_mapping` reads back unchanged."""
    lines: list[str] = []
    _render(config, "", lines)
    return "\n".join(lines).strip() + "\n"


def _render(node: object, table: str, lines: list[str]) -> None:
    cls: type = type(node)
    fields = _fields(cls)
    scalars = [n for n, tp in fields.items() if not dataclasses.is_dataclass(tp)]
    if table and scalars:
        lines += ["", f"[{table}]"]
    lines += [f"{name} = {_toml_value(getattr(node, name))}" for name in scalars]
    for name, tp in fields.items():
        if dataclasses.is_dataclass(tp):
            _render(getattr(node, name), f"{table}.{name}" if table else name, lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string (the same quotes and escapes), once DEL, which
    # JSON leaves bare and TOML does not, is escaped too.
    return json.dumps(str(value)).replace("\x7f", "\\u007f")
