"""Reading a RunConfig: YAML/JSON files, dotted command-line overrides, type checks per key."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from rtune_ds.config.checks import validate
from rtune_ds.config.schema import RunConfig, Source
from rtune_ds.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting dicts into dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value] if item_tp is Source and isinstance(value, (str, dict)) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}': expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is Source and isinstance(value, str):
        return Source(path=value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: key '{key}': one of {', '.join(tp)}, "
                              f"got {value!r}") from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}': expected a mapping, got {value!r}")
        return build(tp, value, where, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known under '{prefix or '<top>'}': "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k, where) for k, v in data.items()}
    return cls(**kwargs)


def read_mapping(path: str | Path, what: str = "config file") -> dict:
    """Read a YAML or JSON file into a dict; errors name the file and call it `what`. A .json file
    is read as strict JSON (what DeepSpeed itself reads), anything else as YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    strict = path.suffix == ".json"
    try:
        data = json.loads(path.read_text()) if strict else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: malformed {what}: {err}") from None
    if data is None and not strict:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a {what} must be a mapping of keys")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: key '{key}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return data


def load_run_config(path: str | None, overrides: list[str], command: str = "pretrain") -> RunConfig:
    data = read_mapping(path) if path else {}
    where = str(path) if path else "command line"
    if path and overrides:
        where += " + command-line overrides"
    return run_config_from(data, overrides, where, command)


def run_config_from(data: dict, overrides: list[str], where: str, command: str) -> RunConfig:
    cfg = build(RunConfig, apply_overrides(data, overrides), where)
    validate(cfg, where, command)
    return cfg

