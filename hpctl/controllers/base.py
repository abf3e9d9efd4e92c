"""The controller interface and registry shared by every agent."""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from hpctl.control_env import ControlEnv
from hpctl.config import coerce
from hpctl.errors import ConfigError


@dataclasses.dataclass
class NoConfig:
    """A controller without hyperparameters."""


class Controller(ABC):
    """Learns a knob value on a :class:`ControlEnv` within a probe budget.

    Subclasses set ``name`` and ``Config`` (a dataclass of hyperparameters; the YAML
    config's ``controller_config`` mapping overrides its fields) and implement
    :meth:`run`. ``run`` must stop once ``env.probes >= budget`` (a round in flight may
    finish) and return the learned value. The same seed gives the same probes.
    """

    name: ClassVar[str]
    Config: ClassVar[type] = NoConfig

    def __init__(self, env: ControlEnv, config: Any = None, seed: int = 0) -> None:
        self.env = env
        self.knob = env.knob
        self.config = config if config is not None else self.Config()
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    @abstractmethod
    def run(self, budget: int, callback: Callable[["Controller"], None] | None = None) -> np.ndarray:
        """Spend at most ``budget`` probes; return the learned value (knob units).

        ``callback`` is called after every round/update (progress bars, checkpoints).
        """

    def answer(self) -> np.ndarray:
        """The value this controller would hand the final phase now (knob units).

        Learners: the committed training value. Search controllers override it (their best
        candidate). The runner logs it every round as ``controller/answer/<knob>``, the one
        name every controller shares; :meth:`state` adds each controller's own quantities.
        """
        return self.env.current.copy()

    def state(self) -> dict[str, float]:
        """Scalars describing the controller now (logged to MLflow), e.g. mu, sigma, updates."""
        return {}

    def check_budget(self, budget: int) -> None:
        """Raise :class:`ConfigError` if ``budget`` probes cannot pay for one update (learners)."""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this controller cannot run here (e.g. its pip extra is missing), in one line; None if it can.

        :func:`get_controller` raises it as a :class:`ConfigError`; ``hpctl list`` shows it.
        """
        return None

    def export_state(self, out_dir: Path) -> dict[str, Any]:
        """What a later run can warm-start from (JSON-able; may write files into ``out_dir``)."""
        return {}

    def warm_start(self, state: dict[str, Any], folder: Path) -> None:
        """Start from ``export_state()`` of a finished run saved in ``folder``."""
        raise ConfigError(f"controller {self.name!r} learns no policy, so it cannot be warm-started "
                          "(warm starts: grpo, ppo, a2c, sac, td3)")

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None) -> Any:
        """Build ``Config`` from a mapping, rejecting unknown keys with a clear message."""
        overrides = dict(overrides or {})
        names = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"controller {cls.name!r} has no setting {unknown[0]!r} "
                f"(known: {', '.join(sorted(names)) or 'none'})"
            )
        hints = typing.get_type_hints(cls.Config)
        values = {k: coerce(k, v, hints[k]) for k, v in overrides.items()}
        try:
            return cls.Config(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"controller {cls.name!r}: bad setting: {exc}") from None


_REGISTRY: dict[str, type[Controller]] = {}
#: the controllers hpctl ships (the CLI's choices; a test checks it against the registry)
BUILTIN_CONTROLLERS = ("grpo", "ppo", "a2c", "sac", "td3", "grid", "random", "fixed", "tpe", "cmaes", "gp")


def register(cls: type[Controller]) -> type[Controller]:
    """Class decorator adding a controller to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def controller_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def unavailable_controllers() -> dict[str, str]:
    """The registered controllers that cannot run here, with why (``hpctl list`` shows them)."""
    _load_builtin()
    return {name: why for name in sorted(_REGISTRY) if (why := _REGISTRY[name].unavailable()) is not None}


def get_controller(name: str) -> type[Controller]:
    """The controller class registered as ``name``; a one-line :class:`ConfigError` if it is
    unknown or cannot run here (:meth:`Controller.unavailable`: a missing extra)."""
    _load_builtin()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown controller {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None
    reason = cls.unavailable()
    if reason is not None:
        raise ConfigError(reason)
    return cls


def _load_builtin() -> None:
    # Imported lazily so `import hpctl` stays cheap (SB3 pulls in torch).
    import importlib

    for mod in ("hpctl.controllers.search", "hpctl.controllers.grpo", "hpctl.controllers.sb3",
                "hpctl.controllers.optuna"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


# ------------------------------------------------------------------ warm starts ------
#: the controller state a finished run leaves in its folder (JSON; SB3 adds its weights file)
STATE_FILE = "controller_state.json"
STATE_FORMAT = "hpctl-controller-1"


def save_controller_state(ctrl: Controller, out_dir: Path) -> list[Path]:
    """Write ``controller_state.json`` (and any file the controller adds); return the paths."""
    import json

    out_dir = Path(out_dir)
    knob = ctrl.knob
    payload = {"format": STATE_FORMAT, "controller": ctrl.name,
               "knob": {"name": knob.name, "dim": knob.dim, "low": knob.low, "high": knob.high, "log": knob.log},
               "state": ctrl.export_state(out_dir)}
    path = out_dir / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
    extra = [out_dir / str(v) for k, v in payload["state"].items() if k.endswith("_file") and v]
    return [path, *extra]


def load_warm_start(folder: str | Path, ctrl: Controller) -> None:
    """Start ``ctrl`` from the controller state a finished run saved in ``folder``.

    One-line :class:`ConfigError` for a folder without a state, a state of another
    controller, or of a knob of another shape.
    """
    import json

    folder = Path(folder)
    shown = str(folder)
    if type(ctrl).warm_start is Controller.warm_start:
        ctrl.warm_start({}, folder)  # raises: this controller learns no policy
    if not folder.is_dir():
        raise ConfigError(f"--warm-start {shown!r} is not a folder")
    path = folder / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"--warm-start {shown!r} holds no {STATE_FILE} (not a finished hpctl run)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        saved, knob, state = payload["controller"], payload["knob"], payload["state"]
        if payload.get("format") != STATE_FORMAT or not isinstance(state, dict):
            raise ValueError(f"format {payload.get('format')!r}")
        dim = int(knob["dim"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--warm-start: {str(path)!r} is not a controller state: {exc}") from None
    if saved != ctrl.name:
        raise ConfigError(f"--warm-start {shown!r} holds a {saved!r} controller; this run uses {ctrl.name!r}")
    if dim != ctrl.knob.dim:
        raise ConfigError(f"--warm-start {shown!r} is for a {dim}-d knob ({knob.get('name')!r}); "
                          f"this run's knob {ctrl.knob.name!r} has {ctrl.knob.dim} dimension(s)")
    ctrl.warm_start(state, folder)
