"""Run configuration: YAML files and flags compose (flags win).

A config file is a YAML mapping. Its keys are the common run options (``controller``,
``seed``, ``budget``, ``group_size``, ``commit_rule``, ``reward``, ``out``,
``tracking_uri``; and where the run executes: ``engine``, ``address``, ``cpus_per_trial``,
``gpus_per_trial``, ``probe_workers``, see :mod:`hpctl.engines`), the plugin's own options
(the fields of its ``Config`` dataclass, with underscores), and ``controller_config``: a mapping of the controller's
hyperparameters (e.g. ``{lr: 0.3, group_size: 6}`` for GRPO). Example::

    controller: grpo
    budget: 64
    optimum: 0.2
    controller_config: {sigma_init: 0.25, grid.k: 4}   # "grid.k": only for the grid controller

``hpctl compare`` also reads ``controllers`` (a list or a comma-separated string) and
``seeds``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from hpctl.errors import ConfigError

#: keys only `hpctl compare` reads (`hpctl run` ignores them)
COMPARE_KEYS = ("controllers", "seeds")


@dataclass
class RunOptions:
    """Options every plugin run takes."""

    controller: str | None = None
    seed: int = 0
    budget: int | None = None
    group_size: int | None = None
    commit_rule: str = "best"
    reward: str = "score"
    out: str | None = None
    tracking_uri: str | None = None
    controller_config: dict[str, Any] = field(default_factory=dict)
    warm_start: str | None = None  # a finished run's folder: start the controller from its saved state
    # how the run executes, never what it computes (hpctl.engines)
    engine: str = "local"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    probe_workers: int | None = None


#: the config-file keys every run takes: the fields of :class:`RunOptions`
COMMON_KEYS = tuple(f.name for f in dataclasses.fields(RunOptions))


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} is not a file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of options, got {type(data).__name__}")
    return data


def field_type(tp: Any) -> tuple[type, bool]:
    """The base type of a dataclass field annotation and whether it is Optional."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        base, _ = field_type(args[0]) if len(args) == 1 else (str, False)
        return base, optional
    if tp in (int, float, str, bool):
        return tp, False
    return str, False


def coerce(name: str, value: Any, tp: Any, choices: list[Any] | None = None) -> Any:
    base, optional = field_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name!r} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = low in ("true", "1", "yes")
            else:
                value = bool(value)
        elif base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(value)
        elif base is float:
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r} must be {base.__name__}, got {value!r}") from None
    if choices is not None and value not in choices:
        raise ConfigError(f"unknown {name} {value!r} (choose from {', '.join(map(str, choices))})")
    return value


def build_dataclass(cls: type, values: dict[str, Any], *, what: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, type-checking each field."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{what} has no option {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = coerce(name, value, hints[name], fields[name].metadata.get("choices"))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}") from None


def split_config(data: dict[str, Any], plugin_config_cls: type, *, source: str) -> tuple[dict, dict]:
    """Split a config mapping into (common options, plugin options)."""
    plugin_fields = {f.name for f in dataclasses.fields(plugin_config_cls)}
    common, plugin = {}, {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k in COMMON_KEYS or k in COMPARE_KEYS:
            common[k] = value
        elif k in plugin_fields:
            plugin[k] = value
        else:
            known = sorted(set(COMMON_KEYS) | set(COMPARE_KEYS) | plugin_fields)
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(known)})")
    if "controller_config" in common and not isinstance(common["controller_config"] or {}, dict):
        raise ConfigError(f"{source}: controller_config must be a mapping")
    return common, plugin
