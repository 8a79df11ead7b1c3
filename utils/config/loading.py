"""Building a configuration: defaults, then a YAML file (with ``_base_`` inheritance), then ``key=value`` overrides.

Every key and type is checked on the way in: an unknown key fails with the closest valid name, a wrong type with
the expected type. The result goes through :func:`utils.config.validation.validate` before it is returned.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from utils.config.schema import Config, ConfigError
from utils.config.validation import validate

__all__ = ["config_from_dict", "config_help", "config_to_dict", "load_config", "parse_override", "save_config"]


# ------------------------------------------------------------------------------------- dict <-> config


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable) of a config or config section."""
    return dataclasses.asdict(cfg)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = ", ".join(_type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', str(origin))}[{args}]"


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently coerce) ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            # a bare scalar for a list field is almost always a mistake in the override syntax
            raise ConfigError(
                f"{key}: expected a list of {_type_name(item_tp)} (e.g. {key}=[a,b]), got {value!r} "
                f"({type(value).__name__})"
            )
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (e.g. {key}={{a: 1}}), got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a bool (true/false), got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `2e-3` as text: accept any numeric string for a float field
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return str(value)
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a schema bug, not a user error


def _unknown_key(prefix: str, name: str, cls: type) -> ConfigError:
    valid = sorted(_fields(cls))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{prefix}{name}'.{hint} Valid keys here: {', '.join(valid)}.")


def _merge_into(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates onto a dataclass instance, validating every key and type."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
    cls = type(obj)
    fields = _fields(cls)
    hints = _hints(cls)
    for name, value in updates.items():
        if name not in fields:
            raise _unknown_key(prefix, str(name), cls)
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            _merge_into(getattr(obj, name), value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, tp))


def config_from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict; missing keys take their defaults."""
    cfg = Config()
    _merge_into(cfg, d)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ loading


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving `_base_` (a path or list of paths relative to this file) recursively."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files include each other in a loop: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass an existing YAML file (see configs/).")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, found {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        _deep_update(merged, _read_yaml(path.parent / base, (*seen, path)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "kwargs":
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and its value (a YAML scalar, list or mapping)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. train.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # e.g. an unquoted string with a colon: keep it as text
    return key.split("."), value


def _override_to_dict(path: list[str], value: Any, raw: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value
    return out


def _keep_strings(cfg_cls: type, path: list[str], value: Any, raw: str) -> Any:
    """YAML turns `name=1e-3` or `root=2024` into numbers; for str fields keep the text the user typed."""
    cls = cfg_cls
    for part in path[:-1]:
        hints = _hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return value
        cls = hints[part]
    tp = _hints(cls).get(path[-1])
    if tp is str and not isinstance(value, str):
        return raw.split("=", 1)[1]
    return value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then ``base`` or the YAML file (with its `_base_` chain), then ``section.key=value`` overrides.

    Args:
        path: a YAML file holding only what differs from the defaults, or None for the defaults.
        overrides: command-line overrides such as ``train.lr=0.01`` or ``model.cls_heads=[0,2]``.
        base: a (possibly partial) config dict used in place of a file, e.g. the config stored in a checkpoint.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: an unknown key (with the closest valid one), a wrong type, or a nonsense value.
    """
    if path is not None and base is not None:
        raise ConfigError("load_config: give a config file or a base dict, not both")
    data = _read_yaml(Path(path)) if path is not None else copy.deepcopy(base or {})
    for text in overrides:
        key_path, value = parse_override(text)
        value = _keep_strings(Config, key_path, value, text)
        _deep_update(data, _override_to_dict(key_path, value, text))
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (load_config reads it back to an equal Config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)


# -------------------------------------------------------------------------------------------- help


def config_help(cls: type = Config, prefix: str = "") -> str:
    """Every option as ``key (type, default): help``, for ``--help``."""
    lines: list[str] = []
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"\n  [{prefix}{f.name}] {f.metadata.get('help', '')}")
            lines.append(config_help(tp, f"{prefix}{f.name}."))
            continue
        default = getattr(defaults, f.name)
        choices = f.metadata.get("choices")
        extra = f"; one of {', '.join(map(str, choices))}" if choices else ""
        lines.append(f"    {prefix}{f.name} ({_type_name(tp)}, default {default!r}{extra})")
        lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)
