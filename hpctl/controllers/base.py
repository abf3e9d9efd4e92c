"""The controller interface and registry shared by every agent."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from hpctl.control_env import ControlEnv
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

    def state(self) -> dict[str, float]:
        """Scalars describing the controller now (logged to MLflow), e.g. mu, sigma."""
        return {}

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
        try:
            return cls.Config(**overrides)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"controller {cls.name!r}: bad setting: {exc}") from None


_REGISTRY: dict[str, type[Controller]] = {}


def register(cls: type[Controller]) -> type[Controller]:
    """Class decorator adding a controller to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def controller_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_controller(name: str) -> type[Controller]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown controller {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def _load_builtin() -> None:
    # Imported lazily so `import hpctl` stays cheap (SB3 pulls in torch).
    import importlib

    for mod in ("hpctl.controllers.search", "hpctl.controllers.grpo", "hpctl.controllers.sb3"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
