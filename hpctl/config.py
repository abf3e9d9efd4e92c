"""Run configuration: YAML files and flags compose (flags win).

A config file is a YAML mapping. Its keys are the common run options (``controller``,
``seed``, ``budget``, ``group_size``, ``commit_rule``, ``reward``, ``out``,
``tracking_uri``; and where the run executes: ``engine``, ``address``, ``cpus_per_trial``,
``gpus_per_trial``, ``probe_workers``, see :mod:`hpctl.engines`), the plugin's own options
(the fields of its ``Config`` dataclass, with underscores), and ``controller_config``: a mapping of the controller's
hyperparameters (e.g. ``{policy_lr: 0.3, group_size: 6}`` for GRPO). Example::

    controller: grpo
    budget: 64
    optimum: 0.2
    controller_config: {sigma_init: 0.25, grid.k: 4}   # "grid.k": only for the grid controller

``hpctl compare`` also reads ``controllers`` (a list or a comma-separated string) and
``seeds``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from hpctl.errors import ConfigError, shorten

_A = {int: "an integer", float: "a number", bool: "true or false", str: "text"}

#: keys only `hpctl compare` reads (`hpctl run` ignores them)
COMPARE_KEYS = ("controllers", "seeds")


#: seeds must fit numpy's legacy seeding (``np.random.seed``), which takes 32 bits
MAX_SEED = 2**32 - 1


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

    def __post_init__(self) -> None:
        for key, kind in (("seed", int), ("budget", int), ("group_size", int), ("controller", str), ("out", str),
                          ("tracking_uri", str), ("commit_rule", str), ("reward", str), ("controller_config", dict),
                          ("warm_start", str)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                what = {int: "an integer", str: "a string", dict: "a mapping"}[kind]
                raise ConfigError(f"{key} must be {what}, got {shorten(repr(value))}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {shorten(str(self.seed))}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"budget must be > 0 probes, got {self.budget}")
        if self.group_size is not None and self.group_size < 2:
            raise ConfigError(f"group size must be >= 2, got {self.group_size}")
        if self.out is not None and not self.out.strip():
            raise ConfigError("--out is empty; name a folder for the run (or leave it out for runs/...)")


#: the config-file keys every run takes: the fields of :class:`RunOptions`
COMMON_KEYS = tuple(f.name for f in dataclasses.fields(RunOptions))


#: a config file is a short mapping of options; anything larger is a mistake (or an attack)
MAX_CONFIG_BYTES = 1 << 20


def _no_alias_loader():
    """A safe YAML loader without anchors/aliases: config files need none, and aliases
    let a few hundred bytes expand into gigabytes (the "billion laughs")."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"YAML aliases are not allowed in config files (line {mark.line + 1})")
            return super().compose_node(parent, index)

    return Loader


def parse_value(text: str, *, what: str) -> Any:
    """A ``KEY=VALUE`` value as YAML (``0.3`` a number, ``[1, 2]`` a list), without aliases."""
    import yaml

    try:
        return yaml.load(text, Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"value of {shorten(what)!r} is not valid: {shorten(str(exc), 120)}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    name = shorten(str(p))
    if not p.exists():
        raise ConfigError(f"config file {name!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {name!r} is not a file")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {name!r} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {name!r} is over {MAX_CONFIG_BYTES >> 20} MiB; a config is a short mapping")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {name!r} is not valid YAML{where}: "
                          f"{shorten(str(getattr(exc, 'problem', None) or exc), 200)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name!r} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name!r} must hold a mapping of options, got {type(data).__name__}")
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


def _structured(tp: Any) -> bool:
    """A field whose values are mappings, lists or anything else: not coerced."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, types.UnionType) else [tp]
    return len(args) != 1 or args[0] not in (int, float, str, bool)


def coerce(name: str, value: Any, tp: Any, choices: list[Any] | None = None) -> Any:
    """``value`` as the field's type; a one-line error names the option when it cannot be."""
    base, optional = field_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name!r} cannot be empty")
    if _structured(tp):
        return value
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
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"option {name!r} must be a finite number, got {value!r}")
        else:
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"option {name!r} must be {_A[base]}, got {shorten(repr(value))}") from None
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
