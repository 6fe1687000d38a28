"""Typed configuration: plain mappings (from YAML) -> frozen dataclasses, strictly.

Every plugin owns a frozen, keyword-only dataclass ``Config``. :func:`build` turns a
mapping into one, failing on the first problem with the dotted key that caused it:

* an unknown key names the closest valid key;
* a value of the wrong type names the expected type (``int`` is accepted for
  ``float``; a numeric string such as YAML's ``1e-4`` is accepted for ``float`` because
  YAML 1.1 reads exponents without a dot as strings);
* a required key that is missing is named;
* a ``float`` must be finite (``nan``/``inf`` are refused: they slip past range checks);
* a field declared with :func:`path_field` must exist on disk (file or directory).

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``pathlib.Path``,
``Literal[...]``, ``Optional``/``X | None``, ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``dict[str, X]``, ``Any`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ftib.core.errors import ConfigError, FtibError, did_you_mean

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.I)

PATH_KIND = "ftib_path_kind"


def path_field(*, kind: Literal["file", "dir", "any"] = "file", must_exist: bool = True, **kw):
    """A dataclass field holding a filesystem path that is checked before any work.

    Args:
        kind: what must be there: a ``"file"``, a ``"dir"`` or ``"any"`` of the two.
        must_exist: when False the path is only typed (e.g. an output path).
        **kw: forwarded to :func:`dataclasses.field` (``default=...``).
    """
    meta = dict(kw.pop("metadata", {}) or {})
    meta[PATH_KIND] = kind if must_exist else None
    return dataclasses.field(metadata=meta, **kw)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _same_shape(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the container shape of annotation ``tp`` (mapping for a
    dataclass or dict, sequence for a list or tuple, a scalar for the rest)."""
    origin = typing.get_origin(tp) or tp
    is_dc = dataclasses.is_dataclass(tp) and isinstance(tp, type)
    if isinstance(value, Mapping):
        return is_dc or origin in (dict, Mapping)
    if isinstance(value, (list, tuple)):
        return origin in (list, tuple)
    return not (is_dc or origin in (dict, Mapping, list, tuple))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert/check ``value`` against annotation ``tp``; raise ConfigError at ``where``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        errors: dict[Any, ConfigError] = {}
        for arg in arms:
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors[arg] = exc
        # The arm the value was meant for (a mapping for a nested dataclass, a list for
        # a list...) knows what is wrong inside it: say that, not just the union's name.
        meant = [a for a in arms if _same_shape(value, a)]
        if len(meant) == 1:
            raise errors[meant[0]]
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
            + "".join(f"\n  as {_type_name(a)}: {e}" for a, e in errors.items())
        )
    if origin is Literal:
        if value in args:
            return value
        hint = did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(f"{where}: {value!r} is not allowed; {hint}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {
            _convert(k, kt, f"{where}"): _convert(v, vt, f"{where}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return build(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            out = float(value)
        else:
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")
        # NaN passes every `x <= 0` range check and inf overflows later: refuse both here.
        if not math.isfinite(out):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected str, got {type(value).__name__} {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        raise ConfigError(f"{where}: expected a path, got {type(value).__name__} {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r} in a config class")


def _check_path(value: Any, kind: str | None, where: str) -> None:
    if kind is None or value is None:
        return
    paths = value if isinstance(value, (list, tuple)) else [value]
    for p in paths:
        p = Path(p)
        if kind == "file" and not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ConfigError(f"{where}: file {str(p)!r} {what}")
        if kind == "dir" and not p.is_dir():
            what = "is a file, not a directory" if p.exists() else "does not exist"
            raise ConfigError(f"{where}: directory {str(p)!r} {what}")
        if kind == "any" and not p.exists():
            raise ConfigError(f"{where}: path {str(p)!r} does not exist")


def build(cls: type, data: Mapping[str, Any] | None, *, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data`` strictly; errors name ``where.<key>``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key; {did_you_mean(str(key), fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        sub = f"{where}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: required key is missing")
            continue
        value = _convert(data[name], hints[name], sub)
        _check_path(value, f.metadata.get(PATH_KIND), sub)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError, FtibError) as exc:  # __post_init__ validation
        raise ConfigError(f"{where}: {exc}") from exc
    # Defaults that are paths are checked too (a default file that is not there).
    for name, f in fields.items():
        if name not in data:
            _check_path(getattr(obj, name), f.metadata.get(PATH_KIND), f"{where}.{name}")
    return obj


def to_dict(obj: Any) -> Any:
    """A JSON-ready view of a config (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def without_new_defaults(obj: Any, old: Any) -> Any:
    """:func:`to_dict` of ``obj`` less the fields that ``old`` (an earlier ``to_dict`` of
    the same config, e.g. a run manifest's) lacks and that hold their default: an option
    added to ftib since ``old`` was written, left at its default, keeps the old behaviour
    (ftib's rule for new options), so it is not a change of configuration."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)) or not isinstance(old, Mapping):
        return to_dict(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in old:
            out[f.name] = without_new_defaults(value, old[f.name])
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or to_dict(default) != to_dict(value):
            out[f.name] = to_dict(value)
    return out


def file_fields(obj: Any, prefix: str) -> dict[str, Path]:
    """Every existing path held by a :func:`path_field` in ``obj`` (for data hashes)."""
    out: dict[str, Path] = {}
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return out
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}"
        if f.metadata.get(PATH_KIND) and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            for i, v in enumerate(values):
                out[key if len(values) == 1 else f"{key}[{i}]"] = Path(v)
        elif dataclasses.is_dataclass(value):
            out.update(file_fields(value, key))
    return out
