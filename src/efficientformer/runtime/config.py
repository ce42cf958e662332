"""One configuration loader for every config dataclass (classification, detection, segmentation, search).

Values are layered: the dataclass defaults (for training: the official recipe), then a YAML recipe that states
only what differs from them, then overrides (``key=value``, ``--key value``, ``--key``, ``--no-key``). Every value
is coerced to its field's declared type and checked against the range or the choices the field declares with
:func:`param`, so a bad value is refused with one line naming the key, the value and what is allowed, wherever it
comes from (YAML, command line or Python).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..utils.recipes import resolve_config

C = TypeVar("C")


def param(
    default: Any,
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with a default, an allowed range or set of choices, and a help line."""
    meta = {
        "choices": tuple(choices) if choices is not None else None,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "help": help,
    }
    return dataclasses.field(default=default, metadata=meta)


# -- reading values --------------------------------------------------------------------------------------------
def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ).replace("typing.", ""))


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML value or a command-line string to ``typ`` (bool, int, float, str, tuples, optionals)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if optional:
                return None
            raise ValueError(f"config key {key!r} cannot be empty")
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if value is None:
        raise ValueError(f"config key {key!r} cannot be null; give a {_type_name(typ)}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(key, v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise ValueError(f"config key {key!r} expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(key, v, a) for v, a in zip(value, args or [str] * len(value), strict=True))
    bad = ValueError(f"config key {key!r} expects {_type_name(typ)}, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad
    if typ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            number = value
        if not isinstance(number, (int, float)) or not float(number).is_integer():
            raise bad
        return int(number)
    if typ is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise bad from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    return value


def check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Refuse ``value`` when it is outside the field's declared range or choices (``None`` always passes)."""
    if value is None or not meta:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"config key {key!r} is {value!r}; allowed: {', '.join(map(str, choices))}")
    limits = (
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    )
    values = value if isinstance(value, tuple) else (value,)
    for name, sign, ok in limits:
        bound = meta.get(name)
        if bound is None:
            continue
        for v in values:
            if isinstance(v, (int, float)) and not ok(v, bound):
                raise ValueError(f"config key {key!r} must be {sign} {bound}, got {value!r}")


def validate(cfg: Any) -> Any:
    """Check every field against its declared range/choices, then the class's own ``check()`` (cross-field rules)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        typed = coerce(f.name, value, hints[f.name])  # Python callers get the same type checks as YAML/CLI
        if typed != value or type(typed) is not type(value):
            setattr(cfg, f.name, typed)
        check_field(f.name, typed, f.metadata)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


# -- YAML ------------------------------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A mapping from a YAML file, read with the safe loader; one-line errors for syntax and unsafe tags."""
    path = resolve_config(path)  # a path, or a shipped config by name (efficientformer_l1_300e)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as err:
        tag = getattr(err, "problem", "") or str(err)
        raise ValueError(f"{path}: {tag.strip()}; configs hold plain keys and values only (no !!python tags)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({problem}{where}); fix the file or start from configs/") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file; give a YAML recipe such as configs/digits.yaml") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


# -- overrides -------------------------------------------------------------------------------------------------
def parse_overrides(items: Sequence[str], known: Sequence[str] = ()) -> dict[str, str]:
    """``["lr=0.1", "--epochs", "5", "--ema=false", "--no-ema", "--progress"]`` -> a key/value mapping.

    ``known`` (the config's field names) lets ``--no-KEY`` mean ``KEY=false`` only for real keys."""
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif key.startswith("no-") and key[3:].replace("-", "_") in known:
                key, value = key[3:], "false"
            elif i + 1 < len(items) and not items[i + 1].startswith("--") and "=" not in items[i + 1]:
                value = items[i + 1]
                i += 1
            else:
                value = "true"
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise ValueError(f"cannot parse override {item!r}; use key=value or --key value")
        out[key.strip().replace("-", "_")] = value.strip()
        i += 1
    return out


def _unknown_key(key: str, names: Sequence[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (see --help for the list)"
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def renamed_keys(cls: type) -> dict[str, str]:
    """``{old spelling: key}`` of a config class (its ``RENAMED`` class attribute): old names still accepted."""
    return dict(getattr(cls, "RENAMED", {}) or {})


def load_config(
    cls: type[C], yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] = (), **values: Any
) -> C:
    """Defaults of ``cls``, then the YAML file, then ``values`` (keyword form), then ``overrides`` (later wins).
    A key the class has renamed (``RENAMED``) is taken under its new name, with a one-line note on stderr."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    renamed = renamed_keys(cls)
    merged: dict[str, Any] = {}

    def put(key: str, value: Any, where: str) -> None:
        key = key.replace("-", "_")
        if key in renamed:
            print(
                f"note: config key {key!r} ({where}) is deprecated; use {renamed[key]!r} (same meaning)",
                file=sys.stderr,
            )
            key = renamed[key]
        if key not in names:
            raise _unknown_key(key, names, where)
        merged[key] = coerce(key, value, hints[key])

    if yaml_path is not None:
        for key, value in read_yaml(yaml_path).items():
            put(key, value, str(yaml_path))
    for key, value in values.items():
        if value is not None:
            put(key, value, "arguments")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides), names)
    for key, value in overrides.items():
        put(key, value, "overrides")
    return validate(cls(**merged))


def from_dict(cls: type[C], data: Mapping[str, Any], strict: bool = False) -> C:
    """Rebuild a config saved with :func:`to_dict` (unknown keys of older/newer versions dropped unless strict)."""
    names = {f.name for f in dataclasses.fields(cls)}
    renamed = renamed_keys(cls)
    data = {renamed.get(k, k): v for k, v in data.items()}  # configs saved before a key was renamed
    unknown = sorted(set(data) - names)
    if strict and unknown:
        raise _unknown_key(unknown[0], sorted(names), "the saved config")
    return load_config(cls, overrides={k: v for k, v in data.items() if k in names})


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def changed(cfg: Any) -> dict[str, Any]:
    """The fields whose value differs from the class default: what a recipe file needs to state."""
    out = {}
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = getattr(cfg, f.name)
        if value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dump_yaml(cfg: Any, only_changed: bool = False) -> str:
    data = (
        changed(cfg) if only_changed else {k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(cfg).items()}
    )
    return yaml.safe_dump(data, sort_keys=False)


def config_help(cls: type) -> str:
    """One line per field: ``name=default (type)`` and its allowed values; shown in ``--help``."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        line = f"  {f.name}={default!r} ({_type_name(hints[f.name])})"
        meta = f.metadata or {}
        if meta.get("choices"):
            line += f" one of {', '.join(map(str, meta['choices']))}"
        bounds = [
            f"{s} {meta[k]}"
            for k, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if meta.get(k) is not None
        ]
        if bounds:
            line += " " + ", ".join(bounds)
        if meta.get("help"):
            line += f": {meta['help']}"
        lines.append(line)
    return "\n".join(lines)


__all__ = [
    "param",
    "coerce",
    "validate",
    "read_yaml",
    "parse_overrides",
    "load_config",
    "from_dict",
    "to_dict",
    "changed",
    "dump_yaml",
    "config_help",
    "check_field",
    "renamed_keys",
]
