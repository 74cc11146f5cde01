"""Typed configs as plain data: dataclass <-> JSON/YAML-able dicts, config files and dotted overrides.

One generic converter serves every frozen config of the student side (:class:`TrainConfig` and
everything nested in it: ``StudentConfig``, ``BEVGrid``, ``DistillationConfig``, ``DataConfig``
...): :func:`to_plain` writes nested dicts of lists and scalars, :func:`from_plain` reads them back
checking every key and value against the dataclass's type hints, so a typo or a wrong type is one
error naming the dotted key (``distill.weights.instnce``), never a silent default.

A partial dict is merged onto defaults: :func:`merge` lays a file's dict over the base config's
plain form, :func:`set_dotted` applies ``key.sub=value`` overrides (values parsed as YAML:
``0.5``, ``true``, ``null``, ``[64, 176]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import yaml  # PyYAML (a declared dependency; no type stubs, see pyproject)

T = TypeVar("T")

#: A number in exponent notation without a dot (``1e-3``): YAML 1.1 reads it as a string, a float field takes it.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's fields; the message names the
    dotted key (and the file when there is one)."""


def to_plain(obj: Any) -> Any:
    """``obj`` as JSON/YAML-able data: dataclasses -> dicts (field order), tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_plain(tp: Any, value: Any, key: str = "") -> Any:
    """``value`` (plain data) converted to type ``tp``, recursively.

    Dataclasses take a dict whose missing keys keep their defaults; tuples take lists; ``float``
    takes ints and exponent-notation text (``1e-3``, a string to YAML 1.1); ``X | None`` takes null.

    Raises:
        ConfigError: an unknown key (the message lists the valid ones), a value of the wrong type,
            or a value the dataclass refuses (its ``ValueError``), naming the dotted ``key``.
    """
    where = key or "<top level>"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return from_plain(a, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(options) == 1 else
                          f"{where}: {value!r} fits none of {', '.join(map(_type_name, options))}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_from_plain(tp, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(from_plain(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.match(value):  # YAML 1.1 reads 1e-3 as text
        return float(value)
    if tp in (int, bool, str):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _dataclass_from_plain(cls: type[T], value: Any, key: str) -> T:
    where = key or "<top level>"
    if dataclasses.is_dataclass(value):
        return typing.cast(T, value)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = [k for k in value if k not in names]
    if unknown:
        prefix = f"{key}." if key else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown {cls.__name__} field; valid: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: from_plain(hints[k], v, f"{key}.{k}" if key else k) for k, v in value.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # the dataclass's own check names its field
        raise ConfigError(_dotted_message(cls.__name__, key, str(exc))) from None


def _dotted_message(class_name: str, key: str, message: str) -> str:
    """A dataclass's ``ClassName.field must ...`` message with the dotted key in place of the class
    (``distill.weights.instance must be >= 0 ...``); other messages get ``key: `` in front."""
    own = f"{class_name}."
    if message.startswith(own) and message[len(own):len(own) + 1].isidentifier():
        return (f"{key}." if key else "") + message[len(own):]
    return f"{key}: {message}" if key else message


def merge(base: Any, over: Any) -> Any:
    """``over`` laid onto ``base``: dicts merge key by key (recursively), anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v)
        return out
    return over


def set_dotted(plain: dict[str, Any], assignment: str) -> dict[str, Any]:
    """``plain`` with ``a.b.c=value`` applied (value parsed as YAML); a None or missing
    intermediate becomes a mapping (its dataclass's defaults fill the rest).

    Raises:
        ConfigError: no ``=``, or an empty key.
    """
    path, sep, text = assignment.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {assignment!r}: expected KEY.SUB=VALUE, e.g. distill.weights.instance=1.0")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    over: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        over = {k: over}
    return typing.cast(dict[str, Any], merge(plain, over))


def plain_differences(old: Any, new: Any, ignore: Collection[str] = (), key: str = ""
                      ) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf where two plain configs (:func:`to_plain`
    output) differ, in field order. Keys in ``ignore`` (dotted, top level or nested) and everything
    under them are skipped, as are keys on one side only (a field added or removed between versions)."""
    if key in ignore:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in new if k in old
                for d in plain_differences(old[k], new[k], ignore, f"{key}.{k}" if key else str(k))]
    return [] if old == new else [(key or "<top level>", old, new)]


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file's mapping (safe loaders: nothing in it runs).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a directory, unreadable or not text, not parseable, or not a mapping at the top.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p}: is a directory; give a YAML (.yaml/.yml) or JSON (.json) file")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"config {p}: cannot be read as text ({reason})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config {p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: "
                          f"{' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {p}: expected a mapping at the top, got {type(data).__name__}")
    return data


def dump_yaml(plain: Any) -> str:
    """``plain`` as block YAML in field order (floats written exactly: they read back equal)."""
    class _Dumper(yaml.SafeDumper):
        pass

    def flow_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:  # [H, W] on one line
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)

    _Dumper.add_representer(list, flow_list)
    return typing.cast(str, yaml.dump(plain, Dumper=_Dumper, sort_keys=False, default_flow_style=False))


__all__ = ["ConfigError", "dump_yaml", "from_plain", "merge", "plain_differences", "read_config_file",
           "set_dotted", "to_plain"]
