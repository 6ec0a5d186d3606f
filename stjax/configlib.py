"""Strict conversion of YAML/dict data into typed dataclass configs.

Every mistake becomes one `ConfigKeyError` line naming the dotted key, what was expected
and, for an unknown key, the closest valid one: a typo must never be silently ignored
or silently defaulted on a TPU bill.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from stjax.errors import UserError


class ConfigKeyError(UserError):
    """A bad config key or value; str(e) is the one line shown to the user."""


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `3e-4` and `1E5` are numbers (YAML 1.1,
    PyYAML's default, reads a float without a dot as a string, and people write learning
    rates that way). Quoted values stay strings."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str):
    """YAML text -> Python data, with YamlLoader."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Builds dataclass `cls` from nested dicts, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigKeyError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{_join(where, close[0])}'?)" if close else ""
            raise ConfigKeyError(f"unknown key '{_join(where, key)}'{hint}; valid keys: {', '.join(fields)}")
    values = {}
    for name, field in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigKeyError(f"missing required key '{key}'")
    return cls(**values)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, key: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key)
            except ConfigKeyError:
                continue
        raise ConfigKeyError(f"'{key}': expected {_describe(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigKeyError(f"'{key}': expected {_describe(tp)}, got {value!r}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML: numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigKeyError(f"override '{text}': expected KEY=VALUE, e.g. train.max_steps=10")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigKeyError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """top over base: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, *, _including: tuple[Path, ...] = ()) -> dict:
    """A YAML config file as a mapping. `base: other.yaml` (or a list of files, relative to
    this one) deep-merges those files first, in order, and this file's keys over them."""
    path = Path(path)
    data = _read_one(path)
    bases = data.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigKeyError(f"{path}: 'base': expected a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for name in bases:
        other = (path.parent / name).resolve()
        if other in _including or other == path.resolve():
            raise ConfigKeyError(f"{path}: 'base': {name} includes itself")
        if not other.is_file():
            raise ConfigKeyError(f"{path}: 'base': {name} not found (looked in {path.parent})")
        merged = deep_merge(merged, read_yaml(other, _including=(*_including, path.resolve())))
    return deep_merge(merged, data)


def _read_one(path: Path) -> dict:
    if not path.is_file():
        raise ConfigKeyError(f"{path}: config file not found")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigKeyError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigKeyError(f"{path}: expected a mapping of sections at the top level")
    return data

